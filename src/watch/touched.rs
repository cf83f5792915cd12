//! Names the debouncer may merge away: every path a *raw* event created, removed or renamed,
//! remembered until a debounced batch covers it or it has been quiet long enough that the
//! debouncer would have delivered it. Pure: time is an argument; no I/O, no threads, no
//! notify types.
//!
//! notify-debouncer-full 0.7 keeps one queue per path and folds them: a rename whose target
//! is then removed or renamed onto again loses its old name (`mv A M; mv B M`, `mv C X; rm
//! X`); a create followed by a remove drops both, though the parent's mtime moved; removing
//! a directory drops the queues below it, renames into it included. Events are hints: when
//! a name may have been merged away, reconcile it (and its parent) anyway. A name that is
//! still there costs one cheap look; a name that is gone is removed from REPLICA.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use crate::queue::Hint;
use crate::relpath::RelPath;

/// The touched names, each with the time of its latest raw event.
///
/// Invariant: for each raw event recorded at `t` on path `p`, either `p` is still marked
/// with a time `>= t`, or a hint that makes the queue look at `p` (itself, an ancestor
/// recursively, or a full pass) was handed over after `t`, or a full pass is owed. Since a
/// hint's work starts after the hint is handed over, every name a raw event touched is
/// reconciled after that event, whatever the debouncer merged.
///
/// Memory: at most `cap` marks (a few MB); past it, one full pass replaces them all.
#[derive(Debug)]
pub(super) struct Touched {
    /// Latest raw event per path. `RelPath` orders component-wise, so the marks below a
    /// path follow it contiguously.
    marks: BTreeMap<RelPath, Instant>,
    /// How long a mark must stay quiet before it is handed over on its own: past the point
    /// where the debouncer would have delivered (and so covered) it.
    ripe_after: Duration,
    cap: usize,
    /// Marks were dropped at the cap: the next `take_ripe` asks for a full pass.
    overflowed: bool,
}

impl Touched {
    /// An empty set whose marks ripen after `ripe_after` of quiet, holding at most `cap`.
    pub(super) fn new(ripe_after: Duration, cap: usize) -> Touched {
        Touched { marks: BTreeMap::new(), ripe_after, cap, overflowed: false }
    }

    /// A raw event at `now` created, removed or renamed `path` (or, for an excluded or
    /// temporary name, changed its parent `path`). `gone`: the event took `path` away
    /// (removed, moved out), so the marks below it are subsumed: reconciling `path` removes
    /// REPLICA's whole subtree while SOURCE lacks it, and if `path` comes back, it comes back
    /// through a create or a move-in, which the debouncer reports recursively.
    pub(super) fn touch(&mut self, path: RelPath, gone: bool, now: Instant) {
        if self.overflowed {
            return; // a full pass is owed; it will look at everything
        }
        if gone {
            let below: Vec<RelPath> = self.below(&path).map(|(p, _)| p.clone()).collect();
            for p in below {
                self.marks.remove(&p);
            }
        }
        if self.marks.len() >= self.cap && !self.marks.contains_key(&path) {
            self.marks.clear();
            self.overflowed = true;
            return;
        }
        let at = self.marks.entry(path).or_insert(now);
        *at = (*at).max(now);
    }

    /// A debounced batch handed over at `at` carries `hints`: forget the marks they cover
    /// that were made before `at` (later raw events still need their own look).
    pub(super) fn cover(&mut self, hints: &[Hint], at: Instant) {
        for hint in hints {
            match hint {
                Hint::Path { path, recursive } => self.cover_path(path, *recursive, at),
                // The queue reconciles `to` recursively and `from` itself.
                Hint::Rename { from, to } => {
                    self.cover_path(from, false, at);
                    self.cover_path(to, true, at);
                }
                Hint::FullPass => self.marks.retain(|_, t| *t > at),
            }
        }
    }

