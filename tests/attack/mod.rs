//! Replica tampering: a stranger who can write into REPLICA races the real binary and must
//! never make it change anything outside REPLICA.
//!
//! Each test builds a SOURCE tree (files, FIFOs, symlinks, subdirectories, varied modes and
//! odd mtimes) and, next to the roots, a "victim" directory (distinctive modes, owner
//! `nobody`, fixed mtimes, known content) that is snapshotted. Then, for a bounded time,
//! seeded attacker threads tamper with REPLICA while a seeded mutator changes SOURCE (so
//! event work runs too) and replicad runs, either as a service passing every 200 ms or as a
//! loop of `--once` runs. The attacks:
//!
//! - a. make a replica file, FIFO or symlink need an attribute fix (chmod, chown, touch),
//!   then swap its name with a symlink to a victim entry (`renameat2(RENAME_EXCHANGE)`)
//!   and back, in a tight loop: the statx → chmod/chown/utimensat window;
//! - b. replace a replica directory with a symlink to a victim directory (moved away, or
//!   exchanged and sometimes exchanged back);
//! - c. hard-link a victim file into REPLICA where SOURCE has a file, and plant files with
//!   SOURCE's size and mtime but other bytes;
//! - d. delete replica entries and trees, chmod replica directories to 000/0500;
//! - e. plant symlinks to victim directories and files where SOURCE has a directory, at
//!   names SOURCE does not have, and inside extra directories.
//!
//! Every attacker step may fail (ENOENT, ELOOP, ...): failures are ignored, successes are
//! counted, and each kind must have succeeded often enough, or the test fails (its
//! precondition did not happen). The attackers themselves never follow a link: directories
//! are opened one component at a time with `O_NOFOLLOW` from REPLICA's root, attributes are
//! set through descriptors whose inode is checked not to be a victim's (or, on mirrored
//! symlinks, by name with `AT_SYMLINK_NOFOLLOW`), so only replicad can have changed the
//! victim.
//!
//! The verdict is deterministic even though the interleaving is not: the victim is
//! unchanged (mode, owner, mtime, ctime, inode, content, existence; hard-link targets only
//! lose the ctime check, since linking and unlinking them moves it legitimately), SOURCE is
//! unchanged, and once the attack stops REPLICA converges to an exact copy (the strict
//! comparer). The seed is printed; `ATTACK_SEED=<n>` rebuilds the same fixture and gives
//! every thread the same seed (the interleaving, and so the exact run, is not reproducible).
//!
//! Two further tests cover hard links, which no `NOFOLLOW` flag stops: victim files swapped
//! in by the same exchange loop, and a victim file with a SOURCE file's size and mtime
//! hard-linked into REPLICA, whose attributes must not be "fixed" in place.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{
    AtFlags, CWD, FileType, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid,
};
use rustix::io::Errno;

use crate::support::{
    NOBODY, PASS_COMPLETE, SnapEntry, Tree, assert_same, assert_unchanged, compare, snapshot,
    wait_until,
};

/// The seed used unless `ATTACK_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x5eed_2024_a77a_c4ed;

/// How long the attack on the service lasts.
const ATTACK_TIME: Duration = Duration::from_secs(10);

/// `--once` runs race the attackers for this long, and at least [`ONCE_RUNS`] times (a run
/// of this small tree takes tens of milliseconds, so the count alone would be a short
/// attack), but never longer than [`ONCE_ATTACK_MAX`] (room for a loaded 2-core machine,
/// where 30 runs took more than 10 s).
const ONCE_ATTACK_TIME: Duration = Duration::from_secs(5);
const ONCE_RUNS: usize = 30;
const ONCE_ATTACK_MAX: Duration = Duration::from_secs(25);

/// How long REPLICA may take to become exact once the attack stopped (a pass runs every
/// 200 ms; this is slack for a loaded machine, not an expectation).
const CONVERGE: Duration = Duration::from_secs(10);

/// Attacker threads. Each owns its own share of the swap targets and its own staging names.
const ATTACKERS: usize = 2;

/// How many names one exchange loop works on at most.
const SWAP_WIDTH: usize = 6;

/// Top-level directories in SOURCE.
const DIRS: usize = 5;

/// Modes SOURCE uses; none is a victim's mode or [`ATTACK_MODE`].
const FILE_MODES: [u32; 4] = [0o600, 0o644, 0o755, 0o700];
const FIFO_MODES: [u32; 4] = [0o600, 0o644, 0o700, 0o660];
const DIR_MODES: [u32; 3] = [0o755, 0o700, 0o750];

/// The mode the attackers give replica files and FIFOs, so replicad wants to chmod them.
const ATTACK_MODE: u32 = 0o777;

/// The owner the attackers give replica entries, so replicad wants to chown them.
const ATTACK_OWNER: u32 = 4321;

/// A file larger than any SOURCE file: a hard-linked victim always differs in size, so
/// replicad replaces it (never fixes its attributes in place).
const VICTIM_LINKED_LEN: usize = 40;

/// SOURCE files are 1..=16 bytes.
const MAX_SOURCE_LEN: usize = 16;

// ------------------------------------------------------------------------------------------
// A tiny seeded PRNG (splitmix64)

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A child generator for a thread.
    fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }
}

