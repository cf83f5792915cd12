//! The four `*xattrat` system calls (Linux 6.13+), which rustix and libc do not wrap yet:
//! they read and change extended attributes of a name relative to a directory descriptor
//! without following a symlink, or of an `O_PATH` descriptor itself (`AT_EMPTY_PATH`) —
//! exactly what "never resolve a swappable name" needs. `ENOSYS` on older kernels; the
//! caller then falls back to `/proc/self/fd` paths.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

// One number on every architecture: these calls came after the tables were unified.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of the kernel's uapi.
#[repr(C, align(8))]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn result(ret: libc::c_long) -> Result<usize, Errno> {
    if ret < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        Err(Errno::from_raw_os_error(errno))
    } else {
        Ok(usize::try_from(ret).unwrap_or(0))
    }
}

/// `listxattrat(dirfd, path, flags, buf)`: the NUL-separated names; with an empty `buf`,
/// the size they need.
#[allow(unsafe_code)]
pub fn list(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: u32,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which lives for the
    // call; `path` is NUL-terminated; the descriptor is borrowed for the call.
    result(unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags as libc::c_uint,
            buf.as_mut_ptr(),
            buf.len(),
        )
    })
}

/// `getxattrat`: the value of `name` into `buf`; with an empty `buf`, its size.
#[allow(unsafe_code)]
pub fn get(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: u32,
    name: &CStr,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `args` points at `buf`, valid for `args.size` bytes for the call; both
    // strings are NUL-terminated; the descriptor is borrowed for the call.
    result(unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags as libc::c_uint,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
}

/// `setxattrat`: sets `name` to `value` (creating or replacing it).
#[allow(unsafe_code)]
pub fn set(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: u32,
    name: &CStr,
    value: &[u8],
) -> Result<(), Errno> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| Errno::TOOBIG)?,
        flags: 0,
    };
    // SAFETY: the kernel only reads `args.size` bytes of `value`, which lives for the
    // call; both strings are NUL-terminated; the descriptor is borrowed for the call.
    result(unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags as libc::c_uint,
            name.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    })
    .map(|_| ())
}

/// `removexattrat`: removes `name`.
#[allow(unsafe_code)]
pub fn remove(dirfd: BorrowedFd<'_>, path: &CStr, flags: u32, name: &CStr) -> Result<(), Errno> {
    // SAFETY: both strings are NUL-terminated; the descriptor is borrowed for the call.
    result(unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            flags as libc::c_uint,
            name.as_ptr(),
        )
    })
    .map(|_| ())
}
