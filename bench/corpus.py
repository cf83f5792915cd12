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

The "exact" flavour (--flavour exact, issue #10) adds what an exact copy must
also carry over, drawn from its own seeded stream so that the plain part of
the tree stays byte-identical to the plain flavour's:
  * hard links: ~5% of the files get 1-3 extra names, half of them in other
    directories, and the largest file gets two (so a copy that splits links
    shows in `du`);
  * `user.*` extended attributes (1-3, text and binary values up to 256 bytes)
    on ~5% of the files and directories;
  * POSIX ACLs (system.posix_acl_access, and system.posix_acl_default on
    directories) on ~2% of the files and directories, built to agree with the
    entry's mode so that setting them leaves the mode as generated;
  * as root, a file capability (security.capability, cap_net_raw+ep) on ~2%
    of the executable files, and a `trusted.*` attribute on ~5% of the
    symlinks (the only namespace a symlink can carry).

Speed: content is sliced out of one seeded pool of random bytes (8 MiB) at
seeded offsets, so writing is bound by the filesystem, not by the PRNG.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import stat
import struct
import sys
import time
from dataclasses import dataclass

# Bump when the generator's output for a given (profile, seed) changes:
# bench/run.py uses it to decide whether a cached corpus is still valid.
# The plain flavour's output did not change when the exact flavour came, so
# plain corpora keep version 1; the exact flavour has its own version, and
# stamp() puts both flavour and version into the stamp, so no corpus of one
# flavour or generation is ever reused as another.
CORPUS_VERSION = 1
EXACT_VERSION = 1
FLAVOURS = ("plain", "exact")


def stamp(profile: str, seed: int, flavour: str = "plain") -> dict:
    """What identifies a generated tree: run.py reuses a cached corpus only
    while this is unchanged."""
    st = {"profile": profile, "seed": seed, "corpus_version": CORPUS_VERSION}
    if flavour != "plain":
        # Plain stamps stay as they were, so existing plain corpora are reused.
        st.update(flavour=flavour, exact_version=EXACT_VERSION)
    return st

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


# ------------------------------------------------- the "exact" flavour ---
# Shares of the exact flavour (see the module doc).
LINK_SHARE = 0.05
XATTR_SHARE = 0.05
ACL_SHARE = 0.02
CAP_SHARE = 0.02          # of the files with an execute bit, root only
SYMLINK_XATTR_SHARE = 0.05  # trusted.* on symlinks, root only

# POSIX ACL xattr format (linux/posix_acl_xattr.h): a little-endian u32
# version 2, then (u16 tag, u16 perm, u32 id) entries sorted by tag, then id.
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
ACL_IDS = (1001, 1002, 4242, 65533)  # need not exist: ACLs store numbers

# security.capability, VFS_CAP_REVISION_2 (linux/capability.h): magic with
# the effective flag, then {permitted, inheritable} for caps 0-31 and 32-63.
# cap_net_raw is 13: what `setcap cap_net_raw+ep` writes.
CAP_NET_RAW_EP = struct.pack("<5I", 0x02000000 | 0x1, 1 << 13, 0, 0, 0)


def acl_value(rng: random.Random, mode: int, default: bool = False) -> bytes:
    """A seeded ACL with 1-2 named users/groups whose owner, mask and other
    entries equal mode's bits, so setting it as system.posix_acl_access leaves
    the mode as it was (the kernel derives the mode from the ACL)."""
    entries = [(ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID)]
    for uid in sorted(rng.sample(ACL_IDS, rng.randint(1, 2))):
        entries.append((ACL_USER, rng.randrange(8), uid))
    entries.append((ACL_GROUP_OBJ, rng.randrange(8), ACL_UNDEFINED_ID))
    if rng.random() < 0.5:
        entries.append((ACL_GROUP, rng.randrange(8), rng.choice(ACL_IDS)))
    # With named entries the mask stands for the mode's group bits.
    mask = rng.randrange(8) if default else (mode >> 3) & 7
    entries.append((ACL_MASK, mask, ACL_UNDEFINED_ID))
    entries.append((ACL_OTHER, mode & 7, ACL_UNDEFINED_ID))
    return struct.pack("<I", ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, eid) for tag, perm, eid in entries)


def xattr_values(rng: random.Random) -> list:
    """1-3 (name, value) pairs in user.*: text and binary, up to 256 bytes."""
    out = []
    for k in range(rng.randint(1, 3)):
        name = f"user.{rng.choice(('origin', 'sum', 'tag', 'backup', 'mime'))}.{k}"
        if rng.random() < 0.5:
            value = f"{rng.choice(WORDS)}-{rng.randrange(10**9)}".encode()
        else:
            value = rng.randbytes(rng.randint(0, 256))
        out.append((name, value))
    return out


