//! The replica seam (issue #12, "the seam first"): the engine reaches REPLICA only through
//! `replicad::replica::Replica`. A fake at the seam (STYLE 13) wraps the local side,
//! counts what the engine asks of it, and can say it holds no hard links, FIFOs, devices
//! or xattrs — what an S3 bucket will say. The engine must then do what it does when a
//! filesystem refuses them: copy each name of a link group as a file of its own, skip a
//! FIFO with a warning, leave xattrs alone.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use clap::Parser as _;
use replicad::checksum::{Md5Cache, Md5Sum};
use replicad::cli::Args;
use replicad::config::Config;
use replicad::engine::Engine;
use replicad::entry::{AttrDiff, Entry, MtimeStore};
use replicad::error::{EntryErrorKind, GuardTrip};
use replicad::guard::Guard;
use replicad::ops::CopyOptions;
use replicad::relpath::RelPath;
use replicad::replica::{
    Caps, Copying, DirItem, Expect, Local, Removal, Removed, Replica, Roots, XattrSupport, Xattrs,
};
use tokio_util::sync::CancellationToken;

use crate::support::{Kind, Tree};

/// The local side behind a seam that may deny capabilities, counting every call by name.
struct Fake {
    local: Local,
    caps: Caps,
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl Fake {
    fn new(caps: Caps, xattrs: bool) -> Fake {
        let copy = CopyOptions { chown: true, fsync: false, verify: false };
        Fake { local: Local::new(copy, xattrs), caps, calls: Mutex::default() }
    }

    fn note(&self, call: &'static str) {
        *self.calls.lock().unwrap().entry(call).or_default() += 1;
    }
}

impl Replica for Fake {
    type Dir = OwnedFd;

    fn caps(&self) -> Caps {
        self.caps
    }

    fn xattrs(&self) -> Option<&XattrSupport> {
        self.local.xattrs()
    }

    fn open_roots(
        &self,
        guard: &Guard,
        also: &dyn Fn(&OwnedFd) -> Result<(), GuardTrip>,
    ) -> Result<Roots<OwnedFd>, GuardTrip> {
        self.note("open_roots");
        self.local.open_roots(guard, also)
    }

    fn probe(&self, root: &OwnedFd) -> io::Result<MtimeStore> {
        self.note("probe");
        self.local.probe(root)
    }

    fn flush(&self, root: &OwnedFd) -> io::Result<()> {
        self.note("flush");
        self.local.flush(root)
    }

    fn try_clone_dir(&self, dir: &OwnedFd) -> io::Result<OwnedFd> {
        self.local.try_clone_dir(dir)
    }

    fn open_dir(&self, parent: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
        self.note("open_dir");
        self.local.open_dir(parent, name)
    }

    fn list(&self, dir: &OwnedFd) -> io::Result<Vec<DirItem>> {
        self.note("list");
        self.local.list(dir)
    }

    fn stat(&self, dir: &OwnedFd, name: &CStr) -> io::Result<Option<Entry>> {
        self.note("stat");
        self.local.stat(dir, name)
    }

    fn stat_dir(&self, dir: &OwnedFd) -> io::Result<Entry> {
        self.local.stat_dir(dir)
    }

    fn read_link(&self, dir: &OwnedFd, name: &CStr) -> io::Result<CString> {
        self.note("read_link");
        self.local.read_link(dir, name)
    }

    fn read_xattrs(&self, dir: &OwnedFd, name: Option<&CStr>) -> io::Result<Xattrs> {
        self.note("read_xattrs");
        self.local.read_xattrs(dir, name)
    }

