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
//!
//! Renames chain: the debouncer turns `a→b, b→c` into `a→c` and drops `b`. An exchange
//! (`renameat2(RENAME_EXCHANGE)`, `mv --exchange a b`) reaches it as the two pairs `a→b`,
//! `b→a` and comes out as `a→a`: `b` is dropped although it still exists, now holding what
//! `a` held, which no event describes. So a mark also says whether something was moved in
//! under its name (its look is then recursive) and which names a rename paired it with: a
//! batch that covers one end of a rename brings the other ends it dropped along at once,
//! not a debounce later.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use crate::queue::Hint;
use crate::relpath::RelPath;

/// What one raw event did to one name (see `hints::touched_by`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Touch {
    /// The name (or, for an excluded or temporary name, its parent).
    pub(super) path: RelPath,
    /// The event took the name away (removed, moved out).
    pub(super) gone: bool,
    /// Something was moved in under the name: what it holds was never reported.
    pub(super) moved_in: bool,
    /// The other end of the rename that moved this name, as marked.
    pub(super) partner: Option<RelPath>,
}

/// At most this many partners are kept per mark; a name renamed to and from more names
/// than that within one debounce waits for its own quiet period for the rest.
const PARTNERS_MAX: usize = 4;

/// One touched name.
#[derive(Debug)]
struct Mark {
    /// The time of its latest raw event.
    at: Instant,
    /// Sticky: once something was moved in under the name, its look is recursive.
    moved_in: bool,
    /// The other ends of the renames that moved it.
    partners: Vec<RelPath>,
}

/// The touched names, each with the time of its latest raw event.
///
/// Invariant: for each raw event recorded at `t` on path `p`, either `p` is still marked
/// with a time `>= t`, or a hint that makes the queue look at `p` (itself, an ancestor
/// recursively, or a full pass; recursively if something was moved in under `p`) was
/// handed over after `t`, or a full pass is owed. Since a hint's work starts after the
/// hint is handed over, every name a raw event touched is reconciled after that event,
/// whatever the debouncer merged.
///
/// Memory: at most `cap` marks with a few partners each (a few MB); past it, one full pass
/// replaces them all.
#[derive(Debug)]
pub(super) struct Touched {
    /// `RelPath` orders component-wise, so the marks below a path follow it contiguously.
    marks: BTreeMap<RelPath, Mark>,
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

    /// A raw event at `now` touched a name (see [`Touch`]). When it took the name away,
    /// the marks below it are subsumed: reconciling the name removes REPLICA's whole
    /// subtree while SOURCE lacks it, and if the name comes back, it comes back through a
    /// create (which the debouncer reports recursively) or a move-in (marked `moved_in`,
    /// so looked at recursively, whatever the debouncer reports).
    pub(super) fn touch(&mut self, touch: Touch, now: Instant) {
        let Touch { path, gone, moved_in, partner } = touch;
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
        let partner = partner.filter(|p| *p != path);
        let mark =
            self.marks.entry(path).or_insert(Mark { at: now, moved_in, partners: Vec::new() });
        mark.at = mark.at.max(now);
        mark.moved_in |= moved_in;
        if let Some(partner) = partner
            && !mark.partners.contains(&partner)
            && mark.partners.len() < PARTNERS_MAX
        {
            mark.partners.push(partner);
        }
    }

