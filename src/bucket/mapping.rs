//! Where each SOURCE entry lives in the bucket, following rclone's `--links` and
//! `--s3-directory-markers` conventions so `rclone copy --metadata --links
//! --create-empty-src-dirs` restores the tree. Pure: paths and kinds in, keys out.
//!
//! | SOURCE entry | object |
//! |---|---|
//! | regular file `a/b` | `PREFIX/a/b`, the bytes, metadata as in [`super::meta`] |
//! | symlink `a/l` | `PREFIX/a/l.rclonelink`, the target's bytes, metadata (`mode` `120777`) |
//! | directory `a/d` | marker `PREFIX/a/d/`, empty, metadata (so empty directories and modes survive) |
//! | the root | no object (rclone neither writes nor reads a marker for it) |
//! | FIFO, socket, device | none: [`MapError::NotRepresentable`] (skipped with a warning) |
//!
//! Every name is encoded by [`super::encode`]. A regular file named `*.rclonelink` has no
//! faithful object (rclone would restore it as a symlink): [`MapError::LinkSuffix`]. Two
//! SOURCE entries of one directory that
//! would share a name in the bucket — a symlink `x` and a file or directory `x.rclonelink`
//! — are a [`Collision`], an entry error, never an overwrite. The top-level name
//! `.replicad` is reserved for replicad's own objects (the manifest).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::entry::Kind;
use crate::relpath::RelPath;

use super::encode::{self, NameError};

/// rclone's `fs.LinkSuffix`.
pub const LINK_SUFFIX: &str = ".rclonelink";
/// The top-level name under PREFIX that holds replicad's own objects.
pub const RESERVED: &str = ".replicad";
/// S3's limit on a key's length in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// What kind of object a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A regular file's bytes.
    File,
    /// A `NAME.rclonelink` object holding a symlink's target.
    Symlink,
    /// A `DIR/` marker.
    Dir,
}

impl ObjectKind {
    /// The object kind that stands for a SOURCE entry kind, if any.
    pub fn of(kind: Kind) -> Option<ObjectKind> {
        match kind {
            Kind::File => Some(ObjectKind::File),
            Kind::Symlink => Some(ObjectKind::Symlink),
            Kind::Dir => Some(ObjectKind::Dir),
            Kind::Fifo | Kind::CharDevice | Kind::BlockDevice | Kind::Socket => None,
        }
    }
}

/// Why an entry has no key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// One of the path's names cannot go through rclone's encoding and come back.
    #[error("name {name:?} has no S3 key: {source}")]
    Name {
        /// The offending name.
        name: OsString,
        /// Why.
        source: NameError,
    },
    /// FIFOs, sockets and device nodes have no object form.
    #[error("a {} cannot be stored in a bucket", .0.name())]
    NotRepresentable(Kind),
    /// The key would exceed S3's 1,024 bytes.
    #[error("the key would be {0} bytes, over S3's limit of 1024")]
    TooLong(usize),
    /// The root has no object.
    #[error("the root has no object")]
    Root,
    /// rclone `--links` restores every `*.rclonelink` object as a symlink, so a regular
    /// file with that suffix has no faithful object.
    #[error("a regular file named *.rclonelink would come back from rclone --links as a symlink")]
    LinkSuffix,
    /// S3 answers LIST in XML, whose end-of-line handling turns a carriage return inside a
    /// key into a line feed: such a key would be listed as another name (and a name
    /// differing only there would be taken for its twin).
    #[error("a name holding a carriage return comes back from S3's XML listing as a line feed")]
    CarriageReturn,
    /// The top-level `.replicad` is replicad's own.
    #[error("the top-level name .replicad is reserved for replicad's manifest")]
    Reserved,
}

/// A bucket prefix, normalised: empty, or ending in exactly one `/`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Prefix(String);

impl Prefix {
    /// Normalises `p` (`"a/b"`, `"/a/b/"` → `"a/b/"`; `""` → `""`).
    pub fn new(p: &str) -> Prefix {
        let p = p.trim_matches('/');
        if p.is_empty() { Prefix(String::new()) } else { Prefix(format!("{p}/")) }
    }

    /// The prefix itself (`""` or `"…/"`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the manifest object.
    pub fn manifest_key(&self) -> String {
        format!("{}{RESERVED}/manifest", self.0)
    }
}