    fn md5(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        dst: &Entry,
        expect: Expect<'_>,
        cache: &Md5Cache,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Md5Sum> {
        self.note("md5");
        self.local.md5(dir, name, dst, expect, cache, cancelled)
    }

    fn make_dir(&self, parent: &OwnedFd, name: &CStr) -> io::Result<()> {
        self.note("make_dir");
        self.local.make_dir(parent, name)
    }

    fn copy_file(
        &self,
        src_dir: BorrowedFd<'_>,
        dir: &OwnedFd,
        name: &CStr,
        how: &Copying<'_>,
    ) -> Result<u64, EntryErrorKind> {
        self.note("copy_file");
        self.local.copy_file(src_dir, dir, name, how)
    }

    fn make_symlink(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        target: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        self.note("make_symlink");
        self.local.make_symlink(dir, name, target, src, xattrs)
    }

    fn make_special(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        src: &Entry,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        self.note("make_special");
        self.local.make_special(dir, name, src, xattrs)
    }

    fn set_attrs(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        expect: Expect<'_>,
        src: &Entry,
        diff: AttrDiff,
        xattrs: Option<&Xattrs>,
    ) -> io::Result<()> {
        self.note("set_attrs");
        self.local.set_attrs(dir, name, expect, src, diff, xattrs)
    }

    fn set_dir_attrs(&self, dir: &OwnedFd, src: &Entry, diff: AttrDiff) -> io::Result<()> {
        self.note("set_dir_attrs");
        self.local.set_dir_attrs(dir, src, diff)
    }

    fn set_dir_xattrs(&self, dir: &OwnedFd, want: &Xattrs, have: &Xattrs) -> io::Result<()> {
        self.note("set_dir_xattrs");
        self.local.set_dir_xattrs(dir, want, have)
    }

    fn link(
        &self,
        target_dir: &OwnedFd,
        target_name: &CStr,
        target: &Entry,
        group: u64,
        dir: &OwnedFd,
        name: &CStr,
    ) -> io::Result<()> {
        self.note("link");
        self.local.link(target_dir, target_name, target, group, dir, name)
    }

    fn rename(
        &self,
        from_dir: &OwnedFd,
        from: &CStr,
        to_dir: &OwnedFd,
        to: &CStr,
    ) -> io::Result<()> {
        self.note("rename");
        self.local.rename(from_dir, from, to_dir, to)
    }

    fn remove_file(&self, dir: &OwnedFd, name: &CStr) -> io::Result<()> {
        self.note("remove_file");
        self.local.remove_file(dir, name)
    }

    fn remove_tree(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &RelPath,
        rules: &Removal<'_>,
    ) -> io::Result<Removed> {
        self.note("remove_tree");
        self.local.remove_tree(dir, name, rel, rules)
    }
}

fn engine(t: &Tree, fake: Fake) -> Engine<Fake> {
    let args =
        Args::try_parse_from([OsStr::new("replicad"), t.src().as_os_str(), t.dst().as_os_str()]);
    let config = Config::from_args(args.unwrap()).unwrap();
    Engine::with_replica(&config, config.excludes.clone(), CancellationToken::new(), fake).unwrap()
}

fn calls(engine: &Engine<Fake>) -> BTreeMap<&'static str, usize> {
    engine.replica().calls.lock().unwrap().clone()
}

#[test]
fn the_engine_reaches_the_replica_only_through_the_seam() {
    let t = Tree::new();
    t.source().file("a", "a").file("d/b", "b").symlink("d/s", "a").fifo("f").file("gone", "");
    t.once(&[]).assert_code(0);
    t.source().remove("gone").file("d/b", "b2").mtime("d/b", 1_000, 7).file("d/e/c", "c");
    t.replica().file("stray", "x");
    let full = Caps {
        hard_links: true,
        special_files: true,
        file_attrs_in_place: true,
        root_attrs: true,
        snapshot: false,
    };
    let engine = engine(&t, Fake::new(full, true));
    let report = engine.full_pass();
    assert_eq!(report.exit_status(), 0, "{report:?}");
    t.assert_mirrored();
    let calls = calls(&engine);
    for call in ["open_roots", "list", "stat", "read_link", "make_dir", "copy_file", "remove_file"]
    {
        assert!(
            calls.get(call).is_some_and(|n| *n > 0),
            "never asked the seam to {call}: {calls:?}"
        );
    }
}

#[test]
fn a_replica_without_hard_links_fifos_or_xattrs_gets_copies_and_skips() {
    let t = Tree::new();
    t.source().file("a", "shared").hard_link("b", "a").fifo("f").file("plain", "p");
    t.source().set_xattr("plain", "user.note", "x");
    let bare = Caps {
        hard_links: false,
        special_files: false,
        file_attrs_in_place: true,
        root_attrs: true,
        snapshot: false,
    };
    let engine = engine(&t, Fake::new(bare, false));
    let report = engine.full_pass();
    assert_eq!(report.exit_status(), 0, "{report:?}");
    assert_eq!(report.counts.skipped, 1, "the FIFO is skipped: {report:?}");
    assert_eq!(report.counts.link, 0, "no link is asked of a replica without them");
    assert_eq!((report.counts.copy, report.counts.errors), (3, 0), "{report:?}");
    assert!(!t.replica().exists("f"), "a FIFO was made in a replica that cannot hold one");
    assert_eq!(t.replica().read("b"), b"shared");
    let (a, b) = (t.replica().lstat("a"), t.replica().lstat("b"));
    assert_ne!(a.ino(), b.ino(), "the names share an inode in a replica without hard links");
    assert_eq!(t.replica().kind("plain"), Some(Kind::File));
    assert!(t.replica().xattrs("plain").get("user.note").is_none(), "xattrs were written");
    let calls = calls(&engine);
    for never in ["link", "make_special", "read_xattrs", "set_dir_xattrs"] {
        assert!(!calls.contains_key(never), "asked the seam to {never}: {calls:?}");
    }
    // A second pass finds nothing to do and still skips the FIFO without repeating work.
    let again = engine.full_pass();
    assert_eq!((again.counts.changes(), again.counts.skipped), (0, 1), "{again:?}");
}
