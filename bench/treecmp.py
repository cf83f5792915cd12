#!/usr/bin/env python3
"""Compare two directory trees the way SPEC.md section 1 defines "exact copy".

    python3 bench/treecmp.py A B [--content]

Used by bench/run.py to check every replica a tool produced, and handy on its
own (for instance to prove that corpus.py is deterministic).

Per path (as bytes, so non-UTF-8 names are compared exactly) it compares:
type; size of regular files; mode & 0o7777 (not for symlinks); mtime in
nanoseconds (symlinks too); uid/gid; symlink target.  The root directory
itself is compared as ".".  Directory sizes, atime, ctime and inode numbers
are not compared (the spec does not mirror them).  With --content it also
compares the bytes of every regular file whose metadata already agree.
Exit status: 0 equal, 1 different.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

KIND = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l",
        stat.S_IFIFO: "p", stat.S_IFSOCK: "s", stat.S_IFCHR: "c",
        stat.S_IFBLK: "b"}
FIELDS = ("type", "size", "mode", "mtime_ns", "uid", "gid", "target")


def describe(path: bytes, st: os.stat_result) -> tuple:
    """The comparable facts about one entry."""
    kind = KIND.get(stat.S_IFMT(st.st_mode), "?")
    size = st.st_size if kind == "f" else None
    mode = None if kind == "l" else stat.S_IMODE(st.st_mode)
    target = os.readlink(path) if kind == "l" else None
    return (kind, size, mode, st.st_mtime_ns, st.st_uid, st.st_gid, target)


def snapshot(root) -> dict:
    """Map relative path (bytes; the root is b".") to describe() of it."""
    root = os.fsencode(root)
    out = {b".": describe(root, os.lstat(root))}
    stack = [b""]
    while stack:
        rel = stack.pop()
        base = os.path.join(root, rel) if rel else root
        with os.scandir(base) as it:
            for entry in it:
                sub = os.path.join(rel, entry.name) if rel else entry.name
                facts = describe(entry.path, entry.stat(follow_symlinks=False))
                out[sub] = facts
                if facts[0] == "d":
                    stack.append(sub)
    return out


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
        diffs = [f"{FIELDS[i]} {facts[i]!r} != {other[i]!r}"
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
    return count, examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--content", action="store_true",
                    help="also compare file bytes")
    args = ap.parse_args(argv)
    count, examples = compare(snapshot(args.a), snapshot(args.b),
                              args.a, args.b, args.content)
    for line in examples:
        print(line)
    if count:
        print(f"{count} differing paths", file=sys.stderr)
        return 1
    print("trees match" + (" (content too)" if args.content else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