fn seed() -> u64 {
    let seed =
        std::env::var("ATTACK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    eprintln!("attack seed: {seed} (ATTACK_SEED={seed} to reuse it)");
    seed
}

// ------------------------------------------------------------------------------------------
// The fixture

/// A name inside a directory (both relative to a root; `dir` may be `""`).
#[derive(Clone, Debug)]
struct At {
    dir: String,
    name: String,
}

impl At {
    fn new(dir: &str, name: &str) -> At {
        At { dir: dir.to_owned(), name: name.to_owned() }
    }

    fn rel(&self) -> String {
        if self.dir.is_empty() { self.name.clone() } else { format!("{}/{}", self.dir, self.name) }
    }
}

/// What SOURCE holds, by role in the attack.
#[derive(Default)]
struct Layout {
    /// Every directory below the root ("d0", "d0/s1", ...).
    dirs: Vec<At>,
    /// FIFOs the attackers make need a chmod, then swap with symlinks.
    swap_fifos: Vec<At>,
    /// Files the attackers make need an attribute fix, then swap with symlinks.
    swap_files: Vec<At>,
    /// Symlinks whose owner and mtime the attackers change.
    links: Vec<At>,
    /// Files whose name gets a hard link to a victim file.
    hardlink_at: Vec<At>,
    /// Files whose name gets a file with the same size and mtime but other bytes.
    plant_at: Vec<At>,
    /// Every non-directory entry (for deletion).
    leaves: Vec<At>,
    /// SOURCE files and FIFOs the mutator may change (never symlinks, never opened).
    mutable_files: Vec<String>,
    mutable_fifos: Vec<String>,
}

fn odd_mtime(rng: &mut Rng) -> (i64, u32) {
    (1_000_000_000 + (rng.next() % 600_000_000) as i64, (rng.next() % 1_000_000_000) as u32)
}

/// Builds SOURCE: `DIRS` directories of 15 entries each (6 files, 4 FIFOs, 3 symlinks, 2
/// subdirectories holding two files and a FIFO), varied modes, odd mtimes.
/// `victim_file` is the absolute target of one symlink per directory (mirrored verbatim).
fn build_source(t: &Tree, rng: &mut Rng, victim_file: &Path) -> Layout {
    let mut l = Layout::default();
    let mut dirs = Vec::new();
    for k in 0..DIRS {
        let d = format!("d{k}");
        t.dir(&d);
        for j in 0..6 {
            let at = At::new(&d, &format!("f{j}"));
            t.file(at.rel(), format!("{d}/f{j}\n"));
            t.chmod(at.rel(), *rng.pick(&FILE_MODES));
            match j {
                0..=3 => l.swap_files.push(at.clone()),
                4 => l.hardlink_at.push(at.clone()),
                _ => l.plant_at.push(at.clone()),
            }
            l.mutable_files.push(at.rel());
            l.leaves.push(at);
        }
        for j in 0..4 {
            let at = At::new(&d, &format!("p{j}"));
            t.fifo(at.rel());
            t.chmod(at.rel(), *rng.pick(&FIFO_MODES));
            l.swap_fifos.push(at.clone());
            l.mutable_fifos.push(at.rel());
            l.leaves.push(at);
        }
        let targets = [PathBuf::from("f0"), PathBuf::from("../missing/target"), victim_file.into()];
        for (j, target) in targets.iter().enumerate() {
            let at = At::new(&d, &format!("l{j}"));
            t.symlink(at.rel(), target);
            l.links.push(at.clone());
            l.leaves.push(at);
        }
        for s in 0..2 {
            let sub = format!("{d}/s{s}");
            let (g0, g1, q0) = (At::new(&sub, "g0"), At::new(&sub, "g1"), At::new(&sub, "q0"));
            t.file(g0.rel(), format!("{sub}/g0\n")).chmod(g0.rel(), *rng.pick(&FILE_MODES));
            t.file(g1.rel(), format!("{sub}/g1\n")).chmod(g1.rel(), *rng.pick(&FILE_MODES));
            t.fifo(q0.rel()).chmod(q0.rel(), *rng.pick(&FIFO_MODES));
            l.swap_files.push(g1.clone());
            l.swap_fifos.push(q0.clone());
            l.mutable_files.extend([g0.rel(), g1.rel()]);
            l.mutable_fifos.push(q0.rel());
            l.leaves.extend([g0, g1, q0]);
            l.dirs.push(At::new(&d, &format!("s{s}")));
            dirs.push(sub);
        }
        l.dirs.push(At::new("", &d));
        dirs.push(d);
    }
    for at in l.leaves.iter().filter(|a| !a.name.starts_with('l')) {
        let (s, ns) = odd_mtime(rng);
        t.mtime(at.rel(), s, ns);
    }
    for at in &l.links {
        let (s, ns) = odd_mtime(rng);
        t.mtime(at.rel(), s, ns);
    }
    // Subdirectories before their parents ("d0/s0" sorts after "d0"), so setting a
    // directory's mtime is the last change inside its parent.
    dirs.sort_by(|a, b| b.cmp(a));
    for d in &dirs {
        let (s, ns) = odd_mtime(rng);
        t.chmod(d, *rng.pick(&DIR_MODES)).mtime(d, s, ns);
    }
    l
}

/// The victim directory next to the roots, owned by `nobody`.
struct Victim {
    root: PathBuf,
    /// Absolute paths of victim entries the attackers point symlinks at.
    targets: Vec<PathBuf>,
    /// Absolute paths of victim directories.
    dirs: Vec<PathBuf>,
    /// Names (in `root`) of the files the attackers hard-link into REPLICA.
    linkable: Vec<String>,
    /// (device, inode) of every victim non-directory: the attackers never set attributes
    /// through a descriptor of one of these.
    inodes: HashSet<(u64, u64)>,
}

/// Victim entries whose names start with this are hard-linked into REPLICA; their ctime
/// moves legitimately and is not compared.
const LINKED_PREFIX: &str = "hl-";

fn build_victim(base: &Path) -> Victim {
    let root = base.join("victim");
    let v = crate::support::Dir::at(&root);
    v.dir("");
    let files: [(&str, u32); 8] = [
        ("f0640", 0o640),
        ("f0604", 0o604),
        ("f0444", 0o444),
        ("f1604", 0o1604),
        ("sub/inner", 0o640),
        ("sub/deeper/bottom", 0o604),
        ("hl-0", 0o640),
        ("hl-1", 0o604),
    ];
    for (i, (rel, mode)) in files.iter().enumerate() {
        let content = if rel.starts_with(LINKED_PREFIX) {
            format!("{:<width$}", format!("victim {rel}"), width = VICTIM_LINKED_LEN - 1) + "\n"
        } else {
            format!("victim {rel} must never change\n")
        };
        v.file(rel, content).chmod(rel, *mode).mtime(rel, 1_111_111_100 + i as i64, 222_222_222);
    }
    v.fifo("vfifo").chmod("vfifo", 0o602).mtime("vfifo", 1_111_111_150, 1);
    v.symlink("link", "f0640").mtime("link", 1_111_111_160, 2);
    v.chown_all(NOBODY, NOBODY);
    v.chmod("sub/deeper", 0o705).mtime("sub/deeper", 1_111_111_170, 3);
    v.chmod("sub", 0o710).mtime("sub", 1_111_111_180, 4);
    v.chmod("", 0o751).mtime("", 1_111_111_190, 5);
    let targets = ["f0640", "f0604", "f0444", "f1604", "vfifo", "sub/inner", "sub", ""]
        .iter()
        .map(|r| if r.is_empty() { root.clone() } else { root.join(r) })
        .collect();
    let dirs = vec![root.join("sub"), root.join("sub/deeper"), root.clone()];
    let non_dirs =
        ["f0640", "f0604", "f0444", "f1604", "sub/inner", "sub/deeper/bottom", "hl-0", "hl-1"];
    let inodes = non_dirs
        .iter()
        .chain(&["vfifo", "link"])
        .map(|r| fs::symlink_metadata(root.join(r)).expect("lstat victim"))
        .map(|md| (md.dev(), md.ino()))
        .collect();
    let linkable = vec!["hl-0".to_owned(), "hl-1".to_owned()];
    Victim { root, targets, dirs, linkable, inodes }
}

/// The victim's snapshot, with the ctime of hard-link targets masked.
fn victim_snapshot(root: &Path) -> Vec<SnapEntry> {
    let mut snap = snapshot(root);
    for e in &mut snap {
        if e.path.to_str().is_some_and(|p| p.starts_with(LINKED_PREFIX)) {
            e.ctime = (0, 0);
        }
    }
    snap
}

// ------------------------------------------------------------------------------------------
// Counting what the attackers achieved

/// Successes per attack kind, with the minimum each must reach.
#[derive(Default)]
struct Stats {
    swap_fifo: AtomicU64,
    swap_file: AtomicU64,
    swap_hardlink: AtomicU64,
    provoked: AtomicU64,
    link_attrs: AtomicU64,
    dir_to_link: AtomicU64,
    hard_link: AtomicU64,
    plant: AtomicU64,
    delete: AtomicU64,
    chmod_dir: AtomicU64,
    link_at_source_dir: AtomicU64,
    link_extra: AtomicU64,
    mutations: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, count, minimum).
    fn rows(&self) -> Vec<(&'static str, u64, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("a: FIFO <-> symlink exchange pairs", g(&self.swap_fifo), 200),
            ("a: file <-> symlink exchange pairs", g(&self.swap_file), 200),
            ("a: replica entries given other attributes", g(&self.provoked), 20),
            ("a: replica symlinks given other owner/mtime", g(&self.link_attrs), 5),
            ("b: replica dirs replaced by symlinks", g(&self.dir_to_link), 5),
            ("c: victim files hard-linked into REPLICA", g(&self.hard_link), 5),
            ("c: same size+mtime files planted", g(&self.plant), 5),
            ("d: replica entries deleted", g(&self.delete), 5),
            ("d: replica dirs chmodded 000/0500", g(&self.chmod_dir), 5),
            ("e: symlinks planted where SOURCE has a dir", g(&self.link_at_source_dir), 5),
            ("e: symlinks planted at names SOURCE lacks", g(&self.link_extra), 5),
            ("SOURCE mutations", g(&self.mutations), 20),
        ]
    }

    fn report(&self) -> String {
        self.rows().iter().map(|(n, c, min)| format!("  {n}: {c} (min {min})\n")).collect()
    }

    /// Panics unless every attack kind succeeded at least its minimum number of times.
    #[track_caller]
    fn assert_attacks_happened(&self) {
        let short: Vec<_> = self.rows().into_iter().filter(|(_, c, min)| c < min).collect();
        assert!(
            short.is_empty(),
            "the attack did not happen often enough to prove anything: {short:?}\n{}",
            self.report()
        );
    }
}

