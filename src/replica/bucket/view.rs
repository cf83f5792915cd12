//! One LIST of the whole prefix, grouped by parent directory once: the bucket replica's
//! directory handles answer `list` and `stat` from it, so a pass makes ⌈N/1000⌉ LIST
//! requests however many directories it walks. Also what the listing says is not part
//! of the mirror (strays) and how an object's metadata becomes an [`Entry`]. Pure.
//!
//! A listing can hold what no filesystem can: a file `x` next to keys under `x/`, or a
//! file `x` next to a symlink object `x.rclonelink`. A directory wins over a file or a
//! link of its name (what lies below it is real); otherwise the first key in key order
//! wins. The losers, keys that are not the canonical spelling of their path (written by
//! another tool), and keys the mapping does not recognise at all are strays, removed by
//! key at the end of a clean pass unless something of this pass wrote that key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use crate::bucket::meta::{ObjectMeta, S_IFDIR, S_IFLNK, S_IFREG};
use crate::bucket::{Listed, Listing, ObjectKind};
use crate::entry::{Entry, Kind, Time};
use crate::relpath::RelPath;

/// One name of a directory, as the listing shows it.
#[derive(Clone, Debug)]
pub struct Child {
    /// How it is stored.
    pub kind: ObjectKind,
    /// Its object; `None` for a directory only implied by keys below it (no marker).
    pub listed: Option<Listed>,
}

/// A key that is not part of the mirror.
#[derive(Clone, Debug)]
pub struct Stray {
    /// What LIST said.
    pub listed: Listed,
    /// The path it decodes to, if any (for the excludes).
    pub rel: Option<RelPath>,
}

/// The listing, grouped by directory.
#[derive(Debug, Default)]
pub struct View {
    children: HashMap<RelPath, BTreeMap<CString, Child>>,
    /// Keys to remove at the end of a clean pass.
    pub strays: Vec<Stray>,
    /// Objects under the prefix, replicad's own manifest not counted.
    objects: usize,
    /// Keys LIST showed more than once (two real keys its XML made equal): never removed
    /// as strays, since the key names one of them.
    pub ambiguous: HashSet<String>,
}

impl View {
    /// Groups `listing` by parent path.
    pub fn new(listing: Listing) -> View {
        let mut view =
            View { objects: listing.objects.len() + listing.foreign.len(), ..View::default() };
        let mut seen = HashSet::new();
        for listed in &listing.raw {
            if !seen.insert(listed.key.as_str()) {
                view.ambiguous.insert(listed.key.clone());
            }
        }
        for listed in listing.foreign {
            view.strays.push(Stray { listed, rel: None });
        }
        for object in listing.objects {
            let stray = |listed| Stray { listed, rel: Some(object.rel.clone()) };
            let Some((parent, name)) = split(&object.rel).filter(|_| object.canonical) else {
                view.strays.push(stray(object.listed));
                continue;
            };
            // Every directory on the way exists, marker or not.
            let mut up = parent.clone();
            while let Some((above, dir)) = split(&up) {
                view.insert(above.clone(), dir, Child { kind: ObjectKind::Dir, listed: None });
                up = above;
            }
            let child = Child { kind: object.kind, listed: Some(object.listed) };
            view.insert(parent, name, child);
        }
        view
    }

    fn insert(&mut self, parent: RelPath, name: CString, child: Child) {
        let slot = self.children.entry(parent.clone()).or_default();
        let Some(have) = slot.get_mut(&name) else {
            slot.insert(name, child);
            return;
        };
        let rel = Some(parent.join(std::ffi::OsStr::from_bytes(name.to_bytes())));
        let loser = match (have.kind, child.kind) {
            (ObjectKind::Dir, ObjectKind::Dir) => {
                if have.listed.is_none() {
                    have.listed = child.listed;
                }
                None
            }
            (ObjectKind::Dir, _) => child.listed,
            (_, ObjectKind::Dir) => std::mem::replace(have, child).listed,
            _ => child.listed,
        };
        if let Some(listed) = loser {
            self.strays.push(Stray { listed, rel });
        }
    }

    /// How many objects the prefix holds (the manifest aside).
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// True if the prefix holds no object (the manifest aside).
    pub fn is_empty(&self) -> bool {
        self.objects == 0
    }

    /// The names in the directory `dir`.
    pub fn children(&self, dir: &RelPath) -> impl Iterator<Item = (&CString, &Child)> {
        self.children.get(dir).into_iter().flatten()
    }

    /// The child `name` of `dir`.
    pub fn child(&self, dir: &RelPath, name: &CStr) -> Option<&Child> {
        self.children.get(dir)?.get(name)
    }