    /// A debounced batch handed over at `at` carries `hints`: forget the marks they cover
    /// that were made before `at` (later raw events still need their own look), and
    /// complete the batch:
    /// - a look at a name something was moved in under becomes recursive where the batch
    ///   only looks at the name itself (the debouncer reports such a name as removed when
    ///   it had an event pending);
    /// - the names a rename paired with a name the batch covers, where the batch does not
    ///   cover them itself (the debouncer dropped them from a chain of renames, or from an
    ///   exchange), are added with their parents.
    pub(super) fn cover(&mut self, hints: &mut Vec<Hint>, at: Instant) {
        if hints.contains(&Hint::FullPass) {
            self.marks.retain(|_, m| m.at > at);
            return;
        }
        let mut partners = Vec::new();
        // Recursive covers first, so that a name they cover is not also upgraded below.
        for hint in hints.iter() {
            match hint {
                Hint::Path { path, recursive: true } => {
                    partners.extend(self.cover_path(path, true, at).1);
                }
                // The queue reconciles both ends recursively.
                Hint::Rename { from, to } => {
                    partners.extend(self.cover_path(from, true, at).1);
                    partners.extend(self.cover_path(to, true, at).1);
                }
                Hint::Path { recursive: false, .. } | Hint::FullPass => {}
            }
        }
        for hint in hints.iter_mut() {
            if let Hint::Path { path, recursive } = hint
                && !*recursive
            {
                let (moved_in, more) = self.cover_path(path, false, at);
                *recursive = moved_in;
                partners.extend(more);
            }
        }
        hints.extend(self.take_partners(partners, at));
    }

    /// The marks quiet since `ripe_after` before `now`, taken out as hints for each path
    /// (recursive if something was moved in under it) and its parent (whose mtime the
    /// change moved), parents last; or one full pass if marks were dropped at the cap.
    pub(super) fn take_ripe(&mut self, now: Instant) -> Vec<Hint> {
        if std::mem::take(&mut self.overflowed) {
            return vec![Hint::FullPass];
        }
        let ripe: Vec<RelPath> = self
            .marks
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.at) >= self.ripe_after)
            .map(|(p, _)| p.clone())
            .collect();
        let taken = ripe.into_iter().filter_map(|p| self.marks.remove(&p).map(|m| (p, m)));
        with_parents(taken.collect())
    }

    /// How many names are marked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.marks.len()
    }

    /// Forgets the marks `path` covers (itself; with `recursive`, what is below too) that
    /// were made by `at`. Returns whether `path`'s own mark had something moved in, and
    /// the partners of every mark forgotten.
    fn cover_path(&mut self, path: &RelPath, recursive: bool, at: Instant) -> (bool, Vec<RelPath>) {
        let mut covered = Vec::new();
        if self.marks.get(path).is_some_and(|m| m.at <= at) {
            covered.push(path.clone());
        }
        if recursive {
            covered.extend(self.below(path).filter(|(_, m)| m.at <= at).map(|(p, _)| p.clone()));
        }
        let mut moved_in = false;
        let mut partners = Vec::new();
        for p in covered {
            if let Some(mark) = self.marks.remove(&p) {
                moved_in |= p == *path && mark.moved_in;
                partners.extend(mark.partners);
            }
        }
        (moved_in, partners)
    }

    /// Takes out the marks named in `partners` that were made by `at`, and in turn their
    /// own partners: a hint for each (recursive if something was moved in) and its parent.
    fn take_partners(&mut self, mut partners: Vec<RelPath>, at: Instant) -> Vec<Hint> {
        let mut taken = Vec::new();
        while let Some(p) = partners.pop() {
            // Covered already, or touched again after the batch: its own look follows.
            if self.marks.get(&p).is_none_or(|m| m.at > at) {
                continue;
            }
            if let Some(mark) = self.marks.remove(&p) {
                partners.extend(mark.partners.iter().cloned());
                taken.push((p, mark));
            }
        }
        taken.sort_by(|(a, _), (b, _)| a.cmp(b));
        with_parents(taken)
    }

    /// The marks strictly below `path`.
    fn below<'a>(&'a self, path: &'a RelPath) -> impl Iterator<Item = (&'a RelPath, &'a Mark)> {
        self.marks
            .range((Bound::Excluded(path), Bound::Unbounded))
            .take_while(move |(p, _)| p.starts_with(path))
    }
}

