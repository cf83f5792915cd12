//! "Exact means exact": hard links, extended attributes, POSIX ACLs and file capabilities,
//! in one-shot runs and in the live service, checked by the strict comparer (which knows
//! link groups, xattrs and ACLs) and, where users have a tool for it, by that tool
//! (`getcap`, `getfacl`). Also `--no-hard-links`, `--no-xattrs`, `-x`, a REPLICA that
//! cannot store xattrs, and an unprivileged run.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::support::mounts::once_in_mount_namespace;
use crate::support::{
    CONVERGE, CompareOptions, EVENTS_ONLY, NOBODY, PASS_COMPLETE, Run, Service, Tree, action_lines,
    assert_same, assert_same_with, compare, running, wait_until,
};

// ---- helpers -------------------------------------------------------------------------------

fn ino(path: &Path) -> (u64, u64) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.dev(), md.ino())
}

/// True if, for every pair of `names`, REPLICA's two files share an inode exactly when
/// SOURCE's do (the comparer checks this too; stated here so each test says what it means).
fn links_mirrored(t: &Tree, names: &[&str]) -> bool {
    let exists = |root: &Path, n: &str| root.join(n).symlink_metadata().is_ok();
    names.iter().all(|a| {
        names.iter().all(|b| {
            if !exists(t.src(), a) || !exists(t.src(), b) {
                return true;
            }
            if !exists(t.dst(), a) || !exists(t.dst(), b) {
                return false;
            }
            let src_same = ino(&t.src().join(a)) == ino(&t.src().join(b));
            let dst_same = ino(&t.dst().join(a)) == ino(&t.dst().join(b));
            src_same == dst_same
        })
    })
}

#[track_caller]
fn assert_links(t: &Tree, names: &[&str]) {
    assert!(links_mirrored(t, names), "link groups differ among {names:?}");
}

fn ln(t: &Tree, from: &str, to: &str) {
    fs::hard_link(t.src().join(from), t.src().join(to)).expect("ln");
}

fn append(t: &Tree, rel: &str, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(t.src().join(rel)).expect("open");
    f.write_all(bytes).expect("append");
}

/// Replaces `rel` the way editors save: write a temporary file, rename it over the name.
fn editor_save(t: &Tree, rel: &str, content: &[u8]) {
    let tmp = t.src().join(format!("{rel}.swp"));
    fs::write(&tmp, content).expect("write temp");
    fs::rename(&tmp, t.src().join(rel)).expect("rename over");
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is needed (Debian packages acl, attr, libcap2-bin): {e}")
    });
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setfattr(path: &Path, name: &str, value: &str) {
    tool("setfattr", &["-h", "-n", name, "-v", value, &path.to_string_lossy()]);
}

/// `getfacl` of `path` without the header line naming the file.
fn getfacl(path: &Path) -> String {
    let out = tool("getfacl", &["-p", "-n", &path.to_string_lossy()]);
    out.lines().filter(|l| !l.starts_with("# file:")).collect::<Vec<_>>().join("\n")
}