// ------------------------------------------------------------------------------------------
// Descriptor-relative helpers that never follow a link

fn open_dir_at(dir: impl AsFd, name: &str) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

fn open_root(path: &Path) -> OwnedFd {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(CWD, path, flags, Mode::empty())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Opens `rel` below `root` one component at a time, refusing every symlink.
fn open_chain(root: &OwnedFd, rel: &str) -> rustix::io::Result<OwnedFd> {
    let mut fd = open_dir_at(root, ".")?;
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        fd = open_dir_at(&fd, c)?;
    }
    Ok(fd)
}

fn names_in(dir: &OwnedFd) -> Vec<CString> {
    let Ok(own) = open_dir_at(dir, ".") else { return Vec::new() };
    let Ok(entries) = rustix::fs::Dir::read_from(&own) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect()
}

/// Removes `name` in `parent` whatever it is, depth first, never following a link.
fn remove_any_at(parent: &OwnedFd, name: &CString, depth: usize) -> bool {
    match rustix::fs::unlinkat(parent, name.as_c_str(), AtFlags::empty()) {
        Ok(()) => return true,
        Err(Errno::ISDIR) if depth < 16 => {}
        Err(_) => return false,
    }
    let Ok(dir) = rustix::fs::openat(
        parent,
        name.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    for child in names_in(&dir) {
        remove_any_at(&dir, &child, depth + 1);
    }
    rustix::fs::unlinkat(parent, name.as_c_str(), AtFlags::REMOVEDIR).is_ok()
}

fn cname(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn spin(n: usize) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// What one `lstat` relative to a descriptor says, or `None`.
fn lstat_at(dir: &OwnedFd, name: &str) -> Option<rustix::fs::Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

fn kind_of(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

// ------------------------------------------------------------------------------------------
// The attackers

/// Everything an attacker thread needs.
struct Attack<'a> {
    replica: &'a Path,
    source: &'a Path,
    staging: &'a Path,
    victim: &'a Victim,
    layout: &'a Layout,
    stats: &'a Stats,
    stop: &'a AtomicBool,
    /// The attack kinds to choose from, with weights.
    kinds: &'a [(Kind, u64)],
}

/// One attacker thread's own state.
struct Attacker<'a> {
    a: &'a Attack<'a>,
    id: usize,
    rng: Rng,
    root: OwnedFd,
    staging: OwnedFd,
    victim_root: OwnedFd,
    serial: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    SwapFifo,
    SwapFile,
    SwapFifoHardLink,
    SwapFileHardLink,
    LinkAttrs,
    DirToLink,
    HardLink,
    Plant,
    Delete,
    ChmodDir,
    LinkAtSourceDir,
    LinkExtra,
}

impl Kind {
    /// An exchange loop (the rest are single steps).
    fn is_swap(self) -> bool {
        matches!(
            self,
            Kind::SwapFifo | Kind::SwapFile | Kind::SwapFifoHardLink | Kind::SwapFileHardLink
        )
    }
}

/// Attack kinds with weights. An attacker alternates an exchange loop (chosen among the
/// swap kinds) with, half the time, one step of another kind (chosen among the rest), so
/// the single steps keep their pace however long the loops take on a loaded machine.
/// FIFOs get most of the loops: only a chmod fixes their mode.
const KINDS: &[(Kind, u64)] = &[
    (Kind::SwapFifo, 3),
    (Kind::SwapFile, 1),
    (Kind::LinkAttrs, 1),
    (Kind::DirToLink, 1),
    (Kind::HardLink, 1),
    (Kind::Plant, 1),
    (Kind::Delete, 1),
    (Kind::ChmodDir, 1),
    (Kind::LinkAtSourceDir, 1),
    (Kind::LinkExtra, 1),
];

/// How long one exchange loop runs: a random duration in this range of microseconds.
const BURST_US: (u64, u64) = (5_000, 20_000);

impl<'a> Attacker<'a> {
    fn new(a: &'a Attack<'a>, id: usize, rng: Rng) -> Attacker<'a> {
        Attacker {
            a,
            id,
            rng,
            root: open_root(a.replica),
            staging: open_root(a.staging),
            victim_root: open_root(&a.victim.root),
            serial: 0,
        }
    }

    fn run(mut self) {
        let swaps: Vec<(Kind, u64)> =
            self.a.kinds.iter().copied().filter(|(k, _)| k.is_swap()).collect();
        let steps: Vec<(Kind, u64)> =
            self.a.kinds.iter().copied().filter(|(k, _)| !k.is_swap()).collect();
        while !self.a.stop.load(Ordering::Relaxed) {
            if let Some(kind) = self.choose(&swaps) {
                self.step(kind);
            }
            if self.rng.chance(50)
                && let Some(kind) = self.choose(&steps)
            {
                self.step(kind);
            }
        }
    }

    /// A kind from `kinds`, by weight (`None` if there is none).
    fn choose(&mut self, kinds: &[(Kind, u64)]) -> Option<Kind> {
        let total: u64 = kinds.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut roll = self.rng.next() % total;
        kinds
            .iter()
            .find(|(_, w)| {
                let hit = roll < *w;
                roll = roll.saturating_sub(*w);
                hit
            })
            .map(|(k, _)| *k)
    }

    fn step(&mut self, kind: Kind) {
        match kind {
            Kind::SwapFifo => self.swap_burst(true, false),
            Kind::SwapFile => self.swap_burst(false, false),
            Kind::SwapFifoHardLink => self.swap_burst(true, true),
            Kind::SwapFileHardLink => self.swap_burst(false, true),
            Kind::LinkAttrs => self.link_attrs(),
            Kind::DirToLink => self.dir_to_link(),
            Kind::HardLink => self.hard_link(),
            Kind::Plant => self.plant(),
            Kind::Delete => self.delete(),
            Kind::ChmodDir => self.chmod_dir(),
            Kind::LinkAtSourceDir => self.link_at_source_dir(),
            Kind::LinkExtra => self.link_extra(),
        }
    }

    fn fresh_name(&mut self, what: &str) -> String {
        self.serial += 1;
        format!("{what}-{}-{}", self.id, self.serial)
    }

    /// Makes sure `staging/name` is a symlink to `target` (replacing whatever is there).
    fn arm(&self, name: &str, target: &Path) -> bool {
        self.arm_trap(name, &Trap::Symlink(target.to_path_buf()))
    }

    /// Makes sure `staging/name` is `trap` (replacing whatever is there).
    fn arm_trap(&self, name: &str, trap: &Trap) -> bool {
        if let Some(st) = lstat_at(&self.staging, name) {
            let armed = match trap {
                Trap::Symlink(_) => kind_of(&st) == FileType::Symlink,
                Trap::HardLink(victim) => lstat_at(&self.victim_root, victim)
                    .is_some_and(|v| (v.st_dev, v.st_ino) == (st.st_dev, st.st_ino)),
            };
            if armed {
                return true;
            }
            remove_any_at(&self.staging, &cname(name), 0);
        }
        match trap {
            Trap::Symlink(target) => rustix::fs::symlinkat(target, &self.staging, name).is_ok(),
            Trap::HardLink(victim) => rustix::fs::linkat(
                &self.victim_root,
                victim.as_str(),
                &self.staging,
                name,
                AtFlags::empty(),
            )
            .is_ok(),
        }
    }

    /// Gives the entry `name` in `parent` other attributes through a descriptor, never
    /// following a link and never touching a victim inode: a wrong mode (always for a FIFO,
    /// which only a chmod can fix), sometimes another owner or mtime.
    fn provoke(&mut self, parent: &OwnedFd, name: &str, want: FileType) -> bool {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(parent, name, flags, Mode::empty()) else {
            return false;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else { return false };
        if kind_of(&st) != want || self.a.victim.inodes.contains(&(st.st_dev, st.st_ino)) {
            return false;
        }
        let roll = self.rng.below(10);
        let mut ok = false;
        if want == FileType::Fifo || roll < 7 {
            ok |= rustix::fs::fchmod(&fd, Mode::from_raw_mode(ATTACK_MODE)).is_ok();
        }
        if roll >= 7 {
            let owner = (Uid::from_raw(ATTACK_OWNER), Gid::from_raw(ATTACK_OWNER));
            ok |= rustix::fs::fchown(&fd, Some(owner.0), Some(owner.1)).is_ok();
        }
        if roll == 9 {
            let (s, ns) = odd_mtime(&mut self.rng);
            ok |= rustix::fs::futimens(&fd, &times(s, ns)).is_ok();
        }
        if ok {
            Stats::bump(&self.a.stats.provoked);
        }
        ok
    }

    /// a. Makes a few FIFOs (or files) need an attribute fix, then exchanges each name with
    /// a symlink to a victim entry (with `hard`: a hard link to a victim file) and back,
    /// without pause for a few milliseconds ([`BURST_US`]), keeping every trap armed (the
    /// link in staging, the wrong mode in REPLICA) whatever replicad does. Several names at
    /// once keep several windows open in every pass.
    fn swap_burst(&mut self, fifo: bool, hard: bool) {
        let (want, pool) = if fifo {
            (FileType::Fifo, &self.a.layout.swap_fifos)
        } else {
            (FileType::RegularFile, &self.a.layout.swap_files)
        };
        let mut mine: Vec<&At> = pool
            .iter()
            .enumerate()
            .filter(|(i, _)| i % ATTACKERS == self.id)
            .map(|(_, a)| a)
            .collect();
        let mut lanes = Vec::new();
        for lane in 0..1 + self.rng.below(SWAP_WIDTH) {
            let at = mine.swap_remove(self.rng.below(mine.len())).clone();
            let Ok(parent) = open_chain(&self.root, &at.dir) else { continue };
            let link = format!("swap-{}-{lane}", self.id);
            let trap = if hard {
                Trap::HardLink(self.rng.pick(&self.a.victim.linkable).clone())
            } else {
                Trap::Symlink(self.rng.pick(&self.a.victim.targets).clone())
            };
            // A fresh target each burst: remove the old link first.
            let _ = rustix::fs::unlinkat(&self.staging, link.as_str(), AtFlags::empty());
            if self.arm_trap(&link, &trap) && self.provoke(&parent, &at.name, want) {
                lanes.push(Lane { at, parent, link, trap });
            }
        }
        let counter = match (hard, fifo) {
            (true, _) => &self.a.stats.swap_hardlink,
            (false, true) => &self.a.stats.swap_fifo,
            (false, false) => &self.a.stats.swap_file,
        };
        let (lo, hi) = BURST_US;
        let until = Instant::now() + Duration::from_micros(lo + self.rng.next() % (hi - lo));
        let max_spin = *self.rng.pick(&[0usize, 50, 500, 3000]);
        while Instant::now() < until {
            if lanes.is_empty() || self.a.stop.load(Ordering::Relaxed) {
                return;
            }
            let went_in: Vec<bool> = lanes.iter().map(|l| self.exchange(l)).collect();
            if max_spin > 0 {
                spin(self.rng.below(max_spin));
            }
            // A lane whose name vanished, or that cannot be swapped back, is dropped.
            let came_back: Vec<bool> =
                lanes.iter().zip(&went_in).map(|(l, &went)| went && self.exchange(l)).collect();
            let mut back = came_back.iter();
            lanes.retain(|_| back.next().is_some_and(|&b| b));
            for lane in &lanes {
                Stats::bump(counter);
                // replicad may have replaced the link it saw: re-arm.
                if !self.arm_trap(&lane.link, &lane.trap) {
                    return;
                }
                // replicad may have fixed the mode: make it wrong again.
                if let Some(st) = lstat_at(&lane.parent, &lane.at.name)
                    && kind_of(&st) == want
                    && st.st_mode & 0o7777 != ATTACK_MODE
                {
                    self.provoke(&lane.parent, &lane.at.name, want);
                }
            }
        }
    }

    /// Exchanges a lane's replica name with its trap in staging.
    fn exchange(&self, lane: &Lane) -> bool {
        rustix::fs::renameat_with(
            &lane.parent,
            lane.at.name.as_str(),
            &self.staging,
            lane.link.as_str(),
            RenameFlags::EXCHANGE,
        )
        .is_ok()
    }

    /// a. Gives a mirrored symlink another owner or mtime (never following it).
    fn link_attrs(&mut self) {
        let at = self.rng.pick(&self.a.layout.links).clone();
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        let ok = if self.rng.chance(50) {
            let (u, g) = (Uid::from_raw(ATTACK_OWNER), Gid::from_raw(ATTACK_OWNER));
            rustix::fs::chownat(
                &parent,
                at.name.as_str(),
                Some(u),
                Some(g),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok()
        } else {
            let (s, ns) = odd_mtime(&mut self.rng);
            rustix::fs::utimensat(
                &parent,
                at.name.as_str(),
                &times(s, ns),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok()
        };
        if ok {
            Stats::bump(&self.a.stats.link_attrs);
        }
    }

    /// A replica directory to attack: mostly subdirectories, sometimes a top-level one.
    fn pick_dir(&mut self) -> At {
        let dirs = &self.a.layout.dirs;
        let top: Vec<&At> = dirs.iter().filter(|d| d.dir.is_empty()).collect();
        let sub: Vec<&At> = dirs.iter().filter(|d| !d.dir.is_empty()).collect();
        if self.rng.chance(15) {
            (*self.rng.pick(&top)).clone()
        } else {
            (*self.rng.pick(&sub)).clone()
        }
    }

    /// b. Replaces a replica directory with a symlink to a victim directory: moved away to
    /// staging with a symlink put in its place, or exchanged (and sometimes exchanged back).
    fn dir_to_link(&mut self) {
        let at = self.pick_dir();
        let target = self.rng.pick(&self.a.victim.dirs).clone();
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        if self.rng.chance(50) {
            let away = self.fresh_name("moved");
            if rustix::fs::renameat(&parent, at.name.as_str(), &self.staging, away.as_str()).is_ok()
                && rustix::fs::symlinkat(&target, &parent, at.name.as_str()).is_ok()
            {
                Stats::bump(&self.a.stats.dir_to_link);
            }
            return;
        }
        let link = format!("dirswap-{}", self.id);
        let _ = rustix::fs::unlinkat(&self.staging, link.as_str(), AtFlags::empty());
        if !self.arm(&link, &target) {
            return;
        }
        let exchange = || {
            rustix::fs::renameat_with(
                &parent,
                at.name.as_str(),
                &self.staging,
                link.as_str(),
                RenameFlags::EXCHANGE,
            )
        };
        if exchange().is_ok() {
            Stats::bump(&self.a.stats.dir_to_link);
            if self.rng.chance(50) {
                spin(self.rng.below(20_000));
                let _ = exchange();
            }
        }
    }

    /// c. Hard-links a victim file into REPLICA over a name where SOURCE has a file.
    fn hard_link(&mut self) {
        let at = self.rng.pick(&self.a.layout.hardlink_at).clone();
        let victim_name = self.rng.pick(&self.a.victim.linkable).clone();
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        let tmp = self.fresh_name("hl");
        if rustix::fs::linkat(
            &self.victim_root,
            victim_name.as_str(),
            &self.staging,
            tmp.as_str(),
            AtFlags::empty(),
        )
        .is_err()
        {
            return;
        }
        if rustix::fs::renameat(&self.staging, tmp.as_str(), &parent, at.name.as_str()).is_ok() {
            Stats::bump(&self.a.stats.hard_link);
        } else {
            let _ = rustix::fs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty());
        }
    }

    /// c. Plants a file with SOURCE's size, mtime and mode but other bytes.
    fn plant(&mut self) {
        let at = self.rng.pick(&self.a.layout.plant_at).clone();
        let src = self.a.source.join(at.rel());
        let (Ok(md), Ok(content)) = (fs::symlink_metadata(&src), fs::read(&src)) else { return };
        if !md.is_file() || content.is_empty() || content.len() as u64 != md.len() {
            return;
        }
        let other: Vec<u8> = content.iter().map(|b| !b).collect();
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        let tmp = self.fresh_name("plant");
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(fd) =
            rustix::fs::openat(&self.staging, tmp.as_str(), flags, Mode::from_raw_mode(0o600))
        else {
            return;
        };
        let mut file = File::from(fd);
        let (s, ns) = (md.mtime(), md.mtime_nsec() as u32);
        let ok = file.write_all(&other).is_ok()
            && rustix::fs::fchmod(&file, Mode::from_raw_mode(md.mode() & 0o7777)).is_ok()
            && rustix::fs::futimens(&file, &times(s, ns)).is_ok()
            && rustix::fs::renameat(&self.staging, tmp.as_str(), &parent, at.name.as_str()).is_ok();
        if ok {
            Stats::bump(&self.a.stats.plant);
        } else {
            let _ = rustix::fs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty());
        }
    }

    /// d. Deletes a replica entry, or a whole replica subtree.
    fn delete(&mut self) {
        let at = if self.rng.chance(30) {
            self.pick_dir()
        } else {
            self.rng.pick(&self.a.layout.leaves).clone()
        };
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        if remove_any_at(&parent, &cname(&at.name), 0) {
            Stats::bump(&self.a.stats.delete);
        }
    }

    /// d. Makes a replica directory unreadable (000) or read-only (0500).
    fn chmod_dir(&mut self) {
        let at = self.pick_dir();
        let Ok(dir) = open_chain(&self.root, &at.rel()) else { return };
        let mode = if self.rng.chance(50) { 0o000 } else { 0o500 };
        if rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).is_ok() {
            Stats::bump(&self.a.stats.chmod_dir);
        }
    }

    /// e. Puts a symlink to a victim directory where SOURCE has a directory (removing the
    /// replica's directory first if it is there).
    fn link_at_source_dir(&mut self) {
        let at = self.pick_dir();
        let target = self.rng.pick(&self.a.victim.dirs).clone();
        let Ok(parent) = open_chain(&self.root, &at.dir) else { return };
        if lstat_at(&parent, &at.name).is_some() {
            remove_any_at(&parent, &cname(&at.name), 0);
        }
        if rustix::fs::symlinkat(&target, &parent, at.name.as_str()).is_ok() {
            Stats::bump(&self.a.stats.link_at_source_dir);
        }
    }

    /// e. Puts symlinks to victim entries at names SOURCE does not have: directly in a
    /// replica directory, or inside an extra directory (which replicad removes as a tree).
    fn link_extra(&mut self) {
        let dir = if self.rng.chance(30) { String::new() } else { self.pick_dir().rel() };
        let target = self.rng.pick(&self.a.victim.targets).clone();
        let Ok(parent) = open_chain(&self.root, &dir) else { return };
        let name = self.fresh_name("evil");
        let ok = if self.rng.chance(50) {
            rustix::fs::symlinkat(&target, &parent, name.as_str()).is_ok()
        } else {
            rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o755)).is_ok()
                && open_dir_at(&parent, &name).is_ok_and(|d| {
                    let a = rustix::fs::symlinkat(&target, &d, "in").is_ok();
                    let b = rustix::fs::symlinkat(&self.a.victim.root, &d, "sub").is_ok();
                    a && b
                })
        };
        if ok {
            Stats::bump(&self.a.stats.link_extra);
        }
    }
}

