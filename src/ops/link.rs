//! Hard links inside REPLICA: one more name for a file of a link group, put in place
//! atomically. The file that gets the name is pinned and checked first, so a name swapped
//! a moment ago (for a symlink, or a link to a file outside REPLICA) is never linked.
//! Knows nothing of link groups.

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::attrs::{Expect, pin, proc_fd_path};
use super::{TempFile, TempNames, in_writable_dir};
use crate::entry::Entry;

/// Gives the REPLICA file `target` (the entry `target_name` in `target_dir`, which must
/// still be that inode, with fewer than `group` names) the name `name` in `dirfd`,
/// replacing whatever non-directory is there in one rename.
pub fn link_into_place(
    target_dir: BorrowedFd<'_>,
    target_name: &CStr,
    target: &Entry,
    group: u64,
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    temp_names: &TempNames,
) -> io::Result<()> {
    let pinned = pin(target_dir, target_name, Expect::LinkTarget(target, group))?;
    let mut temp = TempFile::new(dirfd, temp_names);
    in_writable_dir(dirfd, || {
        // `AT_EMPTY_PATH` links the descriptor's own inode but needs CAP_DAC_READ_SEARCH;
        // the descriptor's /proc link names the same inode for everyone else.
        match rustix::fs::linkat(&pinned.fd, c"", dirfd, temp.name(), AtFlags::EMPTY_PATH) {
            Err(Errno::NOENT | Errno::PERM) => rustix::fs::linkat(
                rustix::fs::CWD,
                proc_fd_path(&pinned.fd).as_str(),
                dirfd,
                temp.name(),
                AtFlags::SYMLINK_FOLLOW,
            ),
            other => other,
        }
    })?;
    temp.created();
    temp.rename_into_place(name)
}
