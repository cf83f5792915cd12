#!/usr/bin/env python3
"""Compare two directory trees the way SPEC.md section 1 defines "exact copy".

    python3 bench/treecmp.py A B [--content]

Used by bench/run.py to check every replica a tool produced, and handy on its
own (for instance to prove that corpus.py is deterministic).

Per path (as bytes, so non-UTF-8 names are compared exactly) it compares:
type; size of regular files; mode & 0o7777 (not for symlinks); mtime in
nanoseconds (symlinks too); uid/gid; symlink target; extended attributes of
every namespace this process can read (user.*, and as root trusted.* and
security.*, e.g. security.capability), POSIX ACLs included (the kernel shows
them as system.posix_acl_access / _default), values byte for byte.  The root
directory itself is compared as ".".

Hard links (issue #10): names of regular files that share an inode in one
tree form a link group; the trees must have the same groups (a group split
into separate files, or names linked in only one tree, are differences).

Directory sizes, atime, ctime and inode numbers themselves are not compared
(the spec does not mirror them).  With --content it also compares the bytes
of every regular file whose metadata already agree.  --summary prints what
each tree holds (link groups, entries with xattrs, ACLs, capabilities).
Exit status: 0 equal, 1 different.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import stat
import sys

KIND = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l",
        stat.S_IFIFO: "p", stat.S_IFSOCK: "s", stat.S_IFCHR: "c",
        stat.S_IFBLK: "b"}
FIELDS = ("type", "size", "mode", "mtime_ns", "uid", "gid", "target", "xattrs")
XATTRS = FIELDS.index("xattrs")


def read_xattrs(path: bytes) -> tuple:
    """Sorted ((name, value), ...) of every attribute we may read, without
    following a symlink.  A filesystem without xattr support has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as e:
            # Removed between list and get, or a namespace we may list but
            # not read: it cannot be compared, so it is left out.
            if e.errno not in (errno.ENODATA, errno.EPERM, errno.EACCES):
                raise
    return tuple(out)


def describe(path: bytes, st: os.stat_result, xattrs: bool = True) -> tuple:
    """The comparable facts about one entry."""
    kind = KIND.get(stat.S_IFMT(st.st_mode), "?")
    size = st.st_size if kind == "f" else None
    mode = None if kind == "l" else stat.S_IMODE(st.st_mode)
    target = os.readlink(path) if kind == "l" else None
    xa = read_xattrs(path) if xattrs else ()
    return (kind, size, mode, st.st_mtime_ns, st.st_uid, st.st_gid, target, xa)


class Snapshot(dict):
    """Relative path (bytes; the root is b".") -> describe() of it, plus
    `inodes`: path -> inode number of each regular file with nlink > 1 (the
    raw material of link groups; other entries cost no memory here), and the
    bytes allocated (st_blocks, each inode once, as du counts) to directories
    and to everything else: directories grow with the names they ever held
    and never shrink, so only the second is expected to match exactly."""

    def __init__(self):
        super().__init__()
        self.inodes = {}
        self.dir_bytes = 0
        self.other_bytes = 0

    def groups(self) -> list:
        """Link groups within the tree: lists of >= 2 names of one inode.
        (A file linked only from outside the tree is not a group.)"""
        by_ino = collections.defaultdict(list)
        for path, ino in self.inodes.items():
            by_ino[ino].append(path)
        return [sorted(g) for g in by_ino.values() if len(g) > 1]


def snapshot(root, xattrs: bool = True) -> Snapshot:
    """Snapshot of the tree at root; xattrs=False skips reading attributes."""
    root = os.fsencode(root)
    out = Snapshot()
    seen = set()  # inodes of linked files already counted in other_bytes
    st = os.lstat(root)
    out[b"."] = describe(root, st, xattrs)
    out.dir_bytes += st.st_blocks * 512
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(root, rel) if rel else root
        with os.scandir(base) as it:
            for entry in it:
                sub = os.path.join(rel, entry.name) if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                facts = describe(entry.path, st, xattrs)
                out[sub] = facts
                if facts[0] == "d":
                    stack.append(sub)
                    out.dir_bytes += st.st_blocks * 512
                    continue
                if facts[0] == "f" and st.st_nlink > 1:
                    if st.st_ino in seen:
                        out.inodes[sub] = st.st_ino
                        continue  # another name of a counted inode
                    seen.add(st.st_ino)
                    out.inodes[sub] = st.st_ino
                out.other_bytes += st.st_blocks * 512
    return out