    /// The marks quiet since `ripe_after` before `now`, taken out as non-recursive hints
    /// for each path and its parent (whose mtime the change moved), parents last; or one
    /// full pass if marks were dropped at the cap.
    pub(super) fn take_ripe(&mut self, now: Instant) -> Vec<Hint> {
        if std::mem::take(&mut self.overflowed) {
            return vec![Hint::FullPass];
        }
        let ripe: BTreeSet<RelPath> = self
            .marks
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= self.ripe_after)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &ripe {
            self.marks.remove(path);
        }
        // A parent may be ripe itself: one hint is enough.
        let parents: BTreeSet<RelPath> =
            ripe.iter().filter_map(RelPath::parent).filter(|p| !ripe.contains(p)).collect();
        ripe.into_iter().chain(parents).map(|path| Hint::Path { path, recursive: false }).collect()
    }

    /// How many names are marked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.marks.len()
    }

    fn cover_path(&mut self, path: &RelPath, recursive: bool, at: Instant) {
        if self.marks.get(path).is_some_and(|t| *t <= at) {
            self.marks.remove(path);
        }
        if recursive {
            let covered: Vec<RelPath> =
                self.below(path).filter(|(_, t)| **t <= at).map(|(p, _)| p.clone()).collect();
            for p in covered {
                self.marks.remove(&p);
            }
        }
    }

    /// The marks strictly below `path`.
    fn below<'a>(&'a self, path: &'a RelPath) -> impl Iterator<Item = (&'a RelPath, &'a Instant)> {
        self.marks
            .range((Bound::Excluded(path), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(path))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::watch::testing::{mv, p, rp};

    const RIPE: Duration = Duration::from_millis(150);
    const CAP: usize = 8;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What one step does to the set.
    enum Step {
        /// A raw event at this many ms: (path, gone).
        Touch(u64, &'static str, bool),
        /// A batch handed over at this many ms.
        Cover(u64, Vec<Hint>),
        /// `take_ripe` at this many ms must return exactly these hints.
        Ripe(u64, Vec<Hint>),
    }
    use Step::{Cover, Ripe, Touch};

    fn run(name: &str, steps: Vec<Step>) {
        let t0 = Instant::now();
        let mut set = Touched::new(RIPE, CAP);
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Touch(at, path, gone) => set.touch(rp(path), gone, t0 + ms(at)),
                Cover(at, hints) => set.cover(&hints, t0 + ms(at)),
                Ripe(at, want) => {
                    assert_eq!(set.take_ripe(t0 + ms(at)), want, "{name}: step {i}");
                }
            }
        }
    }

    #[test]
    fn marks_ripen_unless_a_batch_covers_them() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "an old name nobody reported: itself and its parent, once ripe",
                vec![
                    Touch(0, "d/A", true),
                    Ripe(100, vec![]),
                    Ripe(150, vec![p("d/A", false), p("d", false)]),
                    Ripe(400, vec![]),
                ],
            ),
            (
                "a later touch restarts the quiet period",
                vec![
                    Touch(0, "d/A", false),
                    Touch(100, "d/A", true),
                    Ripe(200, vec![]),
                    Ripe(250, vec![p("d/A", false), p("d", false)]),
                ],
            ),
            (
                "a batch hint on the path covers it",
                vec![Touch(0, "d/A", false), Cover(120, vec![p("d/A", false)]), Ripe(500, vec![])],
            ),
            (
                "a touch after the batch is not covered by it",
                vec![
                    Touch(0, "d/A", false),
                    Touch(130, "d/A", true),
                    Cover(120, vec![p("d/A", false)]),
                    Ripe(500, vec![p("d/A", false), p("d", false)]),
                ],
            ),
            (
                "a recursive ancestor covers what is below it",
                vec![
                    Touch(0, "d/.lock", true),
                    Touch(0, "d/e/f", false),
                    Cover(120, vec![p("d", true)]),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a non-recursive ancestor covers only itself",
                vec![
                    Touch(0, "d", false),
                    Touch(0, "d/.lock", true),
                    Cover(120, vec![p("d", false)]),
                    Ripe(500, vec![p("d/.lock", false), p("d", false)]),
                ],
            ),
            (
                "a rename covers its old name and its new one with what is below",
                vec![
                    Touch(0, "d/B", true),
                    Touch(0, "d/M", false),
                    Touch(0, "d/M/x", false),
                    Touch(0, "d/A", true),
                    Cover(120, vec![mv("d/B", "d/M")]),
                    Ripe(500, vec![p("d/A", false), p("d", false)]),
                ],
            ),
            (
                "a full pass covers everything before it",
                vec![
                    Touch(0, "a", true),
                    Touch(0, "d/b", true),
                    Touch(200, "late", false),
                    Cover(120, vec![Hint::FullPass]),
                    Ripe(350, vec![p("late", false), p("", false)]),
                ],
            ),
            (
                "a removal subsumes the marks below it",
                vec![
                    Touch(0, "Y/a/x", true),
                    Touch(0, "Y/a", true),
                    Touch(0, "Y2", false),
                    Touch(10, "Y", true),
                    Ripe(200, vec![p("Y", false), p("Y2", false), p("", false)]),
                ],
            ),
            (
                "a parent that is marked itself is hinted once",
                vec![
                    Touch(0, "d", false),
                    Touch(0, "d/x", true),
                    Touch(0, "d/y", true),
                    Ripe(200, vec![p("d", false), p("d/x", false), p("d/y", false), p("", false)]),
                ],
            ),
            (
                "the root as a mark (an excluded name right under it changed)",
                vec![Touch(0, "", false), Ripe(200, vec![p("", false)])],
            ),
        ];
        for (name, steps) in cases {
            run(name, steps);
        }
    }

    #[test]
    fn past_the_cap_one_full_pass_replaces_the_marks() {
        let names: Vec<String> = (0..=CAP).map(|i| format!("f{i}")).collect();
        let t0 = Instant::now();
        let mut set = Touched::new(RIPE, CAP);
        for name in &names[..CAP] {
            set.touch(rp(name), true, t0);
        }
        set.touch(rp(&names[0]), true, t0 + ms(1));
        assert_eq!(set.len(), CAP, "a known name does not count twice");
        set.touch(rp(&names[CAP]), true, t0 + ms(2));
        assert_eq!(set.len(), 0, "the marks are dropped at the cap");
        set.touch(rp("ignored"), true, t0 + ms(3));
        assert_eq!(set.len(), 0, "while a full pass is owed, nothing is recorded");
        assert_eq!(set.take_ripe(t0 + ms(4)), vec![Hint::FullPass], "asked for at once");
        set.touch(rp("after"), true, t0 + ms(5));
        assert_eq!(set.take_ripe(t0 + ms(500)), vec![p("after", false), p("", false)]);
    }
}
