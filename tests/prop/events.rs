//! Event-path property: random operation sequences on SOURCE *while the service runs* with
//! `--interval 1h`, so only events can bring REPLICA back. Once the operations stop,
//! REPLICA must equal SOURCE (strict oracle) within the debounce plus a deadline for CI
//! noise, and no full pass but the first may have run.
//!
//! The operations are the one-shot property's (create, write, mkdir, symlink, FIFO, remove,
//! rename, chmod, touch; type swaps come from writing over an entry of another type) plus
//! the shapes the debouncer folds: append, truncate, rename chains, renaming onto a name
//! that is renamed onto again, rename then `rm -rf`, swapping two entries through a
//! temporary name or atomically (`renameat2(RENAME_EXCHANGE)`: files, directories, mixed,
//! across directories), a parent with children created and removed again and again, lock
//! files created and removed, and REPLICA tampering followed by a touch of the same SOURCE
//! path (REPLICA is not watched: only the touch can explain a repair). Operations follow each other as fast as the test can issue them, so most fall
//! within one debounce; `Quiet` lets some events come out in between.
//!
//! Contents change only together with a fresh, never-reused mtime (see `Applier::tick`),
//! so "same size and mtime, other bytes" — which replicad does not look for without
//! `--checksum` — cannot arise and be mistaken for a bug.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Applier, Op, P, op, path, rel};
use crate::removals::{DEBOUNCE, running};
use crate::support::{Kind, PASS_COMPLETE, Service, Tree, assert_same, compare, wait_until};

/// How long REPLICA may take to converge once the operations stop: the debounce plus room
/// for a loaded 2-core machine. Not an expectation: the time taken is printed.
const DEADLINE: Duration = Duration::from_secs(5);

/// Entries are swapped through this name; the generated names are `a`, `b`, `c` only.
const SWAP: &str = ".swap";

/// A lock file's name.
const LOCK: &str = ".lock";

#[derive(Clone, Debug)]
enum EvOp {
    /// One of the one-shot property's operations.
    Base(Op),
    Append(P, Vec<u8>),
    Truncate(P, usize),
    /// `mv p q; mv q r`
    Chain(P, P, P),
    /// `mv a m; mv b m`
    RenameOnto(P, P, P),
    /// `mv p q; rm -rf q`
    RenameThenRemove(P, P),
    /// `mv p .swap; mv q p; mv .swap q`
    Swap(P, P),
    /// `mv --exchange p q`: any two entries, each may be a directory.
    Exchange(P, P),
    /// `mkdir -p p/a/b; echo > p/a/c; echo > p/b; rm -rf p`, this many times; with `true`,
    /// once more without the removal.
    Churn(P, u8, bool),
    /// `touch d/.lock; rm d/.lock` in `p` if it is a directory, else in its parent.
    Lock(P),
    /// REPLICA's copy of file `p` deleted (`true`) or overwritten, then SOURCE `p` touched.
    Tamper(P, bool),
    /// Scenario timing: SOURCE is left alone this many milliseconds.
    Quiet(u64),
}

