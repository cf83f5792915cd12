//! From debounced notify events to [`Hint`]s: the pure mapping [`hints_from`], with the
//! exclusion and temporary-name rules. No I/O, no threads, no notion of time.

use std::path::{Path, PathBuf};

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};

use super::touched::Touch;
use crate::queue::Hint;
use crate::relpath::RelPath;

/// Prefix of replicad's temporary names (SPEC §4: `.replicad.tmp.*`); never mirrored, so
/// never hinted either.
const TEMP_PREFIX: &[u8] = b".replicad.tmp.";

/// Maps one (debounced) event to hints for the queue. Pure: no I/O.
///
/// `need_rescan` (overflow) is checked before anything else, since it has no path. An event
/// on the root itself or outside it asks for a full pass (the deletion guard decides what a
/// vanished root means), except a plain attribute change of the root. Changed entries get a
/// hint for themselves and one for their parent, whose mtime the change (or our REPLICA
/// write) moves. Paths that are excluded or are our temporary names get no hint of their
/// own, but their creation, removal or renaming still changes the parent.
///
/// When the event does not say whether an entry is a directory (renames, attribute
/// changes), it counts as excluded if it would be as a file or as a directory: a wrongly
/// skipped entry waits for the next pass, a wrongly mirrored one would never be removed.
pub fn hints_from(
    event: &Event,
    source_root: &Path,
    is_excluded: &dyn Fn(&RelPath, bool) -> bool,
) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::FullPass];
    }
    if event.kind.is_access() {
        return Vec::new();
    }
    if event.paths.is_empty() {
        return vec![Hint::FullPass];
    }
    let Some(paths) = relative(&event.paths, source_root) else {
        return vec![Hint::FullPass];
    };
    let mut out = Hints { hints: Vec::new(), is_excluded };
    if paths.iter().any(RelPath::is_root) {
        if is_attribute_change(event.kind) && paths.iter().all(RelPath::is_root) {
            out.push(RelPath::root(), false);
            return out.hints;
        }
        return vec![Hint::FullPass];
    }
    match event.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match paths.as_slice() {
            [from, to] => out.rename(from, to),
            _ => return vec![Hint::FullPass],
        },
        kind => {
            let look = Look::of(kind);
            for path in &paths {
                out.look(path, look);
            }
        }
    }
    out.hints
}

/// The event's paths relative to the root; `None` if one lies outside it.
fn relative(paths: &[PathBuf], root: &Path) -> Option<Vec<RelPath>> {
    paths.iter().map(|p| RelPath::under(root, p)).collect()
}

fn is_attribute_change(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Modify(
            ModifyKind::Data(_) | ModifyKind::Metadata(_) | ModifyKind::Any | ModifyKind::Other
        )
    )
}

/// What one event says about one path.
#[derive(Clone, Copy, Debug)]
struct Look {
    /// Its contents may not have been reported (new or moved-in directory).
    recursive: bool,
    /// The parent's entries changed (create, remove, rename), not only this entry.
    namespace: bool,
    /// Whether it is a directory, when the event says.
    is_dir: Option<bool>,
}

impl Look {
    fn of(kind: EventKind) -> Look {
        let (recursive, namespace, is_dir) = match kind {
            EventKind::Create(CreateKind::File) => (false, true, Some(false)),
            EventKind::Create(CreateKind::Folder) => (true, true, Some(true)),
            // Create(Any/Other): may be a directory whose contents nobody reported.
            EventKind::Create(_) => (true, true, None),
            EventKind::Remove(RemoveKind::File) => (false, true, Some(false)),
            EventKind::Remove(RemoveKind::Folder) => (false, true, Some(true)),
            EventKind::Remove(_) => (false, true, None),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (false, true, None),
            // Moved in: inotify reports nothing of what it contains.
            EventKind::Modify(ModifyKind::Name(_)) => (true, true, None),
            // inotify sends IN_MODIFY only for non-directories.
            EventKind::Modify(ModifyKind::Data(_)) => (false, false, Some(false)),
            EventKind::Modify(_) => (false, false, None),
            // Kinds inotify does not produce: assume the worst.
            EventKind::Any | EventKind::Other | EventKind::Access(_) => (true, true, None),
        };
        Look { recursive, namespace, is_dir }
    }
}

/// Collects hints, applying the exclusion and temp-name rules.
struct Hints<'a> {
    hints: Vec<Hint>,
    is_excluded: &'a dyn Fn(&RelPath, bool) -> bool,
}

