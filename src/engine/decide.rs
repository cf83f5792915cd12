//! Deciding, purely: what one REPLICA entry needs to match SOURCE's, from the two `statx`
//! results and the rules (`decide`), and the decided unit of work the walker hands to the
//! applier (`Item`). No I/O here: the table tests below pin every case. The `Item` type
//! lives with the decision, not in `walk` or `apply`, so those two never import each other.

use std::ffi::CString;

use crate::entry::{AttrDiff, Entry, Kind, MtimeStore};

/// What one entry of REPLICA needs to match SOURCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Already identical.
    Nothing,
    /// Present in REPLICA only: remove it (recursively for a directory).
    Remove,
    /// Missing in REPLICA: create it (copy a file).
    Create,
    /// Different type, symlink target or device number: replace it.
    Replace,
    /// A file whose size or mtime differ: copy the content again.
    Update,
    /// `--checksum`: size and mtime agree, the content must be compared by MD5.
    CompareContent,
    /// Only metadata differ.
    Attrs(AttrDiff),
    /// SOURCE has a directory: make sure REPLICA has one, then reconcile its children.
    Descend,
    /// A type that is not mirrored (sockets).
    Skip,
}

/// Rules that shape a decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules {
    /// Owners are compared (root / CAP_CHOWN).
    pub owners: bool,
    /// Equal size and mtime must be confirmed by MD5.
    pub checksum: bool,
    /// What REPLICA's filesystem can store of a modification time.
    pub mtimes: MtimeStore,
    /// Hard links are mirrored: a replica file may have as many names as SOURCE's.
    pub hard_links: bool,
}

/// Decides what the replica entry needs. `same_link_target` is asked only when both sides
/// are symlinks (reading a link costs a syscall per side).
pub fn decide(
    src: Option<&Entry>,
    dst: Option<&Entry>,
    rules: Rules,
    same_link_target: impl FnOnce() -> bool,
) -> Action {
    let (src, dst) = match (src, dst) {
        (None, None) => return Action::Nothing,
        (None, Some(_)) => return Action::Remove,
        (Some(s), _) if s.kind == Kind::Dir => return Action::Descend,
        (Some(s), _) if s.kind == Kind::Socket => return Action::Skip,
        (Some(_), None) => return Action::Create,
        (Some(s), Some(d)) => (s, d),
    };
    if src.kind != dst.kind {
        return Action::Replace;
    }
    match src.kind {
        Kind::File
            if !src.same_size_and_mtime(dst, &rules.mtimes) || foreign_content(src, dst, rules) =>
        {
            Action::Update
        }
        Kind::File if rules.checksum => Action::CompareContent,
        Kind::Symlink if !same_link_target() => Action::Replace,
        Kind::CharDevice | Kind::BlockDevice if src.rdev != dst.rdev => Action::Replace,
        Kind::Dir => Action::Descend,
        _ => match src.attr_diff(dst, rules.owners, &rules.mtimes) {
            diff if diff.is_empty() => Action::Nothing,
            // Someone else's inode, maybe with a name outside REPLICA: replace, never change.
            _ if foreign_content(src, dst, rules) => Action::Replace,
            diff => Action::Attrs(diff),
        },
    }
}

/// A replica file whose content someone other than replicad may have put there: its inode
/// has more names than SOURCE's link group accounts for (perhaps one outside REPLICA), or
/// another owner than SOURCE's file. Its attributes are never changed in place — that
/// could hand SOURCE's owner or setuid bits to that content, or change a file outside
/// REPLICA — it is copied again instead. Setuid/setgid bits are never added in place to
/// an inode with a second name at all.
pub(super) fn foreign_content(src: &Entry, dst: &Entry, rules: Rules) -> bool {
    let names = if rules.hard_links && src.kind == Kind::File { src.nlink.max(1) } else { 1 };
    let setid_to_shared = dst.nlink > 1 && src.mode & 0o6000 != 0 && src.mode != dst.mode;
    dst.nlink > names
        || setid_to_shared
        || (rules.owners && (src.uid, src.gid) != (dst.uid, dst.gid))
}