fn ev_op() -> impl Strategy<Value = EvOp> {
    prop_oneof![
        10 => op().prop_map(EvOp::Base),
        2 => (path(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| EvOp::Append(p, b)),
        1 => (path(), 0..8usize).prop_map(|(p, n)| EvOp::Truncate(p, n)),
        1 => (path(), path(), path()).prop_map(|(a, b, c)| EvOp::Chain(a, b, c)),
        2 => (path(), path(), path()).prop_map(|(a, b, m)| EvOp::RenameOnto(a, b, m)),
        2 => (path(), path()).prop_map(|(a, b)| EvOp::RenameThenRemove(a, b)),
        1 => (path(), path()).prop_map(|(a, b)| EvOp::Swap(a, b)),
        3 => (path(), path()).prop_map(|(a, b)| EvOp::Exchange(a, b)),
        1 => (path(), 1..4u8, any::<bool>()).prop_map(|(p, n, keep)| EvOp::Churn(p, n, keep)),
        2 => path().prop_map(EvOp::Lock),
        1 => (path(), any::<bool>()).prop_map(|(p, delete)| EvOp::Tamper(p, delete)),
        2 => prop::sample::select(&[5u64, 40, 120, 250][..]).prop_map(EvOp::Quiet),
    ]
}

impl Applier<'_> {
    fn apply_event_op(&mut self, op: &EvOp) {
        match op {
            EvOp::Base(op) => self.apply(op),
            EvOp::Append(p, bytes) => {
                let r = rel(p);
                if self.kind(&r) == Some(Kind::File) {
                    let mut f = OpenOptions::new().append(true).open(self.t.join(&r)).unwrap();
                    f.write_all(bytes).unwrap();
                    self.tick(&r, bytes.len() as u32);
                }
            }
            EvOp::Truncate(p, len) => {
                let r = rel(p);
                if self.kind(&r) == Some(Kind::File) {
                    let f = OpenOptions::new().write(true).open(self.t.join(&r)).unwrap();
                    let len = (*len as u64).min(f.metadata().unwrap().len());
                    f.set_len(len).unwrap();
                    self.tick(&r, 3);
                }
            }
            EvOp::Chain(a, b, c) => {
                self.apply(&Op::Rename(a.clone(), b.clone()));
                self.apply(&Op::Rename(b.clone(), c.clone()));
            }
            EvOp::RenameOnto(a, b, m) => {
                self.apply(&Op::Rename(a.clone(), m.clone()));
                self.apply(&Op::Rename(b.clone(), m.clone()));
            }
            EvOp::RenameThenRemove(a, b) => {
                self.apply(&Op::Rename(a.clone(), b.clone()));
                self.apply(&Op::Remove(b.clone()));
            }
            EvOp::Swap(a, b) => self.swap(&rel(a), &rel(b)),
            EvOp::Exchange(a, b) => self.exchange(&rel(a), &rel(b)),
            EvOp::Churn(p, rounds, keep) => self.churn(&rel(p), *rounds, *keep),
            EvOp::Lock(p) => self.lock(&rel(p)),
            EvOp::Tamper(p, delete) => self.tamper(&rel(p), *delete),
            EvOp::Quiet(ms) => std::thread::sleep(Duration::from_millis(*ms)),
        }
    }

    /// Exchanges two entries (files, directories, links) through a temporary name, as
    /// `mv a .swap; mv b a; mv .swap b` would.
    fn swap(&self, a: &Path, b: &Path) {
        let (Some(_), Some(_)) = (self.kind(a), self.kind(b)) else { return };
        if a.starts_with(b) || b.starts_with(a) {
            return;
        }
        let tmp = a.parent().unwrap_or(Path::new("")).join(SWAP);
        self.t.rename(a, &tmp).rename(b, a).rename(&tmp, b);
    }

    /// Exchanges two entries atomically, as `mv --exchange a b` does.
    fn exchange(&self, a: &Path, b: &Path) {
        let (Some(_), Some(_)) = (self.kind(a), self.kind(b)) else { return };
        if a.starts_with(b) || b.starts_with(a) {
            return;
        }
        crate::exchange::exchange(self.t, a, b);
    }

    /// Creates a parent with children at `p` and removes it, `rounds` times; with `keep`,
    /// creates it once more and leaves it.
    fn churn(&mut self, p: &Path, rounds: u8, keep: bool) {
        self.make_parents(p);
        if self.kind(p).is_some() {
            self.t.remove(p);
        }
        for round in 0..rounds + u8::from(keep) {
            self.t.dir(p.join("a/b"));
            for (name, len) in [("a/c", 1), ("b", 2)] {
                let file = p.join(name);
                self.t.file(&file, vec![round; len]);
                self.tick(&file, u32::from(round));
            }
            if round < rounds {
                self.t.remove(p);
            }
        }
    }

    fn lock(&self, p: &Path) {
        let dir = match self.kind(p) {
            Some(Kind::Dir) => p.to_path_buf(),
            _ => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        if self.kind(&dir) != Some(Kind::Dir) {
            return;
        }
        let lock = dir.join(LOCK);
        if self.kind(&lock).is_none() {
            self.t.file(&lock, std::process::id().to_string()).remove(&lock);
        }
    }

    /// Damages REPLICA's copy of a SOURCE file (never following a link), then touches the
    /// SOURCE file: that event is what must bring the copy back.
    fn tamper(&mut self, p: &Path, delete: bool) {
        if self.kind(p) != Some(Kind::File) || self.t.replica().kind(p) != Some(Kind::File) {
            return;
        }
        let copy = self.t.replica().join(p);
        if delete {
            let _ = std::fs::remove_file(&copy);
        } else if let Ok(mut f) = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&copy)
        {
            let _ = f.write_all(b"tampered");
        }
        self.tick(p, 5);
    }
}

/// Everything the service logged after its first pass that says a full pass was asked for
/// or ran.
fn full_passes_after_the_first(svc: &Service) -> Vec<String> {
    let log = svc.log_after_first_pass();
    log.lines()
        .filter(|l| l.contains(PASS_COMPLETE) || l.contains("full pass requested"))
        .map(str::to_owned)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_changes_while_running_are_mirrored_by_events_alone(
        setup in prop::collection::vec(op(), 0..10),
        ops in prop::collection::vec(ev_op(), 1..=30),
    ) {
        let t = Tree::new();
        let mut applier = Applier { t: &t, clock: 0 };
        for op in &setup {
            applier.apply(op);
        }
        // The operations may empty SOURCE; the deletion guard (tested elsewhere) would then
        // refuse by design. The property here is the event path itself.
        let svc = running(&t, &["--interval", "1h", "--allow-empty-source"]);
        assert_same(t.src(), t.dst());
        for op in &ops {
            applier.apply_event_op(op);
        }
        let stopped = Instant::now();
        let converged = wait_until(DEBOUNCE + DEADLINE, || compare(t.src(), t.dst()).is_ok());
        let took = stopped.elapsed();
        if !converged {
            let diff = compare(t.src(), t.dst()).err().map(|d| d.to_string()).unwrap_or_default();
            prop_assert!(false, "REPLICA did not converge within {:?} after {:?}\n{}\nlog:\n{}",
                DEBOUNCE + DEADLINE, ops, diff, svc.log());
        }
        let full = full_passes_after_the_first(&svc);
        prop_assert!(full.is_empty(), "a full pass, not events, explains it:\n{}\nlog:\n{}",
            full.join("\n"), svc.log());
        eprintln!("{} operations: converged {took:?} after the last", ops.len());
    }
}
