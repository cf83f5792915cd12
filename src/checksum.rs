//! MD5 of a file read through an open descriptor (streaming, never the whole file in
//! memory), and a bounded cache keyed by inode and timestamps so an unchanged file is hashed
//! once. Knows nothing of the tree.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::sync::Mutex;

use lru::LruCache;
use md5::{Digest, Md5};

use crate::entry::{Entry, Time};

/// A 128-bit MD5 digest.
pub type Md5Sum = [u8; 16];

const READ_CHUNK: usize = 256 * 1024;

/// How many files the cache remembers (about 100 bytes each: memory stays flat).
const CACHE_ENTRIES: usize = 65_536;

/// MD5 of everything readable from `fd`, starting at offset 0 (positional reads, so the
/// descriptor's own offset is left alone).
pub fn md5_fd(fd: impl AsFd, cancelled: &dyn Fn() -> bool) -> io::Result<Md5Sum> {
    let fd = fd.as_fd();
    let _ = rustix::fs::fadvise(fd, 0, None, rustix::fs::Advice::Sequential);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    loop {
        if cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = match rustix::io::pread(fd, &mut buf[..], offset) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher.finalize().into())
}

/// Lowercase hex of a digest, zero-padded.
pub fn hex(sum: &Md5Sum) -> String {
    format!("{:032x}", u128::from_be_bytes(*sum))
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: Time,
    ctime: Time,
}

/// Remembers digests by `(dev, ino)`; a hit needs size, mtime and ctime to match too, so a
/// rewrite, a restored mtime or a reused inode is never served a stale digest.
pub struct Md5Cache {
    map: Mutex<LruCache<(u64, u64), (Stamp, Md5Sum)>>,
}

impl Default for Md5Cache {
    fn default() -> Self {
        let cap = NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Md5Cache {
            map: Mutex::new(LruCache::new(cap)),
        }
    }
}

impl Md5Cache {
    /// The digest of the file `fd` whose current `statx` is `entry`, from the cache when the
    /// file has not changed since it was hashed.
    pub fn md5(
        &self,
        fd: impl AsFd,
        entry: &Entry,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Md5Sum> {
        let key = (entry.dev, entry.ino);
        let stamp = Stamp {
            size: entry.size,
            mtime: entry.mtime,
            ctime: entry.ctime,
        };
        if let Some((cached, sum)) = self.lock().get(&key).copied()
            && cached == stamp
        {
            return Ok(sum);
        }
        let sum = md5_fd(fd, cancelled)?;
        self.lock().put(key, (stamp, sum));
        Ok(sum)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(u64, u64), (Stamp, Md5Sum)>> {
        // A poisoned cache only means another thread panicked mid-update; the data is
        // still a valid map of digests.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn md5_of_known_content() -> io::Result<()> {
        let mut f = tempfile::tempfile()?;
        f.write_all(b"The quick brown fox jumps over the lazy dog")?;
        assert_eq!(
            hex(&md5_fd(&f, &|| false)?),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
        let empty = tempfile::tempfile()?;
        assert_eq!(
            hex(&md5_fd(&empty, &|| false)?),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        Ok(())
    }

    #[test]
    fn cache_misses_when_the_file_changed() -> io::Result<()> {
        let mut f = tempfile::tempfile()?;
        f.write_all(b"one")?;
        let cache = Md5Cache::default();
        let e1 = Entry::stat_fd(&f)?;
        let first = cache.md5(&f, &e1, &|| false)?;
        f.write_all(b"two")?;
        let e2 = Entry::stat_fd(&f)?;
        assert_ne!(cache.md5(&f, &e2, &|| false)?, first);
        let second = cache.md5(&f, &e2, &|| false)?;
        // A hit is served without reading: bytes written behind the cache's back (stamp
        // deliberately stale) do not show.
        f.write_all(b"three")?;
        assert_eq!(cache.md5(&f, &e2, &|| false)?, second);
        Ok(())
    }
}