/// A hint for each taken mark (recursive if something was moved in under it), then one for
/// each parent that is not among them (a parent may be taken itself: one hint is enough).
fn with_parents(taken: Vec<(RelPath, Mark)>) -> Vec<Hint> {
    let names: BTreeSet<&RelPath> = taken.iter().map(|(p, _)| p).collect();
    let parents: BTreeSet<RelPath> =
        taken.iter().filter_map(|(p, _)| p.parent()).filter(|p| !names.contains(p)).collect();
    let mut hints: Vec<Hint> = taken
        .iter()
        .map(|(path, mark)| Hint::Path { path: path.clone(), recursive: mark.moved_in })
        .collect();
    hints.extend(parents.into_iter().map(|path| Hint::Path { path, recursive: false }));
    hints
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
        /// A raw rename at this many ms, as notify pairs it: (from, to).
        Moved(u64, &'static str, &'static str),
        /// A batch handed over at this many ms, and the batch as `cover` completes it.
        Cover(u64, Vec<Hint>, Vec<Hint>),
        /// `take_ripe` at this many ms must return exactly these hints.
        Ripe(u64, Vec<Hint>),
    }
    use Step::{Cover, Moved, Ripe, Touch};

    fn touch(path: &str, gone: bool, moved_in: bool, partner: Option<&str>) -> super::Touch {
        super::Touch { path: rp(path), gone, moved_in, partner: partner.map(rp) }
    }

    fn run(name: &str, steps: Vec<Step>) {
        let t0 = Instant::now();
        let mut set = Touched::new(RIPE, CAP);
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Touch(at, path, gone) => set.touch(touch(path, gone, false, None), t0 + ms(at)),
                Moved(at, from, to) => {
                    set.touch(touch(from, true, false, Some(to)), t0 + ms(at));
                    set.touch(touch(to, false, true, Some(from)), t0 + ms(at));
                }
                Cover(at, mut hints, want) => {
                    set.cover(&mut hints, t0 + ms(at));
                    assert_eq!(hints, want, "{name}: step {i}");
                }
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
                vec![
                    Touch(0, "d/A", false),
                    Cover(120, vec![p("d/A", false)], vec![p("d/A", false)]),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a touch after the batch is not covered by it",
                vec![
                    Touch(0, "d/A", false),
                    Touch(130, "d/A", true),
                    Cover(120, vec![p("d/A", false)], vec![p("d/A", false)]),
                    Ripe(500, vec![p("d/A", false), p("d", false)]),
                ],
            ),
            (
                "a recursive ancestor covers what is below it",
                vec![
                    Touch(0, "d/.lock", true),
                    Touch(0, "d/e/f", false),
                    Cover(120, vec![p("d", true)], vec![p("d", true)]),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a non-recursive ancestor covers only itself",
                vec![
                    Touch(0, "d", false),
                    Touch(0, "d/.lock", true),
                    Cover(120, vec![p("d", false)], vec![p("d", false)]),
                    Ripe(500, vec![p("d/.lock", false), p("d", false)]),
                ],
            ),
            (
                "a rename covers both its names with what is below them",
                vec![
                    Touch(0, "d/B", true),
                    Touch(0, "d/B/x", false),
                    Touch(0, "d/M", false),
                    Touch(0, "d/M/x", false),
                    Touch(0, "d/A", true),
                    Cover(120, vec![mv("d/B", "d/M")], vec![mv("d/B", "d/M")]),
                    Ripe(500, vec![p("d/A", false), p("d", false)]),
                ],
            ),
            (
                "a full pass covers everything before it",
                vec![
                    Touch(0, "a", true),
                    Touch(0, "d/b", true),
                    Touch(200, "late", false),
                    Cover(120, vec![Hint::FullPass], vec![Hint::FullPass]),
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
    fn names_moved_into_are_looked_at_recursively_and_partners_come_with_the_batch() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                // What notify-debouncer-full 0.7 makes of `mv --exchange d/a e/b` (measured):
                // one `Name(Both) [d/a, d/a]`, nothing for e/b.
                "an exchange: the dropped end comes with the batch, recursively",
                vec![
                    Moved(0, "d/a", "e/b"),
                    Moved(0, "e/b", "d/a"),
                    Cover(
                        120,
                        vec![mv("d/a", "d/a")],
                        vec![mv("d/a", "d/a"), p("e/b", true), p("e", false)],
                    ),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "an exchange after a write to one end: its removal becomes a recursive look",
                vec![
                    Touch(0, "b/f", false),
                    Moved(10, "a", "b"),
                    Moved(10, "b", "a"),
                    Cover(
                        120,
                        vec![p("b", false), p("", false), mv("a", "a")],
                        vec![p("b", true), p("", false), mv("a", "a")],
                    ),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a chain: the middle name comes with the batch",
                vec![
                    Moved(0, "a", "b"),
                    Moved(0, "b", "c"),
                    Cover(120, vec![mv("a", "c")], vec![mv("a", "c"), p("b", true), p("", false)]),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a longer chain, through another directory",
                vec![
                    Moved(0, "a", "x/b"),
                    Moved(0, "x/b", "c"),
                    Moved(0, "c", "d"),
                    Cover(
                        120,
                        vec![mv("a", "d")],
                        vec![
                            mv("a", "d"),
                            p("c", true),
                            p("x/b", true),
                            p("", false),
                            p("x", false),
                        ],
                    ),
                ],
            ),
            (
                "a plain rename the batch reports needs nothing more",
                vec![
                    Moved(0, "a", "b"),
                    Cover(120, vec![mv("a", "b")], vec![mv("a", "b")]),
                    Ripe(500, vec![]),
                ],
            ),
            (
                "a partner touched again after the batch waits for its own look",
                vec![
                    Moved(0, "a", "b"),
                    Moved(0, "b", "a"),
                    Touch(130, "b", false),
                    Cover(120, vec![mv("a", "a")], vec![mv("a", "a")]),
                    Ripe(200, vec![]),
                    Ripe(280, vec![p("b", true), p("", false)]),
                ],
            ),
            (
                "no batch at all: a name moved into ripens into a recursive look",
                vec![
                    Moved(0, "a", "b"),
                    Ripe(200, vec![p("a", false), p("b", true), p("", false)]),
                ],
            ),
            (
                "a moved-in name reported recursively is not looked at twice",
                vec![
                    Moved(0, "c", "b"),
                    Cover(
                        120,
                        vec![p("b", false), mv("c", "b")],
                        vec![p("b", false), mv("c", "b")],
                    ),
                ],
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
        let gone = |name: &str| touch(name, true, false, None);
        for name in &names[..CAP] {
            set.touch(gone(name), t0);
        }
        set.touch(gone(&names[0]), t0 + ms(1));
        assert_eq!(set.len(), CAP, "a known name does not count twice");
        set.touch(gone(&names[CAP]), t0 + ms(2));
        assert_eq!(set.len(), 0, "the marks are dropped at the cap");
        set.touch(gone("ignored"), t0 + ms(3));
        assert_eq!(set.len(), 0, "while a full pass is owed, nothing is recorded");
        assert_eq!(set.take_ripe(t0 + ms(4)), vec![Hint::FullPass], "asked for at once");
        set.touch(gone("after"), t0 + ms(5));
        assert_eq!(set.take_ripe(t0 + ms(500)), vec![p("after", false), p("", false)]);
    }

    #[test]
    fn partners_per_name_are_bounded() {
        let t0 = Instant::now();
        let mut set = Touched::new(RIPE, 64);
        let names = ["p0", "p1", "p2", "p3", "p4", "p5"];
        for name in names {
            set.touch(touch(name, false, false, None), t0);
            set.touch(touch("hub", false, true, Some(name)), t0);
        }
        set.touch(touch("hub", false, true, Some("hub")), t0);
        assert_eq!(set.marks[&rp("hub")].partners.len(), PARTNERS_MAX);
        let mut batch = vec![p("hub", true)];
        set.cover(&mut batch, t0 + ms(1));
        assert_eq!(batch.len(), 1 + PARTNERS_MAX + 1, "partners and their parent: {batch:?}");
        let rest = set.take_ripe(t0 + RIPE);
        assert_eq!(rest.len(), names.len() - PARTNERS_MAX + 1, "the rest ripen: {rest:?}");
    }
}