/// The key of `rel` stored as `kind` under `prefix`.
pub fn key_for(prefix: &Prefix, rel: &RelPath, kind: ObjectKind) -> Result<String, MapError> {
    if rel.is_root() {
        return Err(MapError::Root);
    }
    let mut key = prefix.0.clone();
    let depth = rel.depth();
    for (i, name) in rel.names().enumerate() {
        if i == 0 && name == RESERVED {
            return Err(MapError::Reserved);
        }
        if name.as_bytes().contains(&b'\r') {
            return Err(MapError::CarriageReturn);
        }
        let last = i + 1 == depth;
        if last && kind == ObjectKind::File && name.as_bytes().ends_with(LINK_SUFFIX.as_bytes()) {
            return Err(MapError::LinkSuffix);
        }
        let suffix = if last && kind == ObjectKind::Symlink { LINK_SUFFIX } else { "" };
        let segment = encode::to_key_segment(name.as_bytes(), suffix)
            .map_err(|source| MapError::Name { name: name.to_owned(), source })?;
        if i > 0 {
            key.push('/');
        }
        key.push_str(&segment);
    }
    if kind == ObjectKind::Dir {
        key.push('/');
    }
    if key.len() > MAX_KEY_LEN {
        return Err(MapError::TooLong(key.len()));
    }
    Ok(key)
}

/// The key of a SOURCE entry of `kind`, or why it has none.
pub fn key_for_entry(prefix: &Prefix, rel: &RelPath, kind: Kind) -> Result<String, MapError> {
    let object = ObjectKind::of(kind).ok_or(MapError::NotRepresentable(kind))?;
    key_for(prefix, rel, object)
}

/// What a listed key stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// An entry in the mirror; `canonical` is false when replicad would not have written
    /// this exact key for `rel` (e.g. written by another tool with other encodings): such
    /// an object is a stray, deleted by its raw key.
    Entry {
        /// The SOURCE path it restores to.
        rel: RelPath,
        /// How it is stored.
        kind: ObjectKind,
        /// `key_for(rel, kind)` is this very key.
        canonical: bool,
    },
    /// Under the reserved `.replicad/`: replicad's own, never mirrored or deleted as a stray.
    Reserved,
    /// Not a name rclone can restore at all (empty segments, outside PREFIX): a stray.
    Foreign,
}

/// Decodes a listed key back into the SOURCE path rclone would restore it to.
pub fn decode_key(prefix: &Prefix, key: &str) -> Decoded {
    let Some(rest) = key.strip_prefix(prefix.as_str()) else {
        return Decoded::Foreign;
    };
    if rest == RESERVED || rest.starts_with(&format!("{RESERVED}/")) {
        return Decoded::Reserved;
    }
    let (body, is_dir) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    if body.is_empty() {
        return Decoded::Foreign;
    }
    let segments: Vec<&str> = body.split('/').collect();
    let mut path = PathBuf::new();
    let mut kind = if is_dir { ObjectKind::Dir } else { ObjectKind::File };
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Decoded::Foreign;
        }
        let mut name = encode::from_key_segment(segment.as_bytes());
        if i + 1 == segments.len()
            && !is_dir
            && let Some(stripped) = name.strip_suffix(LINK_SUFFIX.as_bytes())
            && !stripped.is_empty()
        {
            kind = ObjectKind::Symlink;
            name = stripped.to_vec();
        }
        path.push(OsString::from_vec(name));
    }
    let Some(rel) = RelPath::new(&path) else {
        return Decoded::Foreign;
    };
    if rel.depth() != segments.len() {
        return Decoded::Foreign;
    }
    let canonical = key_for(prefix, &rel, kind).is_ok_and(|k| k == key);
    Decoded::Entry { rel, kind, canonical }
}

/// Two or more entries of one directory that would share a name in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    /// The name they would share (as rclone restores it, suffix included).
    pub remote: OsString,
    /// The SOURCE names involved.
    pub names: Vec<OsString>,
}

/// The name an entry takes in the bucket's view of its directory: the name itself, or
/// with `.rclonelink` for a symlink.
fn remote_name(name: &OsStr, kind: Kind) -> OsString {
    let mut remote = name.to_owned();
    if kind == Kind::Symlink {
        remote.push(LINK_SUFFIX);
    }
    remote
}