/// One replica name an exchange loop works on, with its trap in staging.
struct Lane {
    at: At,
    parent: OwnedFd,
    link: String,
    trap: Trap,
}

/// What an exchange loop swaps in for a replica entry.
enum Trap {
    /// A symlink to this victim path.
    Symlink(PathBuf),
    /// A hard link to this victim file (a name in the victim's root).
    HardLink(String),
}

fn times(secs: i64, nanos: u32) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: secs, tv_nsec: i64::from(nanos) },
    }
}

// ------------------------------------------------------------------------------------------
// The SOURCE mutator

/// Changes SOURCE so event work runs during the attack: touches, chmods and rewrites files
/// and FIFOs (never opening a FIFO, never through a symlink), creates and removes a few
/// entries of its own. Pauses 5–15 ms between steps, like a user would.
fn mutate_source(t: &Tree, layout: &Layout, stats: &Stats, stop: &AtomicBool, mut rng: Rng) {
    let mut created: Vec<String> = Vec::new();
    let mut serial = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let ok = match rng.below(6) {
            0 => {
                let rel = rng.pick(&layout.mutable_files).clone();
                let len = 1 + rng.below(MAX_SOURCE_LEN);
                let bytes: Vec<u8> = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
                fs::write(t.join(&rel), bytes).is_ok()
            }
            1 => {
                let rel = rng.pick(&layout.mutable_files).clone();
                let mode = *rng.pick(&FILE_MODES);
                set_mode(&t.join(rel), mode)
            }
            2 => {
                let rel = rng.pick(&layout.mutable_fifos).clone();
                let mode = *rng.pick(&FIFO_MODES);
                set_mode(&t.join(rel), mode)
            }
            3 => {
                let pool =
                    if rng.chance(50) { &layout.mutable_files } else { &layout.mutable_fifos };
                let rel = rng.pick(pool).clone();
                let (s, ns) = odd_mtime(&mut rng);
                let path = t.join(rel);
                rustix::fs::utimensat(CWD, &path, &times(s, ns), AtFlags::SYMLINK_NOFOLLOW).is_ok()
            }
            4 if created.len() < 12 => {
                serial += 1;
                let dir = rng.pick(&layout.dirs).rel();
                let rel = format!("{dir}/m{serial}");
                let made = if rng.chance(70) {
                    fs::write(t.join(&rel), format!("m{serial}")).is_ok()
                } else {
                    rustix::fs::mknodat(
                        CWD,
                        t.join(&rel),
                        FileType::Fifo,
                        Mode::from_raw_mode(0o640),
                        0,
                    )
                    .is_ok()
                };
                if made {
                    created.push(rel);
                }
                made
            }
            _ if !created.is_empty() => {
                let rel = created.swap_remove(rng.below(created.len()));
                fs::remove_file(t.join(rel)).is_ok()
            }
            _ => false,
        };
        if ok {
            Stats::bump(&stats.mutations);
        }
        // The pause between a user's changes, part of the scenario.
        std::thread::sleep(Duration::from_millis(5 + rng.below(10) as u64));
    }
}