fn getcap(path: &Path) -> String {
    let out = tool("getcap", &[&path.to_string_lossy()]);
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Waits until REPLICA compares equal and `names`' link groups are mirrored.
#[track_caller]
fn converge_linked(t: &Tree, svc: &Service, names: &[&str]) {
    let ok = wait_until(CONVERGE, || compare(t.src(), t.dst()).is_ok() && links_mirrored(t, names));
    if !ok {
        let diff = compare(t.src(), t.dst()).err().map(|d| d.to_string()).unwrap_or_default();
        panic!("REPLICA did not converge (links among {names:?})\n{diff}\nlog:\n{}", svc.log());
    }
    assert_same(t.src(), t.dst());
    assert_links(t, names);
}

/// A SOURCE with a three-name link group across directories and a lone file.
fn linked_tree() -> Tree {
    let t = Tree::new();
    t.file("a", b"shared content").file("solo", b"alone").dir("d").dir("e");
    ln(&t, "a", "b");
    ln(&t, "a", "d/c");
    t
}

const GROUP: &[&str] = &["a", "b", "d/c", "solo", "e/x", "d/y"];

// ---- hard links, one-shot ------------------------------------------------------------------

#[test]
fn a_link_group_is_one_inode_in_replica_and_a_noop_pass_changes_nothing() {
    let t = linked_tree();
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert_links(&t, GROUP);
    assert_eq!(fs::metadata(t.dst().join("a")).unwrap().nlink(), 3);
    let links: Vec<_> = run.actions().into_iter().filter(|l| l.contains("action=link")).collect();
    assert_eq!(links.len(), 2, "two names linked to the first: {links:?}");
    assert!(links.iter().any(|l| l.contains("path=b") && l.contains("target=a")), "{links:?}");
    let again = t.once(&[]);
    again.assert_code(0);
    assert!(again.actions().is_empty(), "a no-op pass acted: {:?}", again.actions());
}

#[test]
fn content_changed_through_one_name_reaches_every_name_and_keeps_the_group() {
    let t = linked_tree();
    t.once(&[]).assert_code(0);
    append(&t, "d/c", b" and more");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_links(&t, GROUP);
    assert_eq!(fs::read(t.dst().join("b")).unwrap(), b"shared content and more");
}

#[test]
fn an_editor_replacing_one_name_splits_the_group_in_replica_too() {
    let t = linked_tree();
    t.once(&[]).assert_code(0);
    editor_save(&t, "a", b"rewritten");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_links(&t, GROUP);
    assert_eq!(fs::read(t.dst().join("b")).unwrap(), b"shared content", "b kept the old inode");
    assert_ne!(ino(&t.dst().join("a")), ino(&t.dst().join("b")));
}

#[test]
fn new_removed_and_renamed_links_are_followed_by_a_pass() {
    let t = linked_tree();
    t.once(&[]).assert_code(0);
    ln(&t, "solo", "e/x");
    fs::remove_file(t.src().join("b")).unwrap();
    fs::rename(t.src().join("d/c"), t.src().join("d/y")).unwrap();
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_links(&t, GROUP);
    assert_eq!(fs::metadata(t.dst().join("a")).unwrap().nlink(), 2);
}

#[test]
fn a_group_whose_first_name_is_excluded_is_linked_among_the_rest() {
    let t = linked_tree();
    let run = t.once(&["--exclude", "/a"]);
    run.assert_code(0);
    assert!(!t.dst().join("a").exists(), "the excluded name was mirrored");
    assert_eq!(ino(&t.dst().join("b")), ino(&t.dst().join("d/c")));
    let skip_a = |p: &Path| p == Path::new("a");
    assert_same_with(t.src(), t.dst(), &CompareOptions { exclude: &skip_a, ..Default::default() });
}

#[test]
fn no_hard_links_copies_each_name_as_its_own_file() {
    let t = linked_tree();
    t.once(&["--no-hard-links"]).assert_code(0);
    assert_ne!(ino(&t.dst().join("a")), ino(&t.dst().join("b")));
    assert_eq!(fs::read(t.dst().join("b")).unwrap(), b"shared content");
    let again = t.once(&["--no-hard-links"]);
    assert!(again.actions().is_empty(), "split names must count as in sync: {:?}", again.actions());
    let skip = CompareOptions { skip_links: true, ..Default::default() };
    assert_same_with(t.src(), t.dst(), &skip);
}

#[test]
fn a_replica_inode_with_more_names_than_source_is_copied_again_not_linked_to() {
    // A stranger gives the group's REPLICA file a name outside REPLICA: it is no longer
    // replicad's to link more names to, nor to change in place.
    let t = linked_tree();
    t.once(&[]).assert_code(0);
    let outside = t.base().join("outside-name");
    fs::hard_link(t.dst().join("a"), &outside).unwrap();
    append(&t, "a", b"!");
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_links(&t, GROUP);
    assert_eq!(fs::read(&outside).unwrap(), b"shared content", "the outside name changed");
    assert_eq!(fs::metadata(&outside).unwrap().nlink(), 1, "REPLICA still links to it");
}

#[test]
fn dry_run_says_link_and_changes_nothing() {
    let t = linked_tree();
    let run = t.once(&["--dry-run"]);
    run.assert_code(0);
    assert!(!t.dst().join("a").exists());
    let lines = action_lines(&run.stderr);
    assert!(lines.iter().any(|l| l.contains("action=link") && l.contains("path=b")), "{lines:?}");
    let real = t.once(&[]);
    let strip = |ls: Vec<&str>| -> Vec<String> {
        let mut v: Vec<String> =
            ls.iter().map(|l| l.split_once("action=").unwrap().1.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(strip(lines), strip(action_lines(&real.stderr)), "dry run and real run differ");
}

// ---- hard links, live ----------------------------------------------------------------------

/// Starts the service on events only over `linked_tree`, applies `change`, and waits for
/// REPLICA (link groups included) to follow.
#[track_caller]
fn live_links(change: impl FnOnce(&Tree)) -> (Tree, Service) {
    let t = linked_tree();
    let svc = running(&t, EVENTS_ONLY);
    assert_links(&t, GROUP);
    change(&t);
    converge_linked(&t, &svc, GROUP);
    (t, svc)
}

#[test]
fn live_a_new_link_in_the_same_directory() {
    live_links(|t| ln(t, "solo", "solo2"));
}

#[test]
fn live_a_new_link_across_directories() {
    let (_t, svc) = live_links(|t| ln(t, "solo", "e/x"));
    // The other name was never seen linked: a full pass (asked for by the event work) joins it.
    assert!(svc.count("action=link") >= 1, "{}", svc.log());
}

#[test]
fn live_a_removed_link() {
    let (t, _svc) = live_links(|t| fs::remove_file(t.src().join("b")).unwrap());
    assert!(wait_until(CONVERGE, || fs::metadata(t.dst().join("a")).unwrap().nlink() == 2));
}

#[test]
fn live_a_renamed_link() {
    live_links(|t| fs::rename(t.src().join("d/c"), t.src().join("e/x")).unwrap());
}

#[test]
fn live_content_changed_through_one_name() {
    let (t, _svc) = live_links(|t| append(t, "b", b" plus"));
    assert_eq!(fs::read(t.dst().join("d/c")).unwrap(), b"shared content plus");
}

#[test]
fn live_an_editor_replacing_one_name() {
    let (t, _svc) = live_links(|t| editor_save(t, "d/c", b"own now"));
    assert_eq!(fs::read(t.dst().join("a")).unwrap(), b"shared content");
}

// ---- xattrs, ACLs, capabilities ------------------------------------------------------------

/// SOURCE with user and trusted attributes on a file, a directory and a symlink, an ACL on
/// a file, a default ACL on a directory, and a binary with a file capability.
fn attributed_tree() -> Tree {
    let t = Tree::new();
    t.file("f", b"data").dir("shared").symlink("l", "f").file("bin/ping", b"\x7fELF fake binary");
    let s = |rel: &str| t.src().join(rel);
    setfattr(&s("f"), "user.origin", "https://example.org/f");
    setfattr(&s("f"), "trusted.backup", "tag-7");
    setfattr(&s("shared"), "user.project", "alpha");
    setfattr(&s("l"), "trusted.linkattr", "on the link itself");
    tool("setfacl", &["-m", "u:nobody:rw,g:daemon:r", &s("f").to_string_lossy()]);
    tool(
        "setfacl",
        &["-m", "u:nobody:rwx", "-d", "-m", "u:nobody:rx", &s("shared").to_string_lossy()],
    );
    tool("setcap", &["cap_net_raw+ep", &s("bin/ping").to_string_lossy()]);
    t
}

#[track_caller]
fn assert_attrs_by_tools(t: &Tree) {
    let (s, d) = (|r: &str| t.src().join(r), |r: &str| t.dst().join(r));
    assert!(!getcap(&s("bin/ping")).is_empty(), "the fixture lost its capability");
    assert_eq!(getcap(&s("bin/ping")), getcap(&d("bin/ping")), "getcap disagrees");
    assert_eq!(getfacl(&s("f")), getfacl(&d("f")), "getfacl f");
    assert_eq!(getfacl(&s("shared")), getfacl(&d("shared")), "getfacl shared (default ACL)");
}

#[test]
fn xattrs_acls_and_capabilities_are_mirrored_and_kept() {
    let t = attributed_tree();
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_attrs_by_tools(&t);
    let again = t.once(&[]);
    again.assert_code(0);
    assert!(again.actions().is_empty(), "a no-op pass acted: {:?}", again.actions());
}

#[test]
fn attribute_changes_are_logged_and_extra_ones_removed() {
    let t = attributed_tree();
    t.once(&[]).assert_code(0);
    let s = |r: &str| t.src().join(r);
    setfattr(&s("f"), "user.origin", "changed");
    tool("setfattr", &["-x", "user.project", &s("shared").to_string_lossy()]);
    setfattr(&t.dst().join("bin/ping"), "user.planted", "x");
    tool("setfacl", &["-m", "u:daemon:r", &s("f").to_string_lossy()]);
    let run = t.once(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert_attrs_by_tools(&t);
    let acts = run.actions();
    assert!(
        acts.iter().any(|l| l.contains("path=f") && l.contains("xattrs") && l.contains("acl")),
        "{acts:?}"
    );
    assert!(
        acts.iter().any(|l| l.contains("path=shared") && l.contains("changed=xattrs")),
        "{acts:?}"
    );
    assert!(acts.iter().any(|l| l.contains("path=bin/ping") && l.contains("xattrs")), "{acts:?}");
}

#[test]
fn a_capability_survives_an_owner_change_in_source() {
    // chown drops security.capability: replicad must set it after its own chown.
    let t = attributed_tree();
    t.once(&[]).assert_code(0);
    let ping = t.src().join("bin/ping");
    std::os::unix::fs::lchown(&ping, Some(NOBODY), Some(NOBODY)).unwrap();
    tool("setcap", &["cap_net_raw+ep", &ping.to_string_lossy()]);
    t.once(&[]).assert_code(0);
    t.assert_mirrored();
    assert_eq!(getcap(&t.dst().join("bin/ping")), "cap_net_raw=ep");
    assert_eq!(fs::metadata(t.dst().join("bin/ping")).unwrap().uid(), NOBODY);
}

#[test]
fn no_xattrs_leaves_attributes_alone() {
    let t = attributed_tree();
    t.once(&["--no-xattrs"]).assert_code(0);
    assert_eq!(getcap(&t.dst().join("bin/ping")), "", "--no-xattrs copied a capability");
    let skip = CompareOptions { skip_xattrs: true, ..Default::default() };
    assert_same_with(t.src(), t.dst(), &skip);
}

#[test]
fn live_attribute_changes_are_followed_by_events() {
    let t = attributed_tree();
    let svc = running(&t, EVENTS_ONLY);
    assert_attrs_by_tools(&t);
    let s = |r: &str| t.src().join(r);
    setfattr(&s("f"), "user.added", "live");
    tool("setfattr", &["-x", "trusted.backup", &s("f").to_string_lossy()]);
    tool("setfacl", &["-m", "u:daemon:rwx", &s("shared").to_string_lossy()]);
    tool("setcap", &["cap_net_admin+ep", &s("bin/ping").to_string_lossy()]);
    converge_linked(&t, &svc, &[]);
    assert_attrs_by_tools(&t);
    assert_eq!(getcap(&t.dst().join("bin/ping")), "cap_net_admin=ep");
}

#[test]
fn a_replica_that_cannot_store_xattrs_warns_once_per_namespace_and_exits_0() {
    let t = attributed_tree();
    for i in 0..20 {
        t.file(format!("more/{i}"), b"x");
        setfattr(&t.src().join(format!("more/{i}")), "user.n", &i.to_string());
    }
    // ramfs has no extended attributes at all.
    t.replica().dir("");
    let run = once_in_mount_namespace(&t, "mount -t ramfs r \"$D\"", &[]);
    run.assert_code(0);
    let warnings: Vec<&str> =
        run.stderr.lines().filter(|l| l.contains("does not take these attributes")).collect();
    assert!(
        (1..=4).contains(&warnings.len()),
        "one warning per namespace (user, trusted, security, ACL), not per file: {warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.contains("user.*")), "{warnings:?}");
}

#[test]
fn an_unprivileged_run_mirrors_user_attributes_and_acls() {
    let t = Tree::new();
    t.file("f", b"x").dir("d");
    setfattr(&t.src().join("f"), "user.mine", "1");
    tool("setfacl", &["-m", "u:daemon:r", &t.src().join("f").to_string_lossy()]);
    tool("setfacl", &["-d", "-m", "u:daemon:rx", &t.src().join("d").to_string_lossy()]);
    t.give_to(NOBODY, NOBODY);
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    t.assert_mirrored();
    assert_eq!(getfacl(&t.src().join("f")), getfacl(&t.dst().join("f")));
    assert_eq!(getfacl(&t.src().join("d")), getfacl(&t.dst().join("d")));
}

// ---- -x ------------------------------------------------------------------------------------

#[test]
fn one_file_system_mirrors_a_mount_point_empty() {
    let t = Tree::new();
    t.file("a/f", b"1").dir("mnt");
    t.replica().file("mnt/stale", b"old");
    let run = once_in_mount_namespace(
        &t,
        "mount -t tmpfs t \"$S/mnt\" && echo inner > \"$S/mnt/g\"",
        &["--one-file-system"],
    );
    run.assert_code(0);
    assert!(t.dst().join("a/f").exists());
    assert!(t.dst().join("mnt").is_dir(), "the mount point itself is mirrored");
    let inside: Vec<_> = fs::read_dir(t.dst().join("mnt")).unwrap().collect();
    assert!(inside.is_empty(), "the mounted filesystem's content was mirrored: {inside:?}");
    // Without -x the same mount is descended into.
    let run = once_in_mount_namespace(
        &t,
        "mount -t tmpfs t \"$S/mnt\" && echo inner > \"$S/mnt/g\"",
        &[],
    );
    run.assert_code(0);
    assert!(t.dst().join("mnt/g").exists());
}

#[test]
fn live_an_excluded_name_is_never_linked_into_replica() {
    // Event work completes groups from the name's directory: an excluded name found there
    // must stay out of REPLICA.
    let t = linked_tree();
    let svc = running(&t, &["--interval", "1h", "--exclude", "/a"]);
    append(&t, "b", b" changed");
    let converged = wait_until(CONVERGE, || {
        fs::read(t.dst().join("d/c")).is_ok_and(|c| c == b"shared content changed")
            && ino(&t.dst().join("b")) == ino(&t.dst().join("d/c"))
    });
    assert!(converged, "b and d/c did not converge linked; log:\n{}", svc.log());
    assert!(!t.dst().join("a").exists(), "the excluded name was linked into REPLICA");
}

#[test]
fn periodic_passes_still_see_attribute_changes_after_a_clean_pass() {
    // Periodic passes skip reading xattrs of entries whose ctimes are older than the last
    // clean pass (see src/engine/horizon.rs): a change on either side moves a ctime, so
    // it must still be found — by passes alone (no watcher).
    let t = attributed_tree();
    let svc = running(&t, &["--no-watch", "--interval", "300ms"]);
    let passes = svc.count(PASS_COMPLETE);
    assert!(
        wait_until(CONVERGE, || svc.count(PASS_COMPLETE) >= passes + 2),
        "no clean periodic passes; log:\n{}",
        svc.log()
    );
    setfattr(&t.dst().join("f"), "user.planted", "by a stranger");
    setfattr(&t.src().join("shared"), "user.project", "beta");
    tool("setfattr", &["-x", "user.origin", &t.src().join("f").to_string_lossy()]);
    converge_linked(&t, &svc, &[]);
    assert_attrs_by_tools(&t);
}

#[test]
fn a_capability_is_never_given_in_place_to_bytes_a_stranger_wrote() {
    // REPLICA's copy of a capable binary belongs to SOURCE's owner (here `nobody`), who may
    // write into it: a write drops the capability (the kernel's doing), and keeping size
    // and mtime makes the quick check call the content equal. Setting the capability back
    // in place would hand it to the stranger's bytes; only a fresh copy may carry it.
    let t = Tree::new();
    t.file("bin/tool", b"\x7fELF the real tool");
    t.source().chown("bin/tool", NOBODY, NOBODY);
    t.source().setcap("bin/tool", "cap_net_raw+ep");
    t.once(&[]).assert_code(0);
    let dst = t.dst().join("bin/tool");
    assert_eq!(getcap(&dst), "cap_net_raw=ep");
    assert_eq!(fs::metadata(&dst).unwrap().uid(), NOBODY, "the stranger owns the replica file");
    let mtime = fs::metadata(&dst).unwrap().modified().unwrap();
    // What `nobody` can do to its own file: same length, other bytes, mtime put back.
    fs::write(&dst, b"\x7fELF evil payload!").expect("write as the file's owner would");
    fs::File::options().write(true).open(&dst).unwrap().set_modified(mtime).unwrap();
    assert_eq!(getcap(&dst), "", "the write did not drop the capability");
    t.once(&[]).assert_code(0);
    let has_cap = !getcap(&dst).is_empty();
    let content = fs::read(&dst).unwrap();
    assert!(
        !(has_cap && content != b"\x7fELF the real tool"),
        "a capability was set on bytes replicad did not copy: {:?}",
        String::from_utf8_lossy(&content)
    );
    t.assert_mirrored();
}

#[test]
fn periodic_passes_see_attributes_that_moved_with_a_directory_rename() {
    // A directory rename moves its entries without touching their ctimes: which SOURCE
    // file a REPLICA file is compared with changes, though neither inode changed since
    // the last clean pass. Two directories of equal files that differ only in an
    // attribute, swapped by name in SOURCE, must still be mirrored by passes alone.
    let t = Tree::new();
    for d in ["d", "e"] {
        t.file(format!("{d}/x"), b"same bytes");
        t.source().mtime(format!("{d}/x"), 1_600_000_000, 0);
    }
    setfattr(&t.src().join("d/x"), "user.tag", "d");
    setfattr(&t.src().join("e/x"), "user.tag", "e");
    let svc = running(&t, &["--no-watch", "--interval", "300ms"]);
    // Clean passes that start well after the files' ctimes (the horizon keeps a margin).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let passes = svc.count(PASS_COMPLETE);
    assert!(
        wait_until(CONVERGE, || svc.count(PASS_COMPLETE) >= passes + 2),
        "no clean periodic passes; log:\n{}",
        svc.log()
    );
    t.source().rename("d", "tmp").rename("e", "d").rename("tmp", "e");
    converge_linked(&t, &svc, &[]);
}

#[test]
fn live_a_new_link_after_a_removed_one_is_mirrored_by_events() {
    // The index still lists the removed name (it sorts first); it must not lead the group
    // that event work settles, or the new name is never made.
    let t = Tree::new();
    t.file("p", b"linked").file("other", b"x");
    ln(&t, "p", "q");
    let svc = running(&t, EVENTS_ONLY);
    fs::remove_file(t.src().join("p")).unwrap();
    assert!(wait_until(CONVERGE, || !t.dst().join("p").exists()), "{}", svc.log());
    ln(&t, "q", "r");
    converge_linked(&t, &svc, &["q", "r"]);
}

#[test]
fn one_file_an_unprivileged_run_may_not_change_does_not_turn_attributes_off() {
    // EPERM on one entry (another user's file in REPLICA) is that entry's error, not the
    // filesystem refusing a namespace: user.* and ACLs must go on being mirrored.
    let t = Tree::new();
    t.file("p", b"pp").file("f", b"ff");
    t.source().mtime("p", 1_600_000_000, 0);
    setfattr(&t.src().join("p"), "user.tag", "1");
    t.give_to(NOBODY, NOBODY);
    // Another user's file where SOURCE has `p`: same bytes, mode and mtime, no attribute.
    t.replica().file("p", b"pp");
    fs::set_permissions(t.dst().join("p"), t.source().lstat("p").permissions()).unwrap();
    t.replica().mtime("p", 1_600_000_000, 0);
    let mut cmd = Command::new("setpriv");
    cmd.args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg(crate::support::bin())
        .arg(t.src())
        .arg(t.dst())
        .args(EVENTS_ONLY);
    let svc = t.spawn_command(cmd);
    assert!(wait_until(CONVERGE, || svc.log().contains(PASS_COMPLETE)), "{}", svc.log());
    setfattr(&t.src().join("f"), "user.later", "2");
    tool("setfacl", &["-m", "u:daemon:r", &t.src().join("f").to_string_lossy()]);
    let f_same = || {
        getfacl(&t.src().join("f")) == getfacl(&t.dst().join("f"))
            && t.replica().xattrs("f").get("user.later") == Some(b"2".as_slice())
    };
    assert!(wait_until(CONVERGE, f_same), "f's attributes were not mirrored; log:\n{}", svc.log());
}

#[test]
fn an_unprivileged_run_mirrors_user_attributes_of_read_only_files() {
    // Setting user.* needs write permission on the file: a read-only file's attribute is
    // set before its mode, and a failure there is not the filesystem refusing user.*.
    let t = Tree::new();
    t.file("ro", b"r").file("w", b"w");
    setfattr(&t.src().join("ro"), "user.a", "1");
    setfattr(&t.src().join("w"), "user.b", "2");
    t.source().chmod("ro", 0o444);
    t.give_to(NOBODY, NOBODY);
    let run = t.once_as_nobody(&[]);
    run.assert_code(0);
    assert!(!run.stderr.contains("does not take these attributes"), "{}", run.stderr);
    t.assert_mirrored();
    // A change of the attribute later is made in place on the read-only replica file.
    setfattr(&t.src().join("ro"), "user.a", "changed");
    t.once_as_nobody(&[]).assert_code(0);
    t.assert_mirrored();
}

#[test]
fn names_beyond_the_replicas_link_limit_are_copied_not_lost() {
    // ext4 takes at most 65000 names per file; tmpfs more. The names REPLICA refuses to
    // link must still be there (as files of their own), and a second run leaves them be.
    let t = Tree::new();
    t.replica().dir("");
    let script = r#"
        set -e
        mount -t tmpfs t "$S"
        echo shared > "$S/f"
        python3 -c "import os; os.chdir(os.environ['S']); [os.link('f', 'l%d' % i) for i in range(65010)]"
        truncate -s 64M "$B/img"; mke2fs -q -t ext4 -N 70000 "$B/img"; mount -o loop "$B/img" "$D"
        rmdir "$D/lost+found"
        set +e
        "$0" --once "$S" "$D" 2>"$B/first.log"; echo "first=$?"
        "$0" --once "$S" "$D" 2>"$B/second.log"; echo "second=$?"
        echo "names=$(ls "$D" | wc -l) content=$(cat "$D/l9999")"
    "#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(crate::support::bin())
        .env("S", t.src())
        .env("D", t.dst())
        .env("B", t.base())
        .output()
        .expect("unshare (needs root, python3, mke2fs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let second = fs::read_to_string(t.base().join("second.log")).unwrap_or_default();
    assert!(
        stdout.contains("first=0") && stdout.contains("names=65011 content=shared"),
        "{stdout}\n{}\nfirst run:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(t.base().join("first.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("action=link"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stdout.contains("second=0"), "{stdout}\n{second}");
    let acted: Vec<&str> = second.lines().filter(|l| l.contains("action=")).collect();
    assert!(acted.is_empty(), "the second run acted again: {acted:?}");
}

/// A group `a`, `b`, `c` mirrored once; then, in SOURCE, `c` removed and `d` linked: the
/// group keeps its size while REPLICA's file still has `c` (until a run removes it).
fn group_mirrored_then_c_replaced_by_d() -> Tree {
    let t = Tree::new();
    t.file("a", b"shared");
    ln(&t, "a", "b");
    ln(&t, "a", "c");
    t.once(&[]).assert_code(0);
    fs::remove_file(t.src().join("c")).unwrap();
    ln(&t, "a", "d");
    t
}

#[test]
fn a_group_whose_replica_file_has_a_name_outside_the_group_still_gets_every_name() {
    // REPLICA's file also has a name the group no longer accounts for (an excluded name
    // kept in REPLICA here; a name a stranger made elsewhere, likewise): the file cannot
    // take more names, so the group moves to a fresh copy instead of failing for ever.
    let t = group_mirrored_then_c_replaced_by_d();
    let run = t.once(&["--exclude", "/c"]);
    run.assert_code(0);
    assert!(t.dst().join("c").exists(), "the excluded name was touched");
    assert_links(&t, &["a", "b", "d"]);
    assert_eq!(fs::read(t.dst().join("d")).unwrap(), b"shared");
    let again = t.once(&["--exclude", "/c"]);
    again.assert_code(0);
    assert!(again.actions().is_empty(), "{:?}", again.actions());
}

#[test]
fn dry_run_matches_the_real_run_when_a_link_is_removed_and_another_made() {
    // The dry run removes nothing, so REPLICA's file still has the removed name's link
    // when the group is settled: that must not make it print a fresh copy the real run
    // (which removed the name first) does not make.
    let t = group_mirrored_then_c_replaced_by_d();
    let dry = t.once(&["--dry-run"]);
    dry.assert_code(0);
    let real = t.once(&[]);
    real.assert_code(0);
    let strip = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = action_lines(s)
            .iter()
            .map(|l| l.split_once("action=").unwrap().1.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(strip(&dry.stderr), strip(&real.stderr), "dry run and real run differ");
    t.assert_mirrored();
    assert_links(&t, &["a", "b", "d"]);
}

// ---- the horizon across runs ------------------------------------------------------------

/// Calls that list an entry's extended attributes in one `--once` run (strace 6.1 names
/// `listxattrat`, syscall 465, only by number).
fn attribute_listings(t: &Tree, state: &Path) -> usize {
    let trace = t.base().join("strace.out");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(crate::support::bin())
        .args(["--once", "-q", "--state-dir"])
        .arg(state)
        .arg(t.src())
        .arg(t.dst())
        .status()
        .expect("run strace (apt-get install strace; .ci/run installs it)");
    assert!(status.success(), "replicad under strace failed: {status}");
    let out = fs::read_to_string(&trace).expect("read the trace");
    out.lines().filter(|l| l.contains("syscall_0x1d1(") || l.contains("listxattr(")).count()
}

/// Waits until the wall clock is `secs` past now: the horizon keeps a margin of 2 s, so
/// entries must be older than that for a pass to vouch for them.
fn let_the_clock_pass(secs: u64) {
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    let passed = wait_until(std::time::Duration::from_secs(secs + 5), || {
        std::time::SystemTime::now() >= until
    });
    assert!(passed, "the clock did not move");
}

#[test]
fn a_later_once_run_skips_unchanged_attributes_yet_sees_every_change() {
    // The mark of the last clean pass is kept in the state directory: the next `--once`
    // reads no attributes of entries whose ctimes (and their directories') lie before it,
    // and a change on either side still moves a ctime past it.
    let t = attributed_tree();
    for i in 0..20 {
        t.file(format!("many/f{i}"), b"x");
        setfattr(&t.src().join(format!("many/f{i}")), "user.n", &i.to_string());
    }
    let state = t.base().join("state");
    let state_arg = state.to_string_lossy().into_owned();
    t.once(&["--state-dir", &state_arg]).assert_code(0);
    let_the_clock_pass(3);
    // Marks a clean pass that started after every copy's ctime.
    let first = attribute_listings(&t, &state);
    assert!(first >= 2 * 20, "precondition: strace saw the listings ({first} calls)");
    let again = attribute_listings(&t, &state);
    // Directories are always read (root, bin, shared, many: both sides).
    assert!(again <= 2 * 4, "{again} listings in a run after a clean one (first: {first})");
    t.assert_mirrored();
    // Changes on both sides, behind the mark.
    setfattr(&t.dst().join("many/f3"), "user.planted", "by a stranger");
    setfattr(&t.src().join("many/f7"), "user.n", "seven");
    tool("setfattr", &["-x", "user.origin", &t.src().join("f").to_string_lossy()]);
    t.once(&["--state-dir", &state_arg]).assert_code(0);
    t.assert_mirrored();
    assert_attrs_by_tools(&t);
    // Another configuration does not trust the mark.
    let other = attribute_listings(&t, &t.base().join("other-state"));
    assert!(other >= 2 * 20, "a fresh state directory skipped reads ({other} calls)");
}

#[test]
fn a_state_dir_inside_source_or_replica_is_refused() {
    let t = Tree::new();
    t.file("f", b"x");
    for root in [t.src(), t.dst()] {
        fs::create_dir_all(root).unwrap();
        let inside = root.join("state");
        let run = t.once(&["--state-dir", &inside.to_string_lossy()]);
        run.assert_code(1);
        assert!(run.stderr.contains("state directory"), "no clear line:\n{}", run.stderr);
    }
}
mod horizon_holes;

#[test]
fn a_default_state_dir_someone_else_could_steer_is_not_used_and_a_dry_run_writes_none() {
    // The default directory comes from HOME/XDG_STATE_HOME, which `sudo -E` takes from a
    // user: a link on its way (or a directory others may write) and replicad keeps no mark
    // there rather than write where someone else points.
    let t = Tree::new();
    t.file("f", b"x");
    let home = t.base().join("home");
    let elsewhere = t.base().join("elsewhere");
    fs::create_dir_all(home.join(".local/state")).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, home.join(".local/state/replicad")).unwrap();
    t.once(&[]).assert_code(0);
    let run = Run::of(
        crate::support::replicad().env("HOME", &home).args(["--once"]).arg(t.src()).arg(t.dst()),
    );
    run.assert_code(0);
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "a mark went through the link");
    // Without the link the same HOME is used.
    fs::remove_file(home.join(".local/state/replicad")).unwrap();
    let dry = Run::of(
        crate::support::replicad().env("HOME", &home).args(["--dry-run"]).arg(t.src()).arg(t.dst()),
    );
    dry.assert_code(0);
    assert!(!home.join(".local/state/replicad").exists(), "a dry run made the state directory");
    let real = Run::of(
        crate::support::replicad().env("HOME", &home).args(["--once"]).arg(t.src()).arg(t.dst()),
    );
    real.assert_code(0);
    let kept = fs::read_dir(home.join(".local/state/replicad")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 1, "precondition: a safe default directory keeps the mark");
}