impl Hints<'_> {
    fn push(&mut self, path: RelPath, recursive: bool) {
        let hint = Hint::Path { path, recursive };
        // Events carry one or two paths, so this scan is short.
        if !self.hints.contains(&hint) {
            self.hints.push(hint);
        }
    }

    fn skipped(&self, path: &RelPath, is_dir: Option<bool>) -> bool {
        is_temp_name(path)
            || match is_dir {
                Some(is_dir) => (self.is_excluded)(path, is_dir),
                None => (self.is_excluded)(path, false) || (self.is_excluded)(path, true),
            }
    }

    /// The parent's mtime moves when an entry appears, vanishes or is renamed in it.
    fn parent_of(&mut self, path: &RelPath) {
        if let Some(parent) = path.parent().filter(|p| !self.skipped(p, Some(true))) {
            self.push(parent, false);
        }
    }

    fn look(&mut self, path: &RelPath, look: Look) {
        if self.skipped(path, look.is_dir) {
            if look.namespace {
                self.parent_of(path);
            }
            return;
        }
        self.push(path.clone(), look.recursive);
        self.parent_of(path);
    }

    fn rename(&mut self, from: &RelPath, to: &RelPath) {
        let from_look = Look::of(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
        let to_look = Look::of(EventKind::Modify(ModifyKind::Name(RenameMode::To)));
        match (self.skipped(from, None), self.skipped(to, None)) {
            (false, false) => {
                self.hints.push(Hint::Rename { from: from.clone(), to: to.clone() });
                // The worker reconciles `from`'s parent itself; `to`'s is ours to report.
                if from.parent() != to.parent() {
                    self.parent_of(to);
                }
            }
            // An excluded end is invisible to the mirror: the rename is a create or remove.
            (true, false) => {
                self.parent_of(from);
                self.look(to, to_look);
            }
            (false, true) => {
                self.look(from, from_look);
                self.parent_of(to);
            }
            (true, true) => {
                self.parent_of(from);
                self.parent_of(to);
            }
        }
    }
}

/// The names one *raw* event (before the debouncer) created, removed or renamed, each with
/// whether the event took it away or moved something in under it, and, for a paired
/// rename, the other end: what [`Touched`](super::touched::Touched) remembers in case the
/// debouncer merges the event away. Pure: no I/O.
///
/// Only namespace changes count; data and attribute changes are never merged away from a
/// name that still exists. An excluded or temporary name stands for its parent, whose mtime
/// it moved (and is the other end of a rename for that). The root and paths outside it are
/// left to the debounced event (a full pass).
pub(super) fn touched_by(
    event: &Event,
    source_root: &Path,
    is_excluded: &dyn Fn(&RelPath, bool) -> bool,
) -> Vec<Touch> {
    use ModifyKind::Name;
    if event.need_rescan() {
        return Vec::new();
    }
    let is_dir = match event.kind {
        EventKind::Create(kind) => create_is_dir(kind),
        EventKind::Remove(kind) => remove_is_dir(kind),
        EventKind::Modify(Name(_)) => None,
        _ => return Vec::new(),
    };
    // For a paired rename, the first path is the old name and the second the new one.
    let how = |i: usize| match event.kind {
        EventKind::Remove(_) | EventKind::Modify(Name(RenameMode::From)) => (true, false),
        EventKind::Modify(Name(RenameMode::Both)) => (i == 0, i == 1),
        // Moved in (`To`), or a rename whose direction notify does not know.
        EventKind::Modify(Name(_)) => (false, true),
        _ => (false, false),
    };
    let rules = Hints { hints: Vec::new(), is_excluded };
    // What each path marks: itself, or its parent for an excluded or temporary name.
    let marks: Vec<Option<(RelPath, bool)>> = event
        .paths
        .iter()
        .map(|path| {
            let path = RelPath::under(source_root, path).filter(|p| !p.is_root())?;
            if !rules.skipped(&path, is_dir) {
                return Some((path, true));
            }
            path.parent().filter(|p| !rules.skipped(p, Some(true))).map(|parent| (parent, false))
        })
        .collect();
    let paired =
        matches!(event.kind, EventKind::Modify(Name(RenameMode::Both))) && marks.len() == 2;
    let mut out = Vec::new();
    for (i, mark) in marks.iter().enumerate() {
        let Some((path, itself)) = mark else { continue };
        let (gone, moved_in) = how(i);
        let partner = if paired { marks[1 - i].as_ref().map(|(p, _)| p.clone()) } else { None };
        out.push(Touch {
            path: path.clone(),
            gone: gone && *itself,
            moved_in: moved_in && *itself,
            partner,
        });
    }
    out
}

