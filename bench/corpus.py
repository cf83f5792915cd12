#!/usr/bin/env python3
"""Deterministic benchmark corpus generator for replicad.

    python3 bench/corpus.py --profile small --seed 1 /work/benchdata/small/src

Writes a directory tree whose every byte and attribute follows from
(profile, seed): the same pair gives a byte-identical tree (names, types,
content, symlink targets, modes, mtimes to the nanosecond and, when run as
root, owners).  Directory sizes and inode numbers are the filesystem's own.

What a tree holds (see PROFILES for the numbers):
  * nested directories of varying depth and fan-out (a random recursive tree
    with a bias towards deep chains), some of them empty;
  * regular files, most 0-16 KiB, some 1 MiB, a few large (64-256 MiB in the
    default profile), spread over the directories with a heavy-tailed weight
    so that a few directories are very wide;
  * symbolic links: relative ones to files and directories of the tree, some
    dangling, a few absolute;
  * a couple of FIFOs;
  * varied permission bits (including setuid/setgid), owners (root only),
    and mtimes with nanoseconds, whole seconds and millisecond precision;
  * names with spaces, UTF-8 and a few non-UTF-8 bytes (never a newline).

Speed: content is sliced out of one seeded pool of random bytes (8 MiB) at
seeded offsets, so writing is bound by the filesystem, not by the PRNG.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import stat
import sys
import time
from dataclasses import dataclass

# Bump when the generator's output for a given (profile, seed) changes:
# bench/run.py uses it to decide whether a cached corpus is still valid.
CORPUS_VERSION = 1

KIB = 1024
MIB = 1024 * KIB
POOL_SIZE = 8 * MIB
CHUNK = 1 * MIB


@dataclass(frozen=True)
class Profile:
    """The shape of one corpus."""

    files: int          # regular files, all classes together
    dirs: int           # directories besides the root and the empty ones
    empty_dirs: int     # extra leaf directories that stay empty
    medium: int         # files of MEDIUM_SIZE
    large: tuple        # sizes of the large files (jittered a little)
    small_max: int      # small files are 0..small_max bytes
    symlinks: int
    fifos: int
    max_depth: int


MEDIUM_SIZE = 1 * MIB

PROFILES = {
    # ~10,000 files, ~200 MiB: the default mix scaled down by 10.
    "small": Profile(
        files=10_000, dirs=600, empty_dirs=30, medium=80,
        large=(64 * MIB // 10, 128 * MIB // 10, 192 * MIB // 10, 256 * MIB // 10),
        small_max=16 * KIB, symlinks=100, fifos=1, max_depth=16,
    ),
    # 100,000 files, ~2 GiB: the size named by SPEC.md section 5.
    "default": Profile(
        files=100_000, dirs=6_000, empty_dirs=300, medium=800,
        large=(64 * MIB, 128 * MIB, 192 * MIB, 256 * MIB),
        small_max=16 * KIB, symlinks=1_000, fifos=2, max_depth=24,
    ),
    # 1,000,000 small files: a stress test for walking, not for copying.
    "huge": Profile(
        files=1_000_000, dirs=50_000, empty_dirs=2_000, medium=0, large=(),
        small_max=4 * KIB, symlinks=5_000, fifos=2, max_depth=24,
    ),
}

WORDS = (
    "alpha bravo cache data delta echo fig gamma hotel index juliet kilo lib "
    "mango node oscar papa queue romeo src tango util vendor whisky xray yank "
    "zulu build docs test img assets conf logs tmp var share include bin"
).split()
FILE_EXTS = ("", ".txt", ".rs", ".py", ".json", ".log", ".dat", ".bin", ".md",
             ".c", ".h", ".png", ".tar.gz", ".o")
# Unusual names, used now and then; each still gets a unique numeric suffix.
ODD_STEMS = ("with space", "ünïcödé", "日本語", "-leading-dash", ".hidden",
             "semi;colon", "quote'd", "x" * 180,
             os.fsdecode(b"latin1-caf\xe9"), os.fsdecode(b"bad-\xff\xfe"))

FILE_MODES = ((0o644, 700), (0o600, 80), (0o755, 100), (0o444, 40),
              (0o640, 40), (0o664, 30), (0o4755, 5), (0o2755, 5))
DIR_MODES = ((0o755, 850), (0o700, 60), (0o750, 50), (0o775, 30), (0o2775, 10))
OWNERS = (((0, 0), 880), ((1000, 1000), 100), ((65534, 65534), 20))

# mtimes between 2015-01-01 and 2025-01-01 (UTC).
T_MIN = 1_420_070_400
T_MAX = 1_735_689_600


def weighted(rng: random.Random, table):
    """Pick one value from ((value, weight), ...)."""
    values = [v for v, _ in table]
    weights = [w for _, w in table]
    return rng.choices(values, weights)[0]


def random_mtime_ns(rng: random.Random) -> int:
    """An mtime with full ns (70%), whole seconds (20%) or ms precision (10%)."""
    sec = rng.randrange(T_MIN, T_MAX)
    r = rng.random()
    if r < 0.7:
        ns = rng.randrange(1_000_000_000)
    elif r < 0.9:
        ns = 0
    else:
        ns = rng.randrange(1000) * 1_000_000
    return sec * 1_000_000_000 + ns


def make_name(rng: random.Random, index: int, is_dir: bool) -> str:
    """A name unique within the tree thanks to its index suffix."""
    if rng.random() < 0.01:
        stem = rng.choice(ODD_STEMS)
    else:
        stem = rng.choice(WORDS)
    if is_dir:
        return f"{stem}{index}"
    return f"{stem}_{index:x}{rng.choice(FILE_EXTS)}"


def plan_dirs(rng: random.Random, prof: Profile):
    """Return (dirs, depth, empty): relative paths, their depths, empty flags.

    A random recursive tree (each new directory under a uniformly chosen
    existing one) with a 25% chance to extend the last chain instead, which
    gives both bushy and deep parts.  Index 0 is the root ("").
    """
    dirs = [""]
    depth = [0]
    last = 0
    for i in range(prof.dirs):
        parent = last if rng.random() < 0.25 else rng.randrange(len(dirs))
        if depth[parent] >= prof.max_depth:
            parent = rng.randrange(len(dirs))
            if depth[parent] >= prof.max_depth:
                parent = 0
        dirs.append(os.path.join(dirs[parent], make_name(rng, i, True)))
        depth.append(depth[parent] + 1)
        last = len(dirs) - 1
    empty = [False] * len(dirs)
    for i in range(prof.empty_dirs):
        parent = rng.randrange(len(dirs))
        dirs.append(os.path.join(dirs[parent], f"empty{i}"))
        depth.append(depth[parent] + 1)
        empty.append(True)
    return dirs, depth, empty


def file_sizes(rng: random.Random, prof: Profile):
    """Sizes of all files, in creation order (a list of ints)."""
    sizes = []
    for _ in range(prof.files):
        if rng.random() < 0.05:
            sizes.append(0)
        else:
            # Skewed towards small: mean about small_max / 3.
            sizes.append(int(prof.small_max * rng.random() ** 2))
    special = rng.sample(range(prof.files), prof.medium + len(prof.large))
    for idx in special[:prof.medium]:
        sizes[idx] = MEDIUM_SIZE
    for idx, size in zip(special[prof.medium:], prof.large):
        sizes[idx] = size + rng.randrange(MIB)  # not a multiple of anything
    return sizes


class Writer:
    """Writes file content from the seeded pool; applies owner/mode/mtime."""

    def __init__(self, rng: random.Random, as_root: bool):
        self.rng = rng
        self.pool = memoryview(rng.randbytes(POOL_SIZE))
        self.as_root = as_root

    def write_file(self, path: str, size: int, mode: int, owner, mtime_ns: int):
        """Create path with seeded content and the given attributes."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            left = size
            while left:
                n = min(left, CHUNK)
                off = self.rng.randrange(POOL_SIZE - n + 1)
                os.write(fd, self.pool[off:off + n])
                left -= n
            if self.as_root:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after chown, which clears setuid
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)