def summary(snap: Snapshot) -> dict:
    """What a tree holds that an exact copy must keep beyond names and stat."""
    groups = snap.groups()
    ns = collections.Counter()
    for facts in snap.values():
        names = {n for n, _ in facts[XATTRS]}
        if any(n.startswith("user.") for n in names):
            ns["user"] += 1
        if names & {"system.posix_acl_access", "system.posix_acl_default"}:
            ns["acl"] += 1
        if "security.capability" in names:
            ns["capability"] += 1
        if any(n.startswith("trusted.") for n in names):
            ns["trusted"] += 1
        if any(n.startswith("security.") and n != "security.capability"
               for n in names):
            ns["security other"] += 1
    return {"entries": len(snap), "link groups": len(groups),
            "allocated MiB (dirs excluded)": round(snap.other_bytes / 2**20, 1),
            "linked names": sum(len(g) for g in groups),
            **{f"with {k} xattrs": v for k, v in sorted(ns.items())}}


def xattr_diff(a: tuple, b: tuple) -> str:
    """Short text for two differing xattr lists: names, not values."""
    da, db = dict(a), dict(b)
    parts = []
    for label, names in (("missing", da.keys() - db.keys()),
                         ("extra", db.keys() - da.keys()),
                         ("value differs", {n for n in da.keys() & db.keys()
                                            if da[n] != db[n]})):
        if names:
            parts.append(f"{label} {', '.join(sorted(names))}")
    return "xattrs: " + "; ".join(parts)


def compare_links(src: Snapshot, dst: Snapshot, note) -> None:
    """Note each link group that differs: split (or partly missing) in the
    replica, joined with other names, or linked only in the replica."""
    dst_group = {}
    for g in dst.groups():
        for p in g:
            dst_group[p] = g
    flagged = set()
    for g in src.groups():
        got = {tuple(dst_group.get(p, (p,))) for p in g}
        if got != {tuple(g)}:
            flagged.update(g)
            shown = ", ".join(repr(os.fsdecode(p)) for p in g[:3])
            note(f"link group of {len(g)} not the same in replica "
                 f"({len(got)} inode(s) there): {shown}")
    src_paths = {p for g in src.groups() for p in g}
    for g in dst.groups():
        if not src_paths.issuperset(g) and not flagged.intersection(g):
            shown = ", ".join(repr(os.fsdecode(p)) for p in g[:3])
            note(f"linked in replica only: {shown}")


def same_bytes(a: bytes, b: bytes) -> bool:
    """True when the two regular files hold the same bytes."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def compare(src_snap: dict, dst_snap: dict, src_root=None, dst_root=None,
            content: bool = False, limit: int = 20):
    """Return (count, examples): the number of differing paths and a few
    human-readable examples.  content=True needs both roots."""
    count = 0
    examples = []

    def note(msg):
        nonlocal count
        count += 1
        if len(examples) < limit:
            examples.append(msg)

    for path, facts in src_snap.items():
        other = dst_snap.get(path)
        shown = os.fsdecode(path)
        if other is None:
            note(f"missing in replica: {shown!r}")
            continue
        diffs = [f"{FIELDS[i]} {facts[i]!r} != {other[i]!r}" if i != XATTRS
                 else xattr_diff(facts[i], other[i])
                 for i in range(len(FIELDS)) if facts[i] != other[i]]
        if diffs:
            note(f"{shown!r}: " + ", ".join(diffs))
        elif content and facts[0] == "f" and facts[1]:
            a = os.path.join(os.fsencode(src_root), path)
            b = os.path.join(os.fsencode(dst_root), path)
            if not same_bytes(a, b):
                note(f"{shown!r}: content differs")
    for path in dst_snap.keys() - src_snap.keys():
        note(f"extra in replica: {os.fsdecode(path)!r}")
    if isinstance(src_snap, Snapshot) and isinstance(dst_snap, Snapshot):
        compare_links(src_snap, dst_snap, note)
    return count, examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--content", action="store_true",
                    help="also compare file bytes")
    ap.add_argument("--no-xattrs", action="store_true",
                    help="do not read or compare extended attributes and ACLs")
    ap.add_argument("--summary", action="store_true",
                    help="print link groups and xattr counts of both trees")
    args = ap.parse_args(argv)
    a = snapshot(args.a, not args.no_xattrs)
    b = snapshot(args.b, not args.no_xattrs)
    if args.summary:
        print(f"{args.a}: {summary(a)}")
        print(f"{args.b}: {summary(b)}")
    count, examples = compare(a, b, args.a, args.b, args.content)
    for line in examples:
        print(line)
    if count:
        print(f"{count} differing paths", file=sys.stderr)
        return 1
    print("trees match" + (" (content too)" if args.content else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