fn create_is_dir(kind: CreateKind) -> Option<bool> {
    match kind {
        CreateKind::File => Some(false),
        CreateKind::Folder => Some(true),
        _ => None,
    }
}

fn remove_is_dir(kind: RemoveKind) -> Option<bool> {
    match kind {
        RemoveKind::File => Some(false),
        RemoveKind::Folder => Some(true),
        _ => None,
    }
}

fn is_temp_name(path: &RelPath) -> bool {
    path.names().any(|name| name.as_encoded_bytes().starts_with(TEMP_PREFIX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::watch::testing::*;
    use notify::event::Flag;

    #[test]
    fn raw_events_to_touched_names() {
        let rescan = ev(FILE, &["a"]).set_flag(Flag::Rescan);
        /// (case, raw event, the names it touched: (path, "gone" if it took the name away or
        /// "in" if it moved something in under it, the other end of a paired rename))
        type Case = (&'static str, Event, Vec<(&'static str, &'static str, Option<&'static str>)>);
        let cases: Vec<Case> = vec![
            ("file created", ev(FILE, &["d/f"]), vec![("d/f", "", None)]),
            ("dir created", ev(DIR, &["d"]), vec![("d", "", None)]),
            ("file removed: gone", ev(RM_FILE, &["d/f"]), vec![("d/f", "gone", None)]),
            ("dir removed: gone", ev(RM_DIR, &["d"]), vec![("d", "gone", None)]),
            ("moved out: gone", ev(FROM, &["d/A"]), vec![("d/A", "gone", None)]),
            ("moved in", ev(TO, &["d/M"]), vec![("d/M", "in", None)]),
            (
                "paired rename: each end is the other's partner",
                ev(BOTH, &["d/A", "e/M"]),
                vec![("d/A", "gone", Some("e/M")), ("e/M", "in", Some("d/A"))],
            ),
            (
                "rename from an excluded name: its parent stands for it",
                ev(BOTH, &["d/x.o", "d/x"]),
                vec![("d", "", Some("d/x")), ("d/x", "in", Some("d"))],
            ),
            (
                "rename out of an excluded tree: no partner",
                ev(BOTH, &["ign/x", "x"]),
                vec![("x", "in", None)],
            ),
            ("written: not a namespace change", ev(DATA, &["d/f"]), vec![]),
            ("chmod: not a namespace change", ev(ATTR, &["d/f"]), vec![]),
            ("read", ev(OPEN, &["d/f"]), vec![]),
            ("overflow", rescan, vec![]),
            ("the root itself: left to the full pass", ev(RM_DIR, &[""]), vec![]),
            ("outside the root", ev(FILE, &["/elsewhere/x"]), vec![]),
            ("temp name: its parent", ev(RM_FILE, &["d/.replicad.tmp.7"]), vec![("d", "", None)]),
            ("excluded file: its parent", ev(FILE, &["d/a.o"]), vec![("d", "", None)]),
            ("excluded right under the root: the root", ev(FILE, &["a.o"]), vec![("", "", None)]),
            ("inside an excluded dir: nothing", ev(RM_FILE, &["ign/x"]), vec![]),
            ("dir-only pattern, file", ev(RM_FILE, &["build"]), vec![("build", "gone", None)]),
            (
                "dir-only pattern, kind unknown: excluded",
                ev(FROM, &["build"]),
                vec![("", "", None)],
            ),
        ];
        for (name, event, want) in cases {
            let want: Vec<Touch> = want
                .into_iter()
                .map(|(path, how, partner)| Touch {
                    path: rp(path),
                    gone: how == "gone",
                    moved_in: how == "in",
                    partner: partner.map(rp),
                })
                .collect();
            assert_eq!(touched_by(&event, Path::new(ROOT), &excluded), want, "{name}");
        }
    }

    #[test]
    fn events_to_hints() {
        let rescan = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let rescan_with_path = ev(FILE, &["a"]).set_flag(Flag::Rescan);
        let cases: Vec<(&str, Event, Vec<Hint>)> = vec![
            ("overflow is pathless: full pass", rescan, vec![Hint::FullPass]),
            ("rescan wins over paths", rescan_with_path, vec![Hint::FullPass]),
            ("access dropped", ev(OPEN, &["a"]), vec![]),
            ("pathless unknown event: full pass", ev(EventKind::Other, &[]), vec![Hint::FullPass]),
            (
                "file created: it and its parent",
                ev(FILE, &["d/f"]),
                vec![p("d/f", false), p("d", false)],
            ),
            ("directory created: recursive", ev(DIR, &["d"]), vec![p("d", true), p("", false)]),
            (
                "create of unknown kind: recursive",
                ev(EventKind::Create(CreateKind::Any), &["x"]),
                vec![p("x", true), p("", false)],
            ),
            ("content changed", ev(DATA, &["d/f"]), vec![p("d/f", false), p("d", false)]),
            ("attributes changed", ev(ATTR, &["d"]), vec![p("d", false), p("", false)]),
            ("file removed", ev(RM_FILE, &["d/f"]), vec![p("d/f", false), p("d", false)]),
            (
                "directory removed: not recursive",
                ev(RM_DIR, &["d/e"]),
                vec![p("d/e", false), p("d", false)],
            ),
            ("rename in one directory", ev(BOTH, &["d/a", "d/b"]), vec![mv("d/a", "d/b")]),
            (
                "rename across directories: also the target's parent",
                ev(BOTH, &["a/x", "b/y"]),
                vec![mv("a/x", "b/y"), p("b", false)],
            ),
            ("rename to the top", ev(BOTH, &["d/a", "b"]), vec![mv("d/a", "b"), p("", false)]),
            (
                "rename from an excluded name is a create",
                ev(BOTH, &["d/x.o", "d/x"]),
                vec![p("d", false), p("d/x", true)],
            ),
            (
                "rename to an excluded name is a remove",
                ev(BOTH, &["d/x", "d/x.o"]),
                vec![p("d/x", false), p("d", false)],
            ),
            (
                "rename out of an excluded tree",
                ev(BOTH, &["ign/a", "b"]),
                vec![p("b", true), p("", false)],
            ),
            ("rename within an excluded tree", ev(BOTH, &["ign/a", "ign/b"]), vec![]),
            ("rename with one path: full pass", ev(BOTH, &["a"]), vec![Hint::FullPass]),
            ("moved out", ev(FROM, &["d/a"]), vec![p("d/a", false), p("d", false)]),
            ("moved in: recursive", ev(TO, &["d/a"]), vec![p("d/a", true), p("d", false)]),
            ("root removed: full pass", ev(RM_DIR, &[""]), vec![Hint::FullPass]),
            ("root moved away: full pass", ev(FROM, &[""]), vec![Hint::FullPass]),
            ("root attributes: the root alone", ev(ATTR, &[""]), vec![p("", false)]),
            ("outside the root: full pass", ev(FILE, &["/elsewhere/x"]), vec![Hint::FullPass]),
            ("sibling of the root is outside", ev(FILE, &["/src2/x"]), vec![Hint::FullPass]),
            (
                "temp name created: only the parent",
                ev(FILE, &["d/.replicad.tmp.42"]),
                vec![p("d", false)],
            ),
            ("temp name written: nothing", ev(DATA, &["d/.replicad.tmp.42"]), vec![]),
            ("under a temp-named dir: nothing", ev(DATA, &[".replicad.tmp.x/f"]), vec![]),
            ("excluded file created: only the parent", ev(FILE, &["d/a.o"]), vec![p("d", false)]),
            ("excluded file written: nothing", ev(DATA, &["d/a.o"]), vec![]),
            ("inside an excluded dir: nothing", ev(FILE, &["ign/x"]), vec![]),
            ("dir-only pattern, directory", ev(DIR, &["build"]), vec![p("", false)]),
            ("dir-only pattern, file", ev(FILE, &["build"]), vec![p("build", false), p("", false)]),
            ("dir-only pattern, type unknown: excluded", ev(TO, &["build"]), vec![p("", false)]),
            (
                "several paths",
                ev(EventKind::Modify(ModifyKind::Any), &["a", "d/b"]),
                vec![p("a", false), p("", false), p("d/b", false), p("d", false)],
            ),
        ];
        for (name, event, want) in cases {
            assert_eq!(hints_from(&event, Path::new(ROOT), &excluded), want, "{name}");
        }
    }
}
