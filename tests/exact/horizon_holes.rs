//! Ways a mark of the last clean pass could let a later pass skip a real attribute
//! difference without any ctime moving: a mount appearing or going away on or under a
//! root, a root swapped for a directory made earlier, a mark left by a run that could see
//! fewer namespaces. Found by an adversarial review of the mark kept across runs; each
//! test left SOURCE and REPLICA different before the fix (a run without a mark fixed each).

use std::fs;
use std::path::Path;

use super::{let_the_clock_pass, setfattr, tool};
use crate::support::mounts::{once_in_mount_namespace, wait_more};
use crate::support::{CONVERGE, Dir, PASS_COMPLETE, Tree, bin, running, wait_until, wrapper};

fn state_of(t: &Tree) -> String {
    t.base().join("state").to_string_lossy().into_owned()
}

fn replica_attr(t: &Tree, rel: &str, name: &str) -> Option<Vec<u8>> {
    Dir::at(t.dst()).xattrs(rel).get(name).map(<[u8]>::to_vec)
}

fn touch_old(paths: &[&Path]) {
    let mut args = vec!["-h".to_owned(), "-d".to_owned(), "2020-01-01".to_owned()];
    args.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("touch", &args);
}

#[test]
fn a_bind_mount_of_the_same_filesystem_inside_source_is_not_vouched_for() {
    // `mount --bind` moves no ctime, and the walk's `settled` looks at the device only:
    // under SOURCE/b the names now pair a's inodes with REPLICA's copies of b's.
    let t = Tree::new();
    t.file("a/f", b"same").file("b/f", b"same");
    let s = |r: &str| t.src().join(r);
    setfattr(&s("a/f"), "user.tag", "A");
    setfattr(&s("b/f"), "user.tag", "B");
    setfattr(&s("b"), "user.dir", "B");
    touch_old(&[&s("a/f"), &s("b/f"), &s("a"), &s("b")]);
    let state = state_of(&t);
    t.once(&["--state-dir", &state]).assert_code(0);
    let_the_clock_pass(3);
    t.once(&["--state-dir", &state]).assert_code(0); // clean, after every copy: the mark
    let_the_clock_pass(3);
    let run =
        once_in_mount_namespace(&t, "mount --bind \"$S/a\" \"$S/b\"", &["--state-dir", &state]);
    run.assert_code(0);
    // SOURCE/b now shows a: REPLICA/b must carry a's attributes.
    assert_eq!(replica_attr(&t, "b/f", "user.tag").as_deref(), Some(&b"A"[..]), "{run}");
    assert_eq!(replica_attr(&t, "b", "user.dir"), None, "REPLICA/b kept b's own attribute");
}

#[test]
fn a_mount_point_left_by_an_unmount_gets_its_own_attributes_back() {
    // A filesystem mounted inside SOURCE is never settled (another device); once it is
    // unmounted, the directory under it is, and REPLICA's copy of the mounted root's
    // attributes (ACLs, xattrs) is older than the mark too: the directory's own read is
    // skipped (new in 6cba203) and REPLICA keeps them for good.
    let t = Tree::new();
    t.dir("mnt").chmod("mnt", 0o755);
    touch_old(&[&t.src().join("mnt")]);
    let state = state_of(&t);
    let setup = "mount -t tmpfs -o mode=755 t \"$S/mnt\" && setfattr -n user.x -v mounted \"$S/mnt\" \
                 && setfacl -m u:nobody:rx \"$S/mnt\" && touch -d 2020-01-01 \"$S/mnt\"";
    once_in_mount_namespace(&t, setup, &["--state-dir", &state]).assert_code(0);
    let_the_clock_pass(3);
    once_in_mount_namespace(&t, setup, &["--state-dir", &state]).assert_code(0); // the mark
    let_the_clock_pass(3);
    // No mount any more: SOURCE/mnt is the plain directory under it, without attributes.
    let run = t.once(&["--state-dir", &state]);
    run.assert_code(0);
    let left = Dir::at(t.dst()).xattrs("mnt");
    assert_eq!(left.0.len(), 0, "REPLICA/mnt kept the unmounted root's attributes {left:?}\n{run}");
}

#[test]
fn a_source_root_swapped_for_a_tree_made_earlier_is_read_again_by_the_service() {
    // The guard checks the roots' filesystem, not their inode; and since 6cba203 the
    // root counts as settled whatever its ctime. A directory made before the last clean
    // pass and renamed over SOURCE (an A/B deploy) brings children with old ctimes.
    let t = Tree::new();
    t.file("f", b"same");
    setfattr(&t.src().join("f"), "user.tag", "A");
    let next = t.base().join("next");
    fs::create_dir(&next).unwrap();
    fs::write(next.join("f"), b"same").unwrap();
    setfattr(&next.join("f"), "user.tag", "B");
    touch_old(&[&t.src().join("f"), &next.join("f")]);
    let_the_clock_pass(3);
    let svc = running(&t, &["--interval", "1s"]);
    wait_more(&svc, PASS_COMPLETE, 4); // a clean pass more than 2 s after the copies
    fs::rename(t.src(), t.base().join("previous")).unwrap();
    fs::rename(&next, t.src()).unwrap();
    let fixed =
        wait_until(CONVERGE, || replica_attr(&t, "f", "user.tag").as_deref() == Some(&b"B"[..]));
    assert!(fixed, "REPLICA/f kept the old root's attribute; log:\n{}", svc.log());
}

#[test]
fn a_mark_left_without_cap_sys_admin_does_not_hide_trusted_attributes() {
    // Without CAP_SYS_ADMIN, listxattr hides trusted.* on both sides: that run is clean
    // and leaves a mark under the same fingerprint (same euid, may still chown) as a run
    // with every privilege, which then never reads the entry again.
    let t = Tree::new();
    t.file("f", b"data");
    setfattr(&t.src().join("f"), "trusted.t", "1");
    let state = state_of(&t);
    let without = || {
        let mut cmd = wrapper("setpriv");
        cmd.args(["--bounding-set", "-sys_admin"]).arg(bin());
        cmd.args(["--once", "--state-dir", &state]).arg(t.src()).arg(t.dst());
        let out = cmd.output().expect("run setpriv");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    without();
    let_the_clock_pass(3);
    without(); // clean: the mark
    let_the_clock_pass(3);
    let run = t.once(&["--state-dir", &state]);
    run.assert_code(0);
    assert_eq!(replica_attr(&t, "f", "trusted.t").as_deref(), Some(&b"1"[..]), "{run}");
}
