//! `Entry`: what one `statx` says about a directory entry that matters for mirroring (type,
//! size, mode, mtime, owner, inode, link target), and how two entries differ. Knows nothing
//! of how to fix a difference.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Statx, StatxFlags, StatxTimestamp};

/// The entry types replicad knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A unix socket (not mirrored).
    Socket,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Socket => Kind::Socket,
            _ => Kind::File,
        }
    }

    /// The lowercase name used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDevice => "char-device",
            Kind::BlockDevice => "block-device",
            Kind::Socket => "socket",
        }
    }

    /// Whether mode bits are mirrored for this type (Linux symlinks are always 0777).
    pub fn has_mode(self) -> bool {
        self != Kind::Symlink
    }
}

/// A timestamp to the nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl From<StatxTimestamp> for Time {
    fn from(t: StatxTimestamp) -> Time {
        Time { sec: t.tv_sec, nsec: t.tv_nsec }
    }
}

/// What one `statx` (never following links) says about an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's type.
    pub kind: Kind,
    /// Permission bits, `mode & 0o7777`.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks (tells a sparse file).
    pub blocks: u64,
    /// Modification time.
    pub mtime: Time,
    /// Status change time (moves on any change, cannot be set by tools).
    pub ctime: Time,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device holding the entry.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Number of names the inode has (hard links).
    pub nlink: u64,
    /// Device number, for device nodes.
    pub rdev: u64,
}

/// The statx fields replicad reads.
const WANTED: StatxFlags = StatxFlags::BASIC_STATS;

impl Entry {
    /// Builds an entry from a `statx` result.
    pub fn from_statx(st: &Statx) -> Entry {
        let mode = u32::from(st.stx_mode);
        Entry {
            kind: Kind::from_mode(mode),
            mode: mode & 0o7777,
            size: st.stx_size,
            blocks: st.stx_blocks,
            mtime: st.stx_mtime.into(),
            ctime: st.stx_ctime.into(),
            uid: st.stx_uid,
            gid: st.stx_gid,
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            nlink: u64::from(st.stx_nlink),
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        }
    }

    /// `statx(dirfd, name)` without following a symlink; `Ok(None)` if the name is absent.
    pub fn stat_at(dirfd: impl AsFd, name: &CStr) -> io::Result<Option<Entry>> {
        match rustix::fs::statx(dirfd, name, AtFlags::SYMLINK_NOFOLLOW, WANTED) {
            Ok(st) => Ok(Some(Entry::from_statx(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `statx` of an open file descriptor.
    pub fn stat_fd(fd: impl AsFd) -> io::Result<Entry> {
        let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, WANTED)?;
        Ok(Entry::from_statx(&st))
    }

    /// True if the content of two regular files counts as equal without reading it: the
    /// same size and the same mtime to the nanosecond.
    pub fn same_size_and_mtime(&self, other: &Entry) -> bool {
        self.size == other.size && self.mtime == other.mtime
    }

    /// Likely sparse: fewer blocks allocated than the size needs.
    pub fn looks_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.size
    }

    /// Which metadata differ between `self` (the source) and `replica`.
    pub fn attr_diff(&self, replica: &Entry, owners: bool) -> AttrDiff {
        AttrDiff {
            mode: self.kind.has_mode() && self.mode != replica.mode,
            mtime: self.mtime != replica.mtime,
            owner: owners && (self.uid != replica.uid || self.gid != replica.gid),
        }
    }

    /// True if a copy made from `self` before is still current: nothing that a write, a
    /// truncate or a replace would move has moved (size, mtime, ctime, inode).
    pub fn unchanged_since(&self, before: &Entry) -> bool {
        self.size == before.size
            && self.mtime == before.mtime
            && self.ctime == before.ctime
            && self.ino == before.ino
            && self.dev == before.dev
    }
}

/// Which metadata of a replica entry need correcting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrDiff {
    /// Permission bits differ.
    pub mode: bool,
    /// Modification time differs.
    pub mtime: bool,
    /// Owner or group differs (only when replicad may chown).
    pub owner: bool,
}

impl AttrDiff {
    /// Nothing to correct.
    pub fn is_empty(&self) -> bool {
        !(self.mode || self.mtime || self.owner)
    }

    /// Everything: for a freshly created entry.
    pub fn all(owners: bool) -> AttrDiff {
        AttrDiff { mode: true, mtime: true, owner: owners }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, sec: i64, nsec: u32) -> Entry {
        Entry {
            kind: Kind::File,
            mode: 0o644,
            size,
            blocks: size.div_ceil(512),
            mtime: Time { sec, nsec },
            ctime: Time { sec, nsec },
            uid: 0,
            gid: 0,
            dev: 1,
            ino: 1,
            nlink: 1,
            rdev: 0,
        }
    }

    #[test]
    fn content_equality_is_size_and_mtime_to_the_nanosecond() {
        assert!(file(3, 10, 5).same_size_and_mtime(&file(3, 10, 5)));
        assert!(!file(3, 10, 5).same_size_and_mtime(&file(3, 10, 6)));
        assert!(!file(3, 10, 5).same_size_and_mtime(&file(4, 10, 5)));
    }

    #[test]
    fn attr_diff_ignores_owner_unless_asked_and_mode_of_symlinks() {
        let a = file(1, 1, 1);
        let mut b = a.clone();
        b.uid = 7;
        assert!(a.attr_diff(&b, false).is_empty());
        assert!(a.attr_diff(&b, true).owner);
        let mut l = a.clone();
        l.kind = Kind::Symlink;
        let mut l2 = l.clone();
        l2.mode = 0o777;
        assert!(!l.attr_diff(&l2, true).mode);
    }

    #[test]
    fn unchanged_since_notices_ctime_only_changes() {
        let before = file(3, 10, 5);
        let mut after = before.clone();
        after.ctime.nsec += 1;
        assert!(!after.unchanged_since(&before));
        assert!(before.unchanged_since(&before.clone()));
    }
}