/// chmod of a SOURCE file or FIFO (never a symlink: the mutator only names those).
fn set_mode(path: &Path, mode: u32) -> bool {
    rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(mode), AtFlags::empty()).is_ok()
}

// ------------------------------------------------------------------------------------------
// The scenario

/// The fixture shared by both tests.
struct Scene {
    t: Tree,
    layout: Layout,
    victim: Victim,
    staging: PathBuf,
    victim_before: Vec<SnapEntry>,
    rng: Rng,
}

fn scene() -> Scene {
    let mut rng = Rng::new(seed());
    let t = Tree::new();
    let victim = build_victim(t.base());
    let layout = build_source(&t, &mut rng, &victim.root.join("f0640"));
    let staging = t.base().join("attacker");
    fs::create_dir(&staging).expect("create staging");
    let victim_before = victim_snapshot(&victim.root);
    Scene { t, layout, victim, staging, victim_before, rng }
}

impl Scene {
    /// Runs the mutator and the attackers until `main` returns, then stops and joins them.
    /// Returns the counts and `main`'s result.
    fn attack<R>(&mut self, kinds: &[(Kind, u64)], main: impl FnOnce(&Scene) -> R) -> (Stats, R) {
        let stats = Stats::default();
        let stop = AtomicBool::new(false);
        let mut rngs: Vec<Rng> = (0..ATTACKERS).map(|_| self.rng.fork()).collect();
        let mutator_rng = self.rng.fork();
        let scene: &Scene = self;
        let attack = Attack {
            replica: scene.t.dst(),
            source: scene.t.src(),
            staging: &scene.staging,
            victim: &scene.victim,
            layout: &scene.layout,
            stats: &stats,
            stop: &stop,
            kinds,
        };
        let result = std::thread::scope(|s| {
            let (t, layout, stats, stop) = (&scene.t, &scene.layout, &stats, &stop);
            s.spawn(move || mutate_source(t, layout, stats, stop, mutator_rng));
            for (id, rng) in rngs.drain(..).enumerate() {
                let attack = &attack;
                s.spawn(move || Attacker::new(attack, id, rng).run());
            }
            // Stops the threads however `main` ends (a failed assertion in it included), so
            // the scope can join them.
            let _stop = StopOnDrop(stop);
            main(scene)
        });
        (stats, result)
    }

