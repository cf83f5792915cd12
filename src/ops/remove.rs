//! Removing a directory tree from REPLICA: depth first with an explicit stack of directory
//! descriptors (no recursion, no paths, so depth and path length do not matter), never
//! following a link, never entering SOURCE or REPLICA seen again through a bind mount, and
//! never removing what the caller says to keep (excluded entries). Knows nothing of why a
//! tree must go.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::attrs::open_up_dir;
use super::{list_dir, open_dir_at, unlink_dir, unlink_in};
use crate::entry::{Entry, Kind};
use crate::relpath::RelPath;

/// Says whether the entry at a relative path (a directory or not) must be kept.
pub type KeepEntry<'a> = &'a dyn Fn(&RelPath, bool) -> bool;

/// What a removal must leave in place, and when it must stop.
pub struct Removal<'a> {
    /// Entries to keep, by path relative to the roots and whether they are directories
    /// (excluded entries); `None` keeps nothing and builds no paths.
    pub keep: Option<KeepEntry<'a>>,
    /// Directories never entered: SOURCE, REPLICA, or a directory holding one of them,
    /// met again below REPLICA through a bind mount.
    pub boundary: &'a dyn Fn(&Entry) -> bool,
    /// Called once per entry (it shows progress); true means shutdown: stop now.
    pub stop: &'a dyn Fn() -> bool,
    /// Files never removed, by (device, inode): the process's own (its log file).
    pub own: &'a dyn Fn(u64, u64) -> bool,
    /// Count what would go, remove nothing (`--dry-run`: the same walk, the same counts).
    pub dry_run: bool,
}

/// What a removal did.
#[derive(Debug, Default)]
pub struct Removed {
    /// Entries removed below the directory (the directory itself not counted).
    pub entries: u64,
    /// Entries kept because the caller asked (their directories were kept too).
    pub kept: u64,
    /// Directories not entered because they are SOURCE or REPLICA (or hold one).
    pub boundaries: Vec<RelPath>,
}

impl Removed {
    /// True if the directory itself is gone.
    pub fn is_complete(&self) -> bool {
        self.kept == 0 && self.boundaries.is_empty()
    }
}

struct Frame {
    fd: OwnedFd,
    dev: u64,
    name: CString,
    rel: RelPath,
    subdirs: Vec<CString>,
    /// Something below this directory stays, so the directory stays too.
    keeps: bool,
}

/// Removes the directory `name` in `dirfd` (at `rel`) and everything under it that `rules`
/// allow. A directory that holds kept entries is emptied of the rest and kept.
pub fn remove_tree(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    rel: &RelPath,
    rules: &Removal<'_>,
) -> io::Result<Removed> {
    let mut done = Removed::default();
    let Some(mut root) = enter(dirfd, name, rel, rules, &mut done)? else {
        return Ok(done);
    };
    fill(&mut root, rules, &mut done)?;
    let mut stack = vec![root];
    while let Some(top) = stack.last_mut() {
        if let Some(sub) = top.subdirs.pop() {
            let rel = top.rel.join(OsStr::from_bytes(sub.to_bytes()));
            match enter(top.fd.as_fd(), &sub, &rel, rules, &mut done)? {
                Some(mut frame) => {
                    fill(&mut frame, rules, &mut done)?;
                    stack.push(frame);
                }
                None => top.keeps = true,
            }
            continue;
        }
        let Some(finished) = stack.pop() else { break };
        let parent = stack.last_mut();
        if finished.keeps {
            if let Some(parent) = parent {
                parent.keeps = true;
            }
            continue;
        }
        let is_top = parent.is_none();
        let parent_fd = parent.map_or(dirfd, |f| f.fd.as_fd());
        if !rules.dry_run {
            unlink_dir(parent_fd, &finished.name)?;
        }
        if !is_top {
            done.entries += 1;
        }
    }
    Ok(done)
}

/// Opens a directory to empty it; `None` (and noted) if it is a boundary. A directory its
/// owner may not open (mode 000 mirrored from SOURCE) is opened up first.
fn enter(
    parent: BorrowedFd<'_>,
    name: &CStr,
    rel: &RelPath,
    rules: &Removal<'_>,
    done: &mut Removed,
) -> io::Result<Option<Frame>> {
    let fd = match open_dir_at(parent, name) {
        Err(e) if e.raw_os_error() == Some(Errno::ACCESS.raw_os_error()) && !rules.dry_run => {
            open_up_dir(parent, name)?;
            open_dir_at(parent, name)?
        }
        other => other?,
    };
    let entry = Entry::stat_fd(&fd)?;
    if (rules.boundary)(&entry) {
        done.boundaries.push(rel.clone());
        return Ok(None);
    }
    Ok(Some(Frame {
        fd,
        dev: entry.dev,
        name: name.to_owned(),
        rel: rel.clone(),
        subdirs: Vec::new(),
        keeps: false,
    }))
}

/// Unlinks every non-directory of the frame's directory that is not kept, and notes its
/// subdirectories (kept ones excepted) for the caller to enter.
fn fill(frame: &mut Frame, rules: &Removal<'_>, done: &mut Removed) -> io::Result<()> {
    for item in list_dir(&frame.fd)? {
        if (rules.stop)() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled by shutdown"));
        }
        let is_dir = match item.kind_hint {
            FileType::Directory => true,
            FileType::Unknown => {
                Entry::stat_at(&frame.fd, &item.name)?.is_some_and(|e| e.kind == Kind::Dir)
            }
            _ => false,
        };
        if !is_dir && (rules.own)(frame.dev, item.ino) {
            done.kept += 1;
            frame.keeps = true;
            continue;
        }
        if let Some(keep_entry) = rules.keep {
            let rel = frame.rel.join(OsStr::from_bytes(item.name.to_bytes()));
            if keep_entry(&rel, is_dir) {
                done.kept += 1;
                frame.keeps = true;
                continue;
            }
        }
        if is_dir {
            frame.subdirs.push(item.name);
        } else {
            if !rules.dry_run {
                unlink_in(&frame.fd, &item.name, AtFlags::empty())?;
            }
            done.entries += 1;
        }
    }
    Ok(())
}
