//! Test helpers shared by the watcher's unit tests: hand-made events and hints.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};
use notify::{Event, EventKind};

use crate::queue::Hint;
use crate::relpath::RelPath;

pub const ROOT: &str = "/src";

pub fn rp(s: &str) -> RelPath {
    RelPath::new(Path::new(s)).unwrap()
}
pub fn p(s: &str, recursive: bool) -> Hint {
    Hint::Path { path: rp(s), recursive }
}
pub fn mv(a: &str, b: &str) -> Hint {
    Hint::Rename { from: rp(a), to: rp(b) }
}
pub fn ev(kind: EventKind, paths: &[&str]) -> Event {
    paths.iter().fold(Event::new(kind), |e, path| {
        e.add_path(if path.starts_with('/') {
            PathBuf::from(path)
        } else {
            Path::new(ROOT).join(path)
        })
    })
}

/// `ign` anywhere, `*.o` files or dirs, and `build/` (directories only), as gitignore
/// would say with `matched_path_or_any_parents`.
pub fn excluded(path: &RelPath, is_dir: bool) -> bool {
    let names: Vec<_> = path.names().map(|n| n.to_string_lossy().into_owned()).collect();
    let last = names.len().saturating_sub(1);
    names.iter().enumerate().any(|(i, name)| {
        name == "ign" || name.ends_with(".o") || (name == "build" && (is_dir || i < last))
    })
}

pub const FILE: EventKind = EventKind::Create(CreateKind::File);
pub const DIR: EventKind = EventKind::Create(CreateKind::Folder);
pub const DATA: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Content));
pub const ATTR: EventKind = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
pub const RM_FILE: EventKind = EventKind::Remove(RemoveKind::File);
pub const RM_DIR: EventKind = EventKind::Remove(RemoveKind::Folder);
pub const BOTH: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
pub const FROM: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::From));
pub const TO: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::To));
pub const OPEN: EventKind = EventKind::Access(AccessKind::Open(AccessMode::Any));
