//! `RelPath`: a path relative to the SOURCE and REPLICA roots, made only of normal
//! components (no `..`, no root, no `.`), kept as raw bytes (`OsStr`) and displayed with an
//! escaping formatter so non-UTF-8 names are never lost or confused in logs.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A path relative to the roots. The empty path is the root itself.
///
/// Constructed only from normal components, so joining it onto a root can never climb out.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(PathBuf);

impl RelPath {
    /// The root itself.
    pub fn root() -> Self {
        RelPath(PathBuf::new())
    }

    /// Builds a `RelPath` from a relative path; `None` if it has `..`, a root, or a prefix.
    /// `.` components are dropped.
    pub fn new(path: &Path) -> Option<Self> {
        let mut out = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => out.push(name),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(RelPath(out))
    }

    /// The part of `path` below `root`, if `path` lies under (or is) `root`.
    pub fn under(root: &Path, path: &Path) -> Option<Self> {
        path.strip_prefix(root).ok().and_then(RelPath::new)
    }

    /// This path with one more component. `name` must be a single file name (no `/`).
    pub fn join(&self, name: &OsStr) -> RelPath {
        debug_assert!(!name.as_encoded_bytes().contains(&b'/'), "join takes one name");
        RelPath(self.0.join(name))
    }

    /// Appends one name in place (amortised, unlike `join`, which copies the whole path).
    pub fn push(&mut self, name: &OsStr) {
        debug_assert!(!name.as_encoded_bytes().contains(&b'/'), "push takes one name");
        self.0.push(name);
    }

    /// True for the root itself.
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The containing directory; `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        if self.is_root() {
            None
        } else {
            Some(RelPath(self.0.parent().map(Path::to_path_buf).unwrap_or_default()))
        }
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&OsStr> {
        self.0.file_name()
    }

    /// The components, outermost first.
    pub fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.0.iter()
    }

    /// How many components deep this path is (the root is 0).
    pub fn depth(&self) -> usize {
        self.0.iter().count()
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0.starts_with(&other.0)
    }

    /// The path as a `Path` (relative); use only for matching and joining onto a root.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// `root` joined with this path (for messages and for tools that need a full path).
    pub fn under_root(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

impl fmt::Display for RelPath {
    /// Escapes control characters, backslashes and invalid UTF-8 bytes (`\xff`), so every
    /// distinct name prints distinctly. The root prints as `.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        write_escaped(f, self.0.as_os_str())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath(\"{self}\")")
    }
}

/// Displays any `OsStr`/`Path` with the same escaping as `RelPath` (for absolute paths in
/// start-up errors).
pub struct Escaped<'a>(pub &'a OsStr);

impl<'a> Escaped<'a> {
    /// Wraps a path for escaped display.
    pub fn path(path: &'a Path) -> Self {
        Escaped(path.as_os_str())
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

/// Characters that reorder what a terminal shows (Unicode bidirectional controls) or that
/// some viewers take for line breaks (U+2028, U+2029): a name holding them could make a
/// log line read differently from what it says.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{061c}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

fn write_escaped(f: &mut fmt::Formatter<'_>, os: &OsStr) -> fmt::Result {
    for chunk in os.as_encoded_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' || is_bidi_control(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        for byte in chunk.invalid() {
            write!(f, "\\x{byte:02x}")?;
        }
    }
    Ok(())
}

impl From<RelPath> for OsString {
    fn from(p: RelPath) -> OsString {
        p.0.into_os_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn refuses_paths_that_climb_or_are_absolute() {
        assert!(RelPath::new(Path::new("../x")).is_none());
        assert!(RelPath::new(Path::new("a/../../x")).is_none());
        assert!(RelPath::new(Path::new("/etc")).is_none());
        assert_eq!(RelPath::new(Path::new("./a/./b")).map(|p| p.to_string()), Some("a/b".into()));
    }

    #[test]
    fn display_escapes_invalid_utf8_and_controls() {
        let name = OsStr::from_bytes(b"caf\xc3\xa9-\xff\xfe-tab\t\\");
        let p = RelPath::root().join(name);
        assert_eq!(p.to_string(), "café-\\xff\\xfe-tab\\t\\\\");
        assert_eq!(RelPath::root().to_string(), ".");
    }

    #[test]
    fn display_escapes_bidi_controls() {
        let p = RelPath::root().join(OsStr::new("evil\u{202e}txt.exe\u{2066}"));
        assert_eq!(p.to_string(), "evil\\u{202e}txt.exe\\u{2066}");
    }

    #[test]
    fn parent_and_depth() {
        let p = RelPath::new(Path::new("a/b/c")).unwrap_or_default();
        assert_eq!(p.depth(), 3);
        assert_eq!(p.parent().map(|p| p.to_string()), Some("a/b".into()));
        assert_eq!(RelPath::new(Path::new("a")).and_then(|p| p.parent()), Some(RelPath::root()));
        assert_eq!(RelPath::root().parent(), None);
        assert!(p.starts_with(&RelPath::new(Path::new("a")).unwrap_or_default()));
    }

    #[test]
    fn under_strips_the_root() {
        let p = RelPath::under(Path::new("/src"), Path::new("/src/a/b"));
        assert_eq!(p.map(|p| p.to_string()), Some("a/b".into()));
        assert_eq!(RelPath::under(Path::new("/src"), Path::new("/other")), None);
    }
}