/// The collisions among the entries of one SOURCE directory (`at_root`: the directory is
/// the root, where `.replicad` is reserved). Entries that are not representable are
/// ignored (they are skipped anyway).
pub fn collisions<'a>(
    entries: impl IntoIterator<Item = (&'a OsStr, Kind)>,
    at_root: bool,
) -> Vec<Collision> {
    let mut by_remote: std::collections::BTreeMap<OsString, Vec<OsString>> = Default::default();
    if at_root {
        by_remote.insert(OsString::from(RESERVED), vec![OsString::from("(replicad's manifest)")]);
    }
    for (name, kind) in entries {
        if ObjectKind::of(kind).is_some() {
            by_remote.entry(remote_name(name, kind)).or_default().push(name.to_owned());
        }
    }
    by_remote
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(remote, names)| Collision { remote, names })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rel(p: &[u8]) -> RelPath {
        RelPath::new(Path::new(OsStr::from_bytes(p))).unwrap()
    }

    #[test]
    fn keys_follow_rclone() {
        let p = Prefix::new("/backup/x/");
        assert_eq!(p.as_str(), "backup/x/");
        assert_eq!(key_for(&p, &rel(b"a/b"), ObjectKind::File).unwrap(), "backup/x/a/b");
        assert_eq!(
            key_for(&p, &rel(b"a/l"), ObjectKind::Symlink).unwrap(),
            "backup/x/a/l.rclonelink"
        );
        assert_eq!(key_for(&p, &rel(b"a/d"), ObjectKind::Dir).unwrap(), "backup/x/a/d/");
        assert_eq!(key_for(&p, &rel(b"\xff/y"), ObjectKind::File).unwrap(), "backup/x/‛FF/y");
        assert_eq!(key_for(&p, &RelPath::root(), ObjectKind::Dir), Err(MapError::Root));
        assert_eq!(key_for(&p, &rel(b".replicad/m"), ObjectKind::File), Err(MapError::Reserved));
        assert_eq!(key_for(&p, &rel(b"x.rclonelink"), ObjectKind::File), Err(MapError::LinkSuffix));
        assert_eq!(
            key_for_entry(&p, &rel(b"f"), Kind::Fifo),
            Err(MapError::NotRepresentable(Kind::Fifo))
        );
        let long = vec![b'n'; 255];
        let deep = [&long[..], b"/", &long[..], b"/", &long[..], b"/", &long[..], b"/", &long[..]]
            .concat();
        assert!(matches!(key_for(&p, &rel(&deep), ObjectKind::File), Err(MapError::TooLong(_))));
    }

    #[test]
    fn decode_inverts_key_for() {
        let p = Prefix::new("pre");
        for (path, kind) in [
            (&b"a/b"[..], ObjectKind::File),
            (b"a/l", ObjectKind::Symlink),
            (b"d", ObjectKind::Dir),
            (b"\xfe\xff/x.rclonelink.rclonelink", ObjectKind::Symlink),
            ("．．/／".as_bytes(), ObjectKind::File),
        ] {
            let key = key_for(&p, &rel(path), kind).unwrap();
            assert_eq!(
                decode_key(&p, &key),
                Decoded::Entry { rel: rel(path), kind, canonical: true },
                "{key}"
            );
        }
        assert_eq!(decode_key(&p, "pre/.replicad/manifest"), Decoded::Reserved);
        assert_eq!(decode_key(&p, "other/a"), Decoded::Foreign);
        assert_eq!(decode_key(&p, "pre/a//b"), Decoded::Foreign);
        assert_eq!(decode_key(&p, "pre/"), Decoded::Foreign);
        // Written by someone else with a quote that rclone's local backend would double.
        assert!(matches!(decode_key(&p, "pre/‛x"), Decoded::Entry { canonical: false, .. }));
    }

    #[test]
    fn a_link_and_its_suffixed_twin_collide() {
        let entries = [
            (OsStr::new("x"), Kind::Symlink),
            (OsStr::new("x.rclonelink"), Kind::File),
            (OsStr::new("y"), Kind::Symlink),
            (OsStr::new("y.rclonelink"), Kind::Fifo),
            (OsStr::new(".replicad"), Kind::Dir),
        ];
        let c = collisions(entries, true);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].remote, ".replicad");
        assert_eq!(c[1].remote, "x.rclonelink");
        assert_eq!(c[1].names, vec![OsString::from("x"), OsString::from("x.rclonelink")]);
        assert!(collisions(entries, false).iter().all(|c| c.remote != ".replicad"));
    }
}
