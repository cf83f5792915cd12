#!/usr/bin/env python3
"""Apply seeded random changes to a tree (for the "1% changed" benchmark).

    python3 bench/mutate.py TREE --seed 2 --percent 1
    python3 bench/mutate.py TREE --seed 2 --count 50 -v

Changes, each picked at random with these weights:
  modify (20)   same size, new bytes: a whole file up to 1 MiB, else 64 KiB of it
  append (15)   1 B - 16 KiB at the end
  truncate (10) to a random shorter size
  create (15)   a new 0-16 KiB file in a random directory
  delete (10)   a file (sometimes a symlink)
  rename_file (10)  in the same directory or into another one
  rename_dir (5)    a small directory (<= 50 entries below it), same or other parent
  chmod (7.5)   a file or directory gets a different mode
  touch (7.5)   mtime only (file, directory or symlink)
With --exact (for corpus.py's exact flavour, issue #10) also:
  link (5)      a new hard link to a file, in its directory or another one
  xattr (5)     a file or directory gets a user.* attribute set, changed or
                removed, or (one time in four) a new POSIX ACL; its mtime
                stays, so only a tool that compares attributes sees it

--percent P applies changes until they touched about P% of the tree's regular
files (a renamed directory counts every file under it); --count N applies
exactly N changes.

Deterministic: the same tree and seed give the same result, mtimes included.
Every changed file gets a seeded mtime in 2025-06..12 (never within the same
second as the corpus's, which ends at 2025-01-01, so rsync's whole-second
quick check sees every change), and every directory whose entries changed
gets a seeded mtime too; a renamed directory keeps its own.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import stat
import sys

import corpus

KIB = 1024
MIB = 1024 * KIB
POOL_SIZE = 4 * MIB

OPS = (("modify", 20), ("append", 15), ("truncate", 10), ("create", 15),
       ("delete", 10), ("rename_file", 10), ("rename_dir", 5),
       ("chmod", 7.5), ("touch", 7.5))
# Added with --exact; appended, so the plain run's draws are unchanged.
EXACT_OPS = (("link", 5), ("xattr", 5))
FILE_MODES = (0o644, 0o600, 0o755, 0o640, 0o664, 0o444)
DIR_MODES = (0o755, 0o750, 0o700, 0o775)
T_MIN = 1_748_736_000  # 2025-06-01
T_MAX = 1_767_139_200  # 2025-12-31
MAX_DIR_ENTRIES = 50


def listing(root: str):
    """Sorted lists of regular files, symlinks and directories (not the
    root), as paths relative to root."""
    files, links, dirs = [], [], []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sub = os.path.join(rel, e.name)
            mode = e.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                dirs.append(sub)
                stack.append(sub)
            elif stat.S_ISREG(mode):
                files.append(sub)
            elif stat.S_ISLNK(mode):
                links.append(sub)
    return sorted(files), sorted(links), sorted(dirs)


class Mutator:
    """Holds the tree's current lists and applies one change at a time."""

    def __init__(self, root: str, seed: int, verbose: bool = False,
                 exact: bool = False):
        self.root = root
        self.ops = OPS + (EXACT_OPS if exact else ())
        self.rng = random.Random(f"replicad-mutate/{seed}")
        self.seed = seed
        self.pool = memoryview(self.rng.randbytes(POOL_SIZE))
        self.files, self.links, self.dirs = listing(root)
        self.counter = 0
        self.verbose = verbose
        self.done = collections.Counter()

    # -- helpers ---------------------------------------------------------
    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def new_mtime(self) -> int:
        return (self.rng.randrange(T_MIN, T_MAX) * 1_000_000_000
                + self.rng.randrange(1_000_000_000))

    def set_mtime(self, rel: str, follow: bool = True):
        mt = self.new_mtime()
        os.utime(self.p(rel), ns=(mt, mt), follow_symlinks=follow)

    def dir_changed(self, rel_dir: str):
        """A directory's entries changed: give it a seeded mtime."""
        self.set_mtime(rel_dir)

    def pick(self, lst: list, want_nonempty: bool = False):
        """Index and path of a live entry of lst (stale ones are dropped:
        they were moved along with a renamed directory)."""
        for _ in range(1000):
            if not lst:
                return None, None
            i = self.rng.randrange(len(lst))
            try:
                st = os.lstat(self.p(lst[i]))
            except FileNotFoundError:
                lst[i] = lst[-1]
                lst.pop()
                continue
            if want_nonempty and st.st_size == 0:
                continue
            return i, lst[i]
        return None, None

    def pick_dir(self) -> str:
        """A live directory, or the root ("")."""
        if self.rng.random() < 0.05:
            return ""
        _, d = self.pick(self.dirs)
        return d or ""

    def fresh_name(self, prefix: str, ext: str = "") -> str:
        self.counter += 1
        return f"{prefix}_{self.seed}_{self.counter}{ext}"

    def write_at(self, rel: str, offset: int, size: int):
        """Overwrite size bytes at offset with pool bytes (even 0o444 files)."""
        path = self.p(rel)
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if not os.access(path, os.W_OK):
            os.chmod(path, mode | 0o200)
        fd = os.open(path, os.O_WRONLY)
        try:
            while size:
                n = min(size, MIB)
                src = self.rng.randrange(POOL_SIZE - n + 1)
                os.pwrite(fd, self.pool[src:src + n], offset)
                offset += n
                size -= n
        finally:
            os.close(fd)
        if stat.S_IMODE(os.lstat(path).st_mode) != mode:
            os.chmod(path, mode)

    # -- the changes; each returns how many files it touched (0: skipped) --
    def modify(self) -> int:
        _, rel = self.pick(self.files, want_nonempty=True)
        if rel is None:
            return 0
        size = os.lstat(self.p(rel)).st_size
        if size <= MIB:
            self.write_at(rel, 0, size)
        else:
            n = 64 * KIB
            self.write_at(rel, self.rng.randrange(size - n + 1), n)
        self.set_mtime(rel)
        return 1

    def append(self) -> int:
        _, rel = self.pick(self.files)
        if rel is None:
            return 0
        size = os.lstat(self.p(rel)).st_size
        self.write_at(rel, size, self.rng.randrange(1, 16 * KIB + 1))
        self.set_mtime(rel)
        return 1

    def truncate(self) -> int:
        _, rel = self.pick(self.files, want_nonempty=True)
        if rel is None:
            return 0
        size = os.lstat(self.p(rel)).st_size
        os.truncate(self.p(rel), self.rng.randrange(size))
        self.set_mtime(rel)
        return 1

    def create(self) -> int:
        d = self.pick_dir()
        rel = os.path.join(d, self.fresh_name("new", ".dat"))
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        self.write_at(rel, 0, int(16 * KIB * self.rng.random() ** 2))
        self.set_mtime(rel)
        self.dir_changed(d)
        self.files.append(rel)
        return 1

    def delete(self) -> int:
        lst = self.links if self.links and self.rng.random() < 0.1 else self.files
        i, rel = self.pick(lst)
        if rel is None:
            return 0
        os.unlink(self.p(rel))
        lst[i] = lst[-1]
        lst.pop()
        self.dir_changed(os.path.dirname(rel))
        return 1

    def rename_file(self) -> int:
        i, rel = self.pick(self.files)
        if rel is None:
            return 0
        old_dir = os.path.dirname(rel)
        new_dir = old_dir if self.rng.random() < 0.5 else self.pick_dir()
        ext = os.path.splitext(rel)[1][:8]
        new = os.path.join(new_dir, self.fresh_name("ren", ext))
        os.rename(self.p(rel), self.p(new))
        self.files[i] = new
        self.dir_changed(old_dir)
        if new_dir != old_dir:
            self.dir_changed(new_dir)
        return 1

    def small_subtree_files(self, rel: str):
        """Number of regular files under rel, or None past MAX_DIR_ENTRIES."""
        entries = files = 0
        for base, dnames, fnames in os.walk(self.p(rel)):
            entries += len(dnames) + len(fnames)
            if entries > MAX_DIR_ENTRIES:
                return None
            files += sum(1 for f in fnames
                         if stat.S_ISREG(os.lstat(os.path.join(base, f)).st_mode))
        return files

    def rename_dir(self) -> int:
        for _ in range(50):
            i, rel = self.pick(self.dirs)
            if rel is None:
                return 0
            nfiles = self.small_subtree_files(rel)
            if nfiles is not None:
                break
        else:
            return 0
        old_parent = os.path.dirname(rel)
        new_parent = old_parent
        if self.rng.random() < 0.5:
            cand = self.pick_dir()
            if cand != rel and not cand.startswith(rel + "/"):
                new_parent = cand
        new = os.path.join(new_parent, self.fresh_name("rdir"))
        mt = os.lstat(self.p(rel)).st_mtime_ns
        os.rename(self.p(rel), self.p(new))
        os.utime(self.p(new), ns=(mt, mt))  # a rename keeps the dir's mtime
        self.dirs[i] = new
        self.dir_changed(old_parent)
        if new_parent != old_parent:
            self.dir_changed(new_parent)
        return max(1, nfiles)

    def chmod(self) -> int:
        if self.rng.random() < 0.2:
            _, rel = self.pick(self.dirs)
            modes = DIR_MODES
        else:
            _, rel = self.pick(self.files)
            modes = FILE_MODES
        if rel is None:
            return 0
        cur = stat.S_IMODE(os.lstat(self.p(rel)).st_mode)
        os.chmod(self.p(rel), self.rng.choice([m for m in modes if m != cur]))
        return 1

    def touch(self) -> int:
        r = self.rng.random()
        lst = self.dirs if r < 0.1 else self.links if r < 0.2 else self.files
        _, rel = self.pick(lst)
        if rel is None:
            return 0
        self.set_mtime(rel, follow=False)
        return 1

    def link(self) -> int:
        _, rel = self.pick(self.files)
        if rel is None:
            return 0
        d = os.path.dirname(rel) if self.rng.random() < 0.5 else self.pick_dir()
        new = os.path.join(d, self.fresh_name("lnk", os.path.splitext(rel)[1][:8]))
        os.link(self.p(rel), self.p(new))
        self.files.append(new)
        self.dir_changed(d)
        return 1

    def xattr(self) -> int:
        lst = self.dirs if self.rng.random() < 0.2 else self.files
        _, rel = self.pick(lst)
        if rel is None:
            return 0
        path = self.p(rel)
        if self.rng.random() < 0.25:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            os.setxattr(path, "system.posix_acl_access",
                        corpus.acl_value(self.rng, mode))
            return 1
        have = sorted(n for n in os.listxattr(path) if n.startswith("user."))
        if have and self.rng.random() < 0.3:
            os.removexattr(path, self.rng.choice(have))
        else:
            name = self.rng.choice(have + [f"user.mut.{self.counter}"])
            self.counter += 1
            os.setxattr(path, name, self.rng.randbytes(self.rng.randint(1, 64)))
        return 1

    # -- driver ----------------------------------------------------------
    def step(self) -> int:
        names = [n for n, _ in self.ops]
        op = self.rng.choices(names, [w for _, w in self.ops])[0]
        touched = getattr(self, op)()
        if touched:
            self.done[op] += 1
            if self.verbose:
                print(f"{op} ({touched})")
        return touched


def mutate(root: str, seed: int, percent: float = None, count: int = None,
           verbose: bool = False, exact: bool = False) -> dict:
    """Apply the changes; returns a summary (ops per kind, files touched)."""
    m = Mutator(root, seed, verbose, exact)
    nfiles = len(m.files)
    touched = ops = 0
    if count is not None:
        while ops < count:
            t = m.step()
            touched += t
            ops += 1 if t else 0
    else:
        target = max(1, round(nfiles * percent / 100))
        while touched < target:
            touched += m.step()
    return {"files_before": nfiles, "touched": touched,
            "ops": dict(sorted(m.done.items()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree")
    ap.add_argument("--seed", type=int, default=2)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--percent", type=float, default=1.0,
                   help="touch about this %% of the files (default 1)")
    g.add_argument("--count", type=int, help="apply exactly this many changes")
    ap.add_argument("--exact", action="store_true",
                    help="also add hard links and change xattrs/ACLs")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    s = mutate(args.tree, args.seed, args.percent, args.count, args.verbose,
               args.exact)
    print(f"mutate seed={args.seed}: {sum(s['ops'].values())} changes touching "
          f"{s['touched']} of {s['files_before']} files: {s['ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