    fn victim_changed(&self) -> bool {
        victim_snapshot(&self.victim.root) != self.victim_before
    }

    /// Panics, naming what changed (modes in octal first), unless the victim is exactly as
    /// it was.
    #[track_caller]
    fn assert_victim_unchanged(&self) {
        let after = victim_snapshot(&self.victim.root);
        let changed = self.victim_before.iter().filter_map(|b| {
            after.iter().find(|a| a.path == b.path).filter(|a| *a != b).map(|a| (b, a))
        });
        for (b, a) in changed {
            eprintln!(
                "VICTIM CHANGED: {}: mode {:04o} -> {:04o}, owner {}:{} -> {}:{}, \
                 mtime {:?} -> {:?}",
                if b.path.as_os_str().is_empty() { Path::new(".") } else { &b.path }.display(),
                b.mode,
                a.mode,
                b.uid,
                b.gid,
                a.uid,
                a.gid,
                b.mtime,
                a.mtime
            );
        }
        assert_unchanged(
            "the victim directory OUTSIDE both roots (replicad followed an attacker's link)",
            &self.victim_before,
            &after,
        );
    }
}

/// Panics unless replicad set out to fix attributes in REPLICA often enough: each such fix
/// is a statx → chmod/chown/utimensat window the exchange loops race.
#[track_caller]
fn assert_fixes_attempted(log: &str, context: &str) {
    let fixes = log.matches("action=attrs").count();
    assert!(fixes >= 50, "replicad fixed attributes only {fixes} times:\n{context}");
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The service, passing every 200 ms, raced by the attackers for [`ATTACK_TIME`]: nothing
/// outside REPLICA changes, SOURCE is left alone, REPLICA converges afterwards.
/// `--checksum` because the planted files (same size and mtime, other bytes) are only
/// told apart by content.
#[test]
fn attack_service_never_changes_anything_outside_replica() {
    let mut scene = scene();
    let mut svc = scene.t.spawn(&["--interval", "200ms", "--debounce", "20ms", "--checksum"]);
    svc.wait_first_pass();
    assert_same(scene.t.src(), scene.t.dst());
    let passes_before = svc.count(PASS_COMPLETE);

    let started = Instant::now();
    let (stats, changed) = scene.attack(KINDS, |s| wait_until(ATTACK_TIME, || s.victim_changed()));
    let attacked_for = started.elapsed();
    let source_after = snapshot(scene.t.src());
    let passes = svc.count(PASS_COMPLETE) - passes_before;
    let log = svc.log();
    let context = format!(
        "attacked for {attacked_for:?} ({passes} full passes; victim changed: {changed})\n{}\
         replicad attrs actions: {}\n--- service log (tail) ---\n{}",
        stats.report(),
        log.matches("action=attrs").count(),
        tail(&log, 120)
    );
    eprintln!("{context}");
    scene.assert_victim_unchanged();

    stats.assert_attacks_happened();
    assert!(passes >= 5, "only {passes} full passes ran during the attack:\n{context}");
    assert_fixes_attempted(&log, &context);

    if !wait_until(CONVERGE, || compare(scene.t.src(), scene.t.dst()).is_ok()) {
        let diff = compare(scene.t.src(), scene.t.dst()).err().map(|d| d.to_string());
        panic!(
            "REPLICA did not converge within {CONVERGE:?} after the attack\n{}\n{context}\n\
             --- service log since (tail) ---\n{}",
            diff.unwrap_or_default(),
            tail(&svc.log(), 200)
        );
    }
    assert_same(scene.t.src(), scene.t.dst());
    assert_unchanged("SOURCE", &source_after, &snapshot(scene.t.src()));
    scene.assert_victim_unchanged();

    svc.terminate();
    assert!(svc.wait_exit(Duration::from_secs(10)).is_some(), "service did not stop on SIGTERM");
}

/// Repeated `--once` runs (see [`ONCE_ATTACK_TIME`]) raced by the attackers: nothing outside
/// REPLICA changes, no run crashes, and a final clean `--once --checksum` (the planted files
/// differ only in content) leaves REPLICA exact and SOURCE as it was.
#[test]
fn attack_once_runs_never_change_anything_outside_replica() {
    let mut scene = scene();
    scene.t.once(&[]).assert_code(0);
    assert_same(scene.t.src(), scene.t.dst());

    let started = Instant::now();
    let (stats, (runs, stderr)) = scene.attack(KINDS, |s| {
        let mut stderr = String::new();
        let mut runs = 0;
        let more = |runs: usize| runs < ONCE_RUNS || started.elapsed() < ONCE_ATTACK_TIME;
        while more(runs) && started.elapsed() < ONCE_ATTACK_MAX && !s.victim_changed() {
            let run = s.t.once(&[]);
            // 24: the SOURCE mutator made an entry vanish under the pass (a warning).
            assert!(
                matches!(run.code, Some(0 | 23 | 24)),
                "a --once run under attack did not end with 0, 23 or 24:\n{run}"
            );
            stderr.push_str(&run.stderr);
            runs += 1;
        }
        (runs, stderr)
    });
    let source_after = snapshot(scene.t.src());
    let context = format!(
        "{runs} --once runs in {:?}\n{}replicad attrs actions: {}\n\
         --- last runs' log (tail) ---\n{}",
        started.elapsed(),
        stats.report(),
        stderr.matches("action=attrs").count(),
        tail(&stderr, 120)
    );
    eprintln!("{context}");
    scene.assert_victim_unchanged();
    stats.assert_attacks_happened();
    assert!(runs >= ONCE_RUNS, "only {runs} --once runs raced the attack:\n{context}");
    assert_fixes_attempted(&stderr, &context);

    let last = scene.t.once(&["--checksum"]);
    assert_eq!(last.code, Some(0), "the clean --once after the attack failed:\n{last}");
    assert_same(scene.t.src(), scene.t.dst());
    assert_unchanged("SOURCE", &source_after, &snapshot(scene.t.src()));
    scene.assert_victim_unchanged();
}

/// Hard links of victim files swapped in for replica FIFOs and files: `AT_SYMLINK_NOFOLLOW`
/// and `O_NOFOLLOW` do not stop a hard link, so replicad's by-name chown, chmod and
/// utimensat (after a statx of what was there before) land on the victim's inode. The
/// victim files here are ones the attacker could link (as root here; with
/// `fs.protected_hardlinks=1` an unprivileged attacker can link only files it owns or may
/// read and write, with `=0` any file on the filesystem).
#[test]
fn attack_hardlink_exchange_never_changes_a_linked_outside_file() {
    const HARD_KINDS: &[(Kind, u64)] = &[(Kind::SwapFifoHardLink, 2), (Kind::SwapFileHardLink, 1)];
    let mut scene = scene();
    let mut svc = scene.t.spawn(&["--interval", "200ms", "--debounce", "20ms"]);
    svc.wait_first_pass();
    let started = Instant::now();
    let (stats, changed) =
        scene.attack(HARD_KINDS, |s| wait_until(ATTACK_TIME, || s.victim_changed()));
    let swaps = stats.swap_hardlink.load(Ordering::Relaxed);
    let log = svc.log();
    let context = format!(
        "attacked for {:?} ({swaps} hard-link exchange pairs; victim changed: {changed})\n\
         --- service log (tail) ---\n{}",
        started.elapsed(),
        tail(&log, 60)
    );
    eprintln!("{context}");
    scene.assert_victim_unchanged();
    assert!(swaps >= 200, "too few hard-link exchanges to prove anything:\n{context}");
    assert_fixes_attempted(&log, &context);
    if !wait_until(CONVERGE, || compare(scene.t.src(), scene.t.dst()).is_ok()) {
        assert_same(scene.t.src(), scene.t.dst());
    }
}

/// No race needed: a victim file that happens to have a SOURCE file's size and mtime (a copy
/// made with `cp -p`, say), hard-linked into REPLICA at that file's name, passes for an
/// up-to-date copy, so replicad "fixes" its mode and owner in place, on the victim's inode.
/// replicad never makes hard links itself: a replica file with more than one link is not
/// its own and should be replaced, not changed.
#[test]
fn attack_hardlinked_outside_file_with_source_stamp_is_not_changed() {
    let t = Tree::new();
    t.file("secret", b"same bytes\n").chmod("secret", 0o644).mtime("secret", 1_500_000_000, 7);
    let victim = crate::support::Dir::at(t.base().join("victim"));
    victim.file("secret", b"same bytes\n").chmod("secret", 0o600).mtime("secret", 1_500_000_000, 7);
    victim.chown_all(NOBODY, NOBODY);
    // Linking and unlinking move the victim's ctime legitimately: compare without it.
    let without_ctime = || {
        let mut snap = snapshot(victim.path());
        snap.iter_mut().for_each(|e| e.ctime = (0, 0));
        snap
    };
    let before = without_ctime();
    t.once(&[]).assert_code(0);
    let replica = t.dst().join("secret");
    fs::remove_file(&replica).expect("remove the replica's copy");
    fs::hard_link(victim.join("secret"), &replica).expect("hard-link the victim in");
    let run = t.once(&[]);
    assert_unchanged("the hard-linked victim outside REPLICA", &before, &without_ctime());
    run.assert_code(0);
    t.assert_mirrored();
}