def symlink_target(rng: random.Random, link_dir: str, targets: list, dirs: list):
    """A target string: relative to a file or dir, dangling, or absolute."""
    r = rng.random()
    if r < 0.6 and targets:
        dest = rng.choice(targets)
    elif r < 0.8:
        dest = rng.choice(dirs) or "."
    elif r < 0.97:
        dest = os.path.join(rng.choice(dirs), f"missing-{rng.randrange(10**6)}")
        return os.path.relpath(dest, link_dir or ".")  # dangling, relative
    else:
        return rng.choice(("/nonexistent/target", "/etc/hostname", "/"))
    return os.path.relpath(dest, link_dir or ".")


def generate(root: str, profile: str, seed: int, quiet: bool = False) -> dict:
    """Create the tree at root (which must not exist). Returns statistics."""
    prof = PROFILES[profile]
    rng = random.Random(f"replicad-corpus/{profile}/{seed}")
    as_root = os.geteuid() == 0
    t0 = time.monotonic()
    writer = Writer(rng, as_root)

    dirs, depth, empty = plan_dirs(rng, prof)
    os.makedirs(root)
    for d in dirs[1:]:
        os.mkdir(os.path.join(root, d), 0o755)

    # Heavy-tailed weights: a few directories get a lot of files.
    # Capped so that the widest holds a few percent of all files.
    cap = len(dirs) / 10
    weights = [0.0 if e else min(cap, rng.paretovariate(1.3)) for e in empty]
    file_dirs = rng.choices(range(len(dirs)), weights, k=prof.files)
    sizes = file_sizes(rng, prof)
    targets = []  # a sample of file paths for symlinks to point at
    total = 0
    for i in range(prof.files):
        rel = os.path.join(dirs[file_dirs[i]], make_name(rng, i, False))
        writer.write_file(os.path.join(root, rel), sizes[i],
                          weighted(rng, FILE_MODES), weighted(rng, OWNERS),
                          random_mtime_ns(rng))
        total += sizes[i]
        if i % 50 == 0:
            targets.append(rel)
        if not quiet and i and i % 100_000 == 0:
            print(f"  {i} files, {total / MIB:.0f} MiB, "
                  f"{time.monotonic() - t0:.1f}s", file=sys.stderr)

    for i in range(prof.symlinks):
        d = dirs[rng.choices(range(len(dirs)), weights)[0]]
        path = os.path.join(root, d, f"link_{i}")
        os.symlink(symlink_target(rng, d, targets, dirs), path)
        owner = weighted(rng, OWNERS)  # drawn even when unused: same stream
        if as_root:
            os.lchown(path, *owner)
        mt = random_mtime_ns(rng)
        os.utime(path, ns=(mt, mt), follow_symlinks=False)

    for i in range(prof.fifos):
        path = os.path.join(root, rng.choice(dirs[:-prof.empty_dirs or None]), f"fifo_{i}")
        os.mkfifo(path, 0o644)
        mt = random_mtime_ns(rng)
        os.utime(path, ns=(mt, mt))

    # Directories last, deepest first, so no later change bumps an mtime.
    for idx in sorted(range(len(dirs)), key=lambda k: -depth[k]):
        path = os.path.join(root, dirs[idx])
        owner = weighted(rng, OWNERS)
        if as_root:
            os.chown(path, *owner)
        os.chmod(path, weighted(rng, DIR_MODES) if idx else 0o755)
        mt = random_mtime_ns(rng)
        os.utime(path, ns=(mt, mt))

    return {
        "profile": profile, "seed": seed, "files": prof.files,
        "dirs": len(dirs), "symlinks": prof.symlinks, "fifos": prof.fifos,
        "bytes": total, "seconds": round(time.monotonic() - t0, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to create (must not exist)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--force", action="store_true",
                    help="remove dest first if it exists")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if os.path.lexists(args.dest):
        if not args.force:
            print(f"corpus.py: {args.dest} exists (use --force)", file=sys.stderr)
            return 1
        shutil.rmtree(args.dest)
    st = generate(args.dest, args.profile, args.seed, args.quiet)
    if not args.quiet:
        print(f"corpus {st['profile']} seed={st['seed']}: {st['files']} files, "
              f"{st['dirs']} dirs, {st['symlinks']} symlinks, {st['fifos']} fifos, "
              f"{st['bytes'] / MIB:.0f} MiB in {st['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