pub(super) struct Item {
    pub(super) name: CString,
    pub(super) src: Option<Entry>,
    pub(super) dst: Option<Entry>,
    pub(super) action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Time;

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            size: 10,
            blocks: 8,
            mtime: Time { sec: 100, nsec: 5 },
            ctime: Time { sec: 100, nsec: 5 },
            uid: 1,
            gid: 1,
            dev: 1,
            ino: 1,
            nlink: 1,
            rdev: 0,
            mount_root: false,
        }
    }

    fn with(kind: Kind, change: impl FnOnce(&mut Entry)) -> Entry {
        let mut e = entry(kind);
        change(&mut e);
        e
    }

    /// name, source entry, replica entry, rules, "same link target", expected action.
    type Case = (&'static str, Option<Entry>, Option<Entry>, Rules, bool, Action);

    #[test]
    fn decide_table() {
        let file = entry(Kind::File);
        let dir = entry(Kind::Dir);
        let link = entry(Kind::Symlink);
        let fifo = entry(Kind::Fifo);
        let dev = with(Kind::CharDevice, |e| e.rdev = 7);
        let exact = MtimeStore::default();
        let plain = Rules { owners: true, checksum: false, mtimes: exact, hard_links: false };
        let checksum = Rules { checksum: true, ..plain };
        let no_owners = Rules { owners: false, ..plain };
        let links = Rules { hard_links: true, ..plain };
        let linked = |n: u64| with(Kind::File, |e| e.nlink = n);
        let setuid = with(Kind::File, |e| {
            e.nlink = 2;
            e.mode = 0o4755
        });
        let mode_only = AttrDiff { mode: true, ..AttrDiff::default() };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing on either side", None, None, plain, true, Action::Nothing),
            ("replica only: remove", None, Some(file.clone()), plain, true, Action::Remove),
            ("replica-only dir: remove", None, Some(dir.clone()), plain, true, Action::Remove),
            ("new file: create", Some(file.clone()), None, plain, true, Action::Create),
            ("source dir: descend", Some(dir.clone()), None, plain, true, Action::Descend),
            ("dir over a file: descend (replaces)", Some(dir.clone()), Some(file.clone()), plain, true, Action::Descend),
            ("socket: skip", Some(entry(Kind::Socket)), None, plain, true, Action::Skip),
            ("identical file", Some(file.clone()), Some(file.clone()), plain, true, Action::Nothing),
            ("size differs: update", Some(file.clone()), Some(with(Kind::File, |e| e.size = 11)), plain, true, Action::Update),
            ("mtime differs by 1 ns: update", Some(file.clone()), Some(with(Kind::File, |e| e.mtime.nsec = 6)), plain, true, Action::Update),
            ("--checksum confirms equal stamps", Some(file.clone()), Some(file.clone()), checksum, true, Action::CompareContent),
            ("mode differs: attrs", Some(file.clone()), Some(with(Kind::File, |e| e.mode = 0o600)), plain, true, Action::Attrs(mode_only)),
            ("file of another owner: copied again, never chowned in place", Some(file.clone()), Some(with(Kind::File, |e| e.uid = 2)), plain, true, Action::Update),
            ("file of another group: copied again", Some(file.clone()), Some(with(Kind::File, |e| e.gid = 2)), plain, true, Action::Update),
            ("owner ignored when we may not chown", Some(file.clone()), Some(with(Kind::File, |e| e.uid = 2)), no_owners, true, Action::Nothing),
            ("fifo of another owner: replaced, never chowned in place", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.uid = 2)), plain, true, Action::Replace),
            ("fifo of another owner, owners not mirrored: nothing", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.uid = 2)), no_owners, true, Action::Nothing),
            ("fifo mode differs, ours: attrs", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.mode = 0o600)), plain, true, Action::Attrs(mode_only)),
            ("hard-linked replica file: copied again even if equal", Some(file.clone()), Some(with(Kind::File, |e| e.nlink = 2)), plain, true, Action::Update),
            ("hard-linked fifo with a mode to fix: replace", Some(fifo.clone()), Some(with(Kind::Fifo, |e| { e.nlink = 2; e.mode = 0o600 })), plain, true, Action::Replace),
            ("link group as large as SOURCE's: nothing", Some(linked(2)), Some(linked(2)), links, true, Action::Nothing),
            ("link group smaller than SOURCE's (names outside): nothing", Some(linked(3)), Some(linked(2)), links, true, Action::Nothing),
            ("more names than SOURCE's group: copied again", Some(linked(2)), Some(linked(3)), links, true, Action::Update),
            ("linked, mode differs: attrs in place", Some(linked(2)), Some(with(Kind::File, |e| { e.nlink = 2; e.mode = 0o600 })), links, true, Action::Attrs(mode_only)),
            ("setuid never added in place to a shared inode", Some(setuid.clone()), Some(linked(2)), links, true, Action::Update),
            ("a fifo's second name is never a group", Some(with(Kind::Fifo, |e| e.nlink = 2)), Some(with(Kind::Fifo, |e| { e.nlink = 2; e.mode = 0o600 })), links, true, Action::Replace),
            ("hard-linked fifo already right: nothing", Some(fifo.clone()), Some(with(Kind::Fifo, |e| e.nlink = 2)), plain, true, Action::Nothing),
            ("file over a symlink: replace", Some(file.clone()), Some(link.clone()), plain, true, Action::Replace),
            ("fifo over a file: replace", Some(fifo.clone()), Some(file.clone()), plain, true, Action::Replace),
            ("symlink target differs: replace", Some(link.clone()), Some(link.clone()), plain, false, Action::Replace),
            ("same symlink: nothing", Some(link.clone()), Some(link.clone()), plain, true, Action::Nothing),
            ("symlink mode is never compared", Some(link.clone()), Some(with(Kind::Symlink, |e| e.mode = 0o777)), plain, true, Action::Nothing),
            ("device number differs: replace", Some(dev.clone()), Some(with(Kind::CharDevice, |e| e.rdev = 8)), plain, true, Action::Replace),
            ("same fifo: nothing", Some(fifo.clone()), Some(fifo.clone()), plain, true, Action::Nothing),
        ];
        for (name, src, dst, rules, same_target, want) in cases {
            let got = decide(src.as_ref(), dst.as_ref(), rules, || same_target);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn link_targets_are_read_only_when_both_sides_are_links() {
        let file = entry(Kind::File);
        let asked = std::cell::Cell::new(false);
        decide(Some(&file), Some(&file), Rules::default(), || {
            asked.set(true);
            true
        });
        assert!(!asked.get(), "reading links costs syscalls; only symlink pairs need it");
    }
}