    /// Every object at or below the directory `dir` (children first), with its path.
    pub fn below(&self, dir: &RelPath) -> Vec<(RelPath, Child)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for (name, child) in self.children(&d) {
                let rel = d.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
                if child.kind == ObjectKind::Dir {
                    stack.push(rel.clone());
                }
                out.push((rel, child.clone()));
            }
        }
        out.reverse();
        out
    }
}

/// (parent, name) of a path below the root; `None` for the root or a name with a NUL.
fn split(rel: &RelPath) -> Option<(RelPath, CString)> {
    let parent = rel.parent()?;
    let name = CString::new(rel.file_name()?.as_bytes()).ok()?;
    Some((parent, name))
}

/// The entry kind an object kind stands for, and the type bits its `mode` must have.
pub fn kind_of(kind: ObjectKind) -> (Kind, u32) {
    match kind {
        ObjectKind::File => (Kind::File, S_IFREG),
        ObjectKind::Symlink => (Kind::Symlink, S_IFLNK),
        ObjectKind::Dir => (Kind::Dir, S_IFDIR),
    }
}

/// The entry an object stands for. `meta`: what replicad wrote with it; `None` (metadata
/// replicad did not write, or a directory without a marker) gives an entry no SOURCE
/// entry equals, so the object is written again.
pub fn entry_of(kind: ObjectKind, size: u64, meta: Option<&ObjectMeta>) -> Entry {
    let (kind, type_bits) = kind_of(kind);
    let meta = meta.filter(|m| m.mode & 0o170000 == type_bits);
    let (mode, uid, gid, mtime) = match meta {
        Some(m) => (m.mode & 0o7777, m.uid, m.gid, m.mtime),
        None => (0, u32::MAX, u32::MAX, Time { sec: i64::MIN, nsec: 0 }),
    };
    Entry {
        kind,
        mode,
        size,
        blocks: size.div_ceil(512),
        mtime,
        ctime: mtime,
        uid,
        gid,
        dev: 0,
        ino: 0,
        nlink: 1,
        rdev: 0,
        mount_root: false,
    }
}

/// The metadata replicad writes for a symlink or a directory like `src`.
pub fn meta_for(src: &Entry) -> ObjectMeta {
    let type_bits = if src.kind == Kind::Dir { S_IFDIR } else { S_IFLNK };
    ObjectMeta {
        mode: type_bits | (src.mode & 0o7777),
        uid: src.uid,
        gid: src.gid,
        mtime: src.mtime,
        atime: None,
        btime: None,
        md5: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Object;
    use std::path::Path;

    fn listed(key: &str) -> Listed {
        Listed { key: key.into(), size: 1, etag: "e".into(), last_modified_ns: 1 }
    }

    fn object(rel: &str, kind: ObjectKind, key: &str) -> Object {
        let rel = RelPath::new(Path::new(rel)).unwrap();
        Object { rel, kind, canonical: true, listed: listed(key) }
    }

    #[test]
    fn grouped_by_parent_with_implied_dirs_and_strays() {
        let listing = Listing {
            objects: vec![
                object("a/b/f", ObjectKind::File, "a/b/f"),
                object("a/x", ObjectKind::File, "a/x"),
                object("a/x", ObjectKind::Dir, "a/x/"),
                object("a/x", ObjectKind::Symlink, "a/x.rclonelink"),
            ],
            foreign: vec![listed("a//z")],
            raw: vec![],
        };
        let view = View::new(listing);
        let root = RelPath::root();
        let names: Vec<_> = view.children(&root).map(|(n, c)| (n.clone(), c.kind)).collect();
        assert_eq!(names, vec![(c"a".to_owned(), ObjectKind::Dir)]);
        let a = RelPath::new(Path::new("a")).unwrap();
        assert_eq!(view.child(&a, c"b").map(|c| c.kind), Some(ObjectKind::Dir));
        let x = view.child(&a, c"x").unwrap();
        assert_eq!(
            (x.kind, x.listed.as_ref().map(|l| l.key.as_str())),
            (ObjectKind::Dir, Some("a/x/"))
        );
        let strays: Vec<_> = view.strays.iter().map(|s| s.listed.key.as_str()).collect();
        assert_eq!(strays, vec!["a//z", "a/x", "a/x.rclonelink"]);
        assert_eq!(view.below(&a).len(), 3);
        assert!(!view.is_empty());
    }

    #[test]
    fn metadata_of_another_type_is_not_trusted() {
        let meta = ObjectMeta {
            mode: S_IFDIR | 0o755,
            uid: 1,
            gid: 2,
            mtime: Time { sec: 5, nsec: 6 },
            atime: None,
            btime: None,
            md5: None,
        };
        assert_eq!(entry_of(ObjectKind::Dir, 0, Some(&meta)).mode, 0o755);
        assert_eq!(entry_of(ObjectKind::File, 0, Some(&meta)).mtime.sec, i64::MIN);
    }
}