def add_hard_links(root: str, rng: random.Random, files: list, sizes: list,
                   dirs: list, empty: list) -> int:
    """Give LINK_SHARE of the files 1-3 extra names (half of them in another
    directory) and the largest file two.  Returns the number of names added.
    Runs before directory mtimes are set: a link changes its directory."""
    full_dirs = [d for d, e in zip(dirs, empty) if not e]
    chosen = [i for i in range(len(files)) if rng.random() < LINK_SHARE]
    largest = max(range(len(files)), key=sizes.__getitem__)
    extra = {i: rng.randint(1, 3) for i in chosen}
    extra[largest] = 2
    added = 0
    for i, n in sorted(extra.items()):
        for k in range(n):
            d = (os.path.dirname(files[i]) if rng.random() < 0.5
                 else rng.choice(full_dirs))
            name = os.path.join(d, f"hardlink_{i:x}_{k}{rng.choice(FILE_EXTS)}")
            os.link(os.path.join(root, files[i]), os.path.join(root, name))
            added += 1
    return added


def add_attributes(root: str, rng: random.Random, files: list, dirs: list,
                   links: list, as_root: bool) -> dict:
    """xattrs, ACLs and capabilities (see the module doc).  Runs last: none of
    them changes an mtime, and directory ACLs must agree with the final mode."""
    counts = {"xattrs": 0, "acls": 0, "default_acls": 0, "caps": 0,
              "symlink_xattrs": 0}
    for rel in files + dirs[1:]:  # not the root: a replica's root is the tool's
        path = os.path.join(root, rel)
        st = os.lstat(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        if rng.random() < XATTR_SHARE:
            for name, value in xattr_values(rng):
                os.setxattr(path, name, value)
            counts["xattrs"] += 1
        if rng.random() < ACL_SHARE:
            os.setxattr(path, "system.posix_acl_access",
                        acl_value(rng, stat.S_IMODE(st.st_mode)))
            counts["acls"] += 1
            if is_dir and rng.random() < 0.5:
                os.setxattr(path, "system.posix_acl_default",
                            acl_value(rng, 0o755, default=True))
                counts["default_acls"] += 1
        # Drawn as root or not, so the stream does not depend on the user.
        cap = not is_dir and st.st_mode & 0o111 and rng.random() < CAP_SHARE
        if cap and as_root:
            os.setxattr(path, "security.capability", CAP_NET_RAW_EP)
            counts["caps"] += 1
    for rel in links:
        if rng.random() < SYMLINK_XATTR_SHARE and as_root:
            os.setxattr(os.path.join(root, rel), "trusted.note",
                        f"link-{rng.randrange(10**6)}".encode(),
                        follow_symlinks=False)
            counts["symlink_xattrs"] += 1
    return counts


def generate(root: str, profile: str, seed: int, quiet: bool = False,
             flavour: str = "plain") -> dict:
    """Create the tree at root (which must not exist). Returns statistics."""
    prof = PROFILES[profile]
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
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
    files, links = [], []  # every path, for the exact flavour
    total = 0
    for i in range(prof.files):
        rel = os.path.join(dirs[file_dirs[i]], make_name(rng, i, False))
        files.append(rel)
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
        links.append(os.path.join(d, f"link_{i}"))
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

    # The exact flavour's extras come from their own stream: the plain part
    # of the tree is the same in both flavours.
    xrng = random.Random(f"replicad-corpus/{profile}/{seed}/exact")
    exact = {}
    if flavour == "exact":
        exact["hard_links"] = add_hard_links(root, xrng, files, sizes, dirs, empty)

    # Directories last, deepest first, so no later change bumps an mtime.
    for idx in sorted(range(len(dirs)), key=lambda k: -depth[k]):
        path = os.path.join(root, dirs[idx])
        owner = weighted(rng, OWNERS)
        if as_root:
            os.chown(path, *owner)
        os.chmod(path, weighted(rng, DIR_MODES) if idx else 0o755)
        mt = random_mtime_ns(rng)
        os.utime(path, ns=(mt, mt))

    if flavour == "exact":
        exact.update(add_attributes(root, xrng, files, dirs, links, as_root))

    return {
        "profile": profile, "seed": seed, "flavour": flavour, "files": prof.files,
        "dirs": len(dirs), "symlinks": prof.symlinks, "fifos": prof.fifos,
        "bytes": total, "exact": exact,
        "seconds": round(time.monotonic() - t0, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to create (must not exist)")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flavour", choices=FLAVOURS, default="plain",
                    help="exact: add hard links, xattrs, ACLs, capabilities")
    ap.add_argument("--force", action="store_true",
                    help="remove dest first if it exists")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if os.path.lexists(args.dest):
        if not args.force:
            print(f"corpus.py: {args.dest} exists (use --force)", file=sys.stderr)
            return 1
        shutil.rmtree(args.dest)
    st = generate(args.dest, args.profile, args.seed, args.quiet, args.flavour)
    if not args.quiet:
        print(f"corpus {st['profile']} seed={st['seed']} {st['flavour']}: "
              f"{st['files']} files, {st['dirs']} dirs, {st['symlinks']} symlinks, "
              f"{st['fifos']} fifos, {st['bytes'] / MIB:.0f} MiB in {st['seconds']}s"
              + (f"; {st['exact']}" if st["exact"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
