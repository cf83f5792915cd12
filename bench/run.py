#!/usr/bin/env python3
"""Benchmark driver: replicad vs rsync vs cp vs a bare stat-walk, in one run.

    python3 bench/run.py --profile small            # ~1 minute
    python3 bench/run.py --profile default --runs 5 --markdown
    python3 bench/run.py --profile small --flavour exact --replicad-old OLD

--flavour exact (issue #10) uses corpus.py's exact flavour (hard links,
xattrs, ACLs, capabilities) and a 1% change that also links and changes
attributes; rsync then runs as `rsync -aHAX --delete`, and after every first
copy `du -s` of each replica is compared with SOURCE's.  --replicad-old adds a
second replicad binary (e.g. one built before a change) as tool
`replicad-old`, so that old and new are timed in the same run.

On the same trees and in the same run it measures three scenarios:

  first copy  SOURCE -> empty REPLICA: replicad --once, rsync -a --delete, cp -a
  no-op       REPLICA already identical: replicad --once, rsync -a --delete,
              and a bare stat-walk of both trees (find ... -printf '%s %T@\\n')
              (replicad keeps the mark of its last clean pass in its state
              directory, DATA/state: "no-op, first" is its first pass over
              the cp -a mirror, with no mark to trust; "no-op" the passes
              after, as a cron job's next runs)
  1% changed  REPLICA identical to SOURCE before bench/mutate.py changed ~1%
              of SOURCE's files: replicad --once, rsync -a --delete

Each tool has its own replica directory.  Every tool runs --runs times per
scenario; the tools take turns within each round (the order rotates every
round) so that noise on a shared machine spreads over all of them.  Before
every measured run the precondition is restored, untimed:
  first copy  rm -rf the replica;
  no-op       the replica was made once with cp -a from a pristine mirror
              (a no-op pass leaves it as it is; each run checks that);
  1% changed  rm -rf the replica, cp -a the pristine mirror of the unchanged
              source into it.  The changed source is made once per corpus by
              cp -a of the pristine source plus the seeded mutation, and is
              only read by the tools, so every run of every tool gets
              byte-identical input.
then `sync` (untimed), and with --cold the page cache is dropped.

Per run it records wall time, user+sys CPU and peak RSS (from wait4(2), like
GNU time's %M: the largest single process of the tool's process tree), and
for the scenarios that write, the time of a `sync` right after the tool
("+sync": replicad ends each pass with syncfs(2) of REPLICA, rsync and cp do
not, so tool time + sync time is the like-for-like "data on disk" figure).
After every run of replicad, rsync and cp the replica is compared with the
source by bench/treecmp.py (type, size, mode, mtime ns, owner, link target;
file bytes too on the first round); mismatches are reported, not fatal.

Corpora live outside the repository, in --data-dir (default: ../benchdata
next to the repository root), one directory per profile, and are reused by
later runs while profile, seed and generator version are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import mutate  # noqa: E402
import treecmp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Rough on-disk size of one tree (4 KiB blocks included), for the space check.
TREE_GIB = {"small": 0.25, "default": 2.2, "huge": 4.5}
MUTATE_SEED = 2
WALK_FORMAT = "%s %T@\n"
TOOLS = ("replicad", "replicad-old", "rsync", "rsync-HAX", "cp", "walk")
# Tools that make a replica of their own.
COPIERS = ("replicad", "replicad-old", "rsync", "rsync-HAX", "cp")
# What the tools are called in the report.
LABELS = {"rsync": "rsync -a --delete", "rsync-HAX": "rsync -aHAX --delete",
          "cp": "cp -a", "walk": "stat-walk (find both trees)"}


# ---------------------------------------------------------------- running ---
@dataclass
class Sample:
    """One measured run of one tool."""

    wall: float
    cpu: float
    rss_kib: int
    rc: int
    sync: float | None = None
    du: int | None = None         # bytes used by the replica (first copy)
    du_dirs: int | None = None    # of which directories (from the snapshot)
    diffs: int | None = None      # None: not checked
    examples: list = field(default_factory=list)


def sh(*cmd, check=True):
    """Run an untimed helper command."""
    return subprocess.run([str(c) for c in cmd], check=check,
                          stdin=subprocess.DEVNULL)


def drop_caches():
    """Write back dirty data and drop the page cache (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        sys.exit(f"run.py: --cold needs root (drop_caches: {e})")


GNU_TIME = "/usr/bin/time"


def timed(cmd, log_path: Path, timeout: float):
    """Run cmd; return (wall s, user+sys s, peak RSS KiB, exit status).

    Wall time is taken here.  CPU and peak RSS come from GNU time when it is
    installed: a child forked by Python starts with Python's resident set
    (~40 MiB) as its high-water mark, which would hide small tools' RSS.
    Without GNU time, wait4(2) is used and RSS has that floor."""
    use_time = os.access(GNU_TIME, os.X_OK)
    rfile = log_path.with_suffix(".rusage")
    full = [GNU_TIME, "-f", "%M %U %S", "-o", rfile] if use_time else []
    full += cmd
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen([str(c) for c in full], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=log,
                             start_new_session=True)

        def kill():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    p.returncode = rc = os.waitstatus_to_exitcode(status)  # Popen must not reap
    cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    if use_time:
        try:
            last = rfile.read_text().strip().splitlines()[-1].split()
            rss, cpu = int(last[0]), float(last[1]) + float(last[2])
        except (OSError, IndexError, ValueError):
            pass  # killed: keep wait4's figures
    return wall, cpu, rss, rc


# ------------------------------------------------------------------ tools ---
def tool_cmd(tool: str, src: Path, dst: Path, replicads: dict,
             replicad_args: list) -> list:
    """The measured command line of a tool.  replicads maps "replicad" and
    "replicad-old" to binaries; both get the same --replicad-arg."""
    if tool in ("replicad", "replicad-old"):
        return [replicads[tool], "--once", *replicad_args, src, dst]
    if tool == "rsync":
        return ["rsync", "-a", "--delete", f"{src}/", f"{dst}/"]
    if tool == "rsync-HAX":
        # Hard links, ACLs, xattrs: what rsync needs for issue #10's "exact".
        return ["rsync", "-aHAX", "--delete", f"{src}/", f"{dst}/"]
    if tool == "cp":
        return ["cp", "-a", src, dst]
    if tool == "walk":
        return ["find", src, dst, "-printf", WALK_FORMAT]
    raise ValueError(tool)


def find_replicad(arg: str | None) -> Path | None:
    """The replicad binary: --replicad, else target/release/replicad of this
    repository (built with cargo when missing).  None when unavailable."""
    if arg:
        p = Path(arg).resolve()
        if not os.access(p, os.X_OK):
            sys.exit(f"run.py: --replicad {arg}: not an executable file")
        return p
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    p = (target / "release" / "replicad").resolve()
    if not p.exists() and shutil.which("cargo") and (REPO / "Cargo.toml").exists():
        print(f"building replicad (cargo build --release in {REPO}) ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO)
    if os.access(p, os.X_OK):
        return p
    print(f"run.py: NOTE replicad not available at {p} (build failed or no cargo);"
          " measuring rsync, cp and find only. Pass --replicad PATH to use another"
          " binary.", file=sys.stderr)
    return None


def disk_use(path: Path) -> int:
    """Bytes allocated to the tree, each inode counted once (du -s)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def git_head() -> str:
    """Commit (and dirtiness) of this repository, for the record."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always",
                              "--dirty", "--abbrev=12"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return rev or "unknown"
    except OSError:
        return "unknown"


def version_of(cmd) -> str:
    """First line of `cmd --version`, or 'unknown'."""
    try:
        out = subprocess.run([str(c) for c in cmd] + ["--version"], capture_output=True,
                             text=True, timeout=10)
        line = (out.stdout or out.stderr).strip().splitlines()
        return line[0] if line and out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


# ------------------------------------------------------------------ trees ---
def ensure_tree(path: Path, stamp: dict, build) -> bool:
    """Reuse path if its stamp file matches, else rebuild it with build().
    Returns True when it was rebuilt."""
    stamp_file = path.with_name(path.name + ".stamp")
    want = json.dumps(stamp, sort_keys=True)
    if path.exists() and stamp_file.exists() and stamp_file.read_text() == want:
        return False
    stamp_file.unlink(missing_ok=True)
    if path.exists():
        sh("rm", "-rf", path)
    build()
    stamp_file.write_text(want)
    return True


def check_space(data: Path, profile: str, missing_trees: int):
    """Refuse to start when the data dir's filesystem is too small."""
    data.mkdir(parents=True, exist_ok=True)
    need = TREE_GIB[profile] * missing_trees + 1
    free = shutil.disk_usage(data).free / 2**30
    if free < need:
        sys.exit(f"run.py: {data} has {free:.1f} GiB free, this profile needs "
                 f"about {need:.1f} GiB more (see --data-dir)")


def prepare_trees(args, data: Path) -> dict:
    """Make (or reuse) the pristine source, its pristine mirror and the
    changed source.  Returns paths and facts about them."""
    src, base, mut = data / "src", data / "base", data / "src-mut"
    exact = args.flavour == "exact"
    s_stamp = corpus.stamp(args.profile, args.seed, args.flavour)
    info = {}

    def build_src():
        print(f"generating corpus {args.profile} seed={args.seed} "
              f"flavour={args.flavour} in {src} ...", flush=True)
        st = corpus.generate(str(src), args.profile, args.seed,
                             flavour=args.flavour)
        print(f"  {st['files']} files, {st['bytes'] / 2**20:.0f} MiB in "
              f"{st['seconds']}s {st['exact'] or ''}", flush=True)

    def build_base():
        sh("cp", "-a", src, base)

    def build_mut():
        sh("cp", "-a", src, mut)
        s = mutate.mutate(str(mut), MUTATE_SEED, percent=args.percent,
                          exact=exact)
        print(f"  mutated copy: {sum(s['ops'].values())} changes touching "
              f"{s['touched']} files: {s['ops']}", flush=True)
        (data / "src-mut.changes.json").write_text(json.dumps(s))

    ensure_tree(src, s_stamp, build_src)
    ensure_tree(base, {**s_stamp, "tree": "base"}, build_base)
    ensure_tree(mut, {**s_stamp, "tree": "mut", "mutate_seed": MUTATE_SEED,
                      "percent": args.percent}, build_mut)
    changes = data / "src-mut.changes.json"
    info["changes"] = json.loads(changes.read_text()) if changes.exists() else {}
    return {"src": src, "base": base, "mut": mut, **info}


# ------------------------------------------------------------------ bench ---
class Bench:
    """Runs the scenarios and collects Samples per (scenario, tool)."""

    def __init__(self, args, data: Path, trees: dict, replicads: dict):
        self.args = args
        self.trees = trees
        self.replicads = replicads  # tool name -> binary, the present ones
        self.logs = data / "logs"
        self.logs.mkdir(exist_ok=True)
        self.reps = {t: data / f"rep-{t}" for t in COPIERS}
        self.results: dict[tuple, list] = {}
        self.snaps = {}
        self.du_src = None  # du -s of SOURCE, taken with the first copy

    def tools(self, wanted):
        return [t for t in wanted if t in self.args.tools and
                (not t.startswith("replicad") or t in self.replicads)]

    def snap(self, key: str):
        if key not in self.snaps:
            self.snaps[key] = treecmp.snapshot(self.trees[key])
        return self.snaps[key]

    def measure(self, scenario, tool, src: Path, dst: Path, *, sync_after,
                check_key=None, content=False):
        """One measured run, then (optionally) the replica check."""
        if self.args.cold:
            drop_caches()
        else:
            os.sync()
        cmd = tool_cmd(tool, src, dst, self.replicads, self.args.replicad_arg)
        log = self.logs / f"{scenario}-{tool}.log"
        wall, cpu, rss, rc = timed(cmd, log, self.args.timeout)
        s = Sample(wall, cpu, rss, rc)
        if sync_after:
            t0 = time.perf_counter()
            os.sync()
            s.sync = time.perf_counter() - t0
        if scenario == "first copy":
            # Disk use is what hard links are about: a copy that splits a
            # group pays for every name.  Untimed, after the sync above.
            s.du = disk_use(dst)
        if check_key:
            dsnap = treecmp.snapshot(dst)
            s.du_dirs = dsnap.dir_bytes
            s.diffs, s.examples = treecmp.compare(
                self.snap(check_key), dsnap,
                self.trees[check_key], dst, content=content, limit=5)
        self.results.setdefault((scenario, tool), []).append(s)
        mark = "" if not s.diffs else f"  MISMATCH {s.diffs} paths"
        print(f"  {scenario:<11} {tool:<12} {wall:8.3f}s  rc={rc}{mark}", flush=True)
        return s

    def rounds(self, tools):
        """(round, tool) pairs, the tool order rotating every round."""
        for r in range(self.args.runs):
            k = r % len(tools)
            for tool in tools[k:] + tools[:k]:
                yield r, tool

    def first_copy(self):
        src = self.trees["src"]
        self.du_src = (disk_use(src), self.snap("src").dir_bytes)
        for r, tool in self.rounds(self.tools(list(COPIERS))):
            dst = self.reps[tool]
            sh("rm", "-rf", dst)
            self.measure("first copy", tool, src, dst, sync_after=True,
                         check_key="src", content=(r == 0))

    def noop(self):
        src, base = self.trees["src"], self.trees["base"]
        tools = self.tools([t for t in TOOLS if t != "cp"])
        for tool in tools:
            if tool != "walk":
                sh("rm", "-rf", self.reps[tool])
                sh("cp", "-a", base, self.reps[tool])
                # One untimed pass first.  On an exact mirror it changes
                # nothing; a tool that cannot keep that mirror (a replicad
                # from before #10 rewrites every hard-linked name, dropping
                # its ACLs) makes its own replica here, so that every timed
                # run is a true no-op for that tool too.
                if tool == "replicad":
                    # Timed: a `--once` with no mark of an earlier clean pass
                    # (the state directory is fresh, every replica entry new)
                    # reads every attribute; the timed rounds below start from
                    # the mark this pass leaves, as cron's next run would.
                    self.measure("no-op, first", tool, src, self.reps[tool],
                                 sync_after=False, check_key="src")
                    continue
                log = self.logs / f"no-op-{tool}.prime.log"
                cmd = tool_cmd(tool, src, self.reps[tool], self.replicads,
                               self.args.replicad_arg)
                with open(log, "wb") as f:
                    subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=f,
                                   timeout=self.args.timeout)
        for _, tool in self.rounds(tools):
            if tool == "walk":
                self.measure("no-op", tool, src, base, sync_after=False)
            else:
                self.measure("no-op", tool, src, self.reps[tool],
                             sync_after=False, check_key="src")

    def changed(self):
        mut, base = self.trees["mut"], self.trees["base"]
        tools = self.tools([t for t in COPIERS if t != "cp"])
        for r, tool in self.rounds(tools):
            dst = self.reps[tool]
            sh("rm", "-rf", dst)
            sh("cp", "-a", base, dst)
            self.measure("1% changed", tool, mut, dst, sync_after=True,
                         check_key="mut", content=(r == 0))


# ---------------------------------------------------------------- report ---
def med(xs):
    return statistics.median(xs) if xs else None


def rsync_ref(tools) -> str:
    """The rsync the targets compare with: -aHAX when it ran (issue #10)."""
    return "rsync-HAX" if "rsync-HAX" in tools else "rsync"


def summarize(results: dict, du_src: int | None = None) -> list:
    """One row per (scenario, tool) with medians, ranges and ratios."""
    rows = []
    for scenario in ("first copy", "no-op, first", "no-op", "1% changed"):
        tools = [t for (s, t) in results if s == scenario]
        tools.sort(key=TOOLS.index)
        base_tool = "replicad" if "replicad" in tools else rsync_ref(tools)
        ref = results.get((scenario, base_tool))
        ref_wall = med([s.wall for s in ref]) if ref else None
        ref_sync = (med([s.wall + s.sync for s in ref])
                    if ref and ref[0].sync is not None else None)
        for tool in tools:
            ss = results[(scenario, tool)]
            walls = [s.wall for s in ss]
            row = {
                "scenario": scenario, "tool": tool, "runs": len(ss),
                "median": med(walls), "min": min(walls), "max": max(walls),
                "ratio": med(walls) / ref_wall if ref_wall else None,
                "cpu": med([s.cpu for s in ss]),
                "rss_mib": max(s.rss_kib for s in ss) / 1024,
                "rcs": sorted({s.rc for s in ss}),
                "base_tool": base_tool,
            }
            if ss[0].sync is not None:
                row["synced"] = med([s.wall + s.sync for s in ss])
                row["synced_ratio"] = row["synced"] / ref_sync if ref_sync else None
            dus = sorted({(s.du, s.du_dirs) for s in ss if s.du is not None})
            if dus:
                # Distinct (du, directory bytes) seen over the runs.
                row["du"] = dus
                row["du_src"] = du_src
            checked = [s for s in ss if s.diffs is not None]
            bad = [s for s in checked if s.diffs]
            row["check"] = ("-" if not checked else
                            f"ok {len(checked)}/{len(checked)}" if not bad else
                            f"DIFF {len(bad)}/{len(checked)}")
            row["examples"] = bad[0].examples if bad else []
            rows.append(row)
    return rows


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


COLUMNS = ("scenario", "tool", "median s", "min–max s", "×base",
           "+sync s", "×base", "cpu s", "RSS MiB", "exit", "replica")


def row_cells(r) -> list:
    return [r["scenario"], LABELS.get(r["tool"], r["tool"]), fmt(r["median"]),
            f"{r['min']:.3f}–{r['max']:.3f}", fmt(r["ratio"], ".2f"),
            fmt(r.get("synced")), fmt(r.get("synced_ratio"), ".2f"),
            fmt(r["cpu"], ".2f"), fmt(r["rss_mib"], ".1f"),
            ",".join(map(str, r["rcs"])), r["check"]]


def text_table(rows) -> str:
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(c))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def du_table(rows) -> list:
    """Rows (tool, du bytes, × SOURCE, Δ KiB, Δ KiB of directories, Δ KiB of
    the rest): disk use of each replica after the first copy.  Directories
    are split out because a directory's size depends on the names it ever
    held (temporary names included), not on what it holds now."""
    out = []
    for r in rows:
        if "du" not in r or not r.get("du_src"):
            continue
        src, src_dirs = r["du_src"]
        for du, dirs in r["du"]:
            d_dirs = None if dirs is None else (dirs - src_dirs) / 1024
            d_rest = None if dirs is None else ((du - dirs) - (src - src_dirs)) / 1024
            out.append((LABELS.get(r["tool"], r["tool"]), du, du / src,
                        (du - src) / 1024, d_dirs, d_rest))
    return out


def targets(rows) -> list:
    """SPEC.md section 5 and issue #10 targets that this run can judge, as
    text lines."""
    get = {(r["scenario"], r["tool"]): r for r in rows}
    rs = rsync_ref({t for _, t in get})
    out = []

    def judge(label, a, b, key, limit, faster=False):
        ra, rb = get.get(a), get.get(b)
        if not ra or not rb or ra.get(key) is None or rb.get(key) is None:
            return
        ratio = rb[key] / ra[key] if faster else ra[key] / rb[key]
        ok = ratio >= limit if faster else ratio <= limit
        what = f"{b[1]}/{a[1]} = {ratio:.2f} (need ≥ {limit})" if faster else \
            f"{a[1]}/{b[1]} = {ratio:.2f} (need ≤ {limit})"
        out.append(f"{'met   ' if ok else 'MISSED'} {label}: {what}")

    for key, note in (("median", "tool time"), ("synced", "tool + sync")):
        judge(f"first copy faster than {LABELS[rs]} [{note}]",
              ("first copy", "replicad"), ("first copy", rs), key, 1.0, True)
        judge(f"first copy within 1.3× of cp -a [{note}]",
              ("first copy", "replicad"), ("first copy", "cp"), key, 1.3)
    judge(f"no-op at least 3× faster than {LABELS[rs]}", ("no-op", "replicad"),
          ("no-op", rs), "median", 3.0, True)
    judge("no-op within 1.5× of a bare stat-walk", ("no-op", "replicad"),
          ("no-op", "walk"), "median", 1.5)
    judge("#10: no-op at most 1.15× the old replicad's", ("no-op", "replicad"),
          ("no-op", "replicad-old"), "median", 1.15)
    for key, note in (("median", "tool time"), ("synced", "tool + sync")):
        judge(f"1% changed faster than {LABELS[rs]} [{note}]",
              ("1% changed", "replicad"), ("1% changed", rs), key, 1.0, True)
    first = get.get(("first copy", "replicad"))
    if first and first.get("du") and first.get("du_src"):
        # Equal apart from directory blocks: those hold the names a directory
        # ever had, which no copying tool controls (cp -a differs too).
        src, src_dirs = first["du_src"]
        rest = {du - dirs for du, dirs in first["du"]}
        ok = rest == {src - src_dirs}
        out.append(f"{'met   ' if ok else 'MISSED'} #10: REPLICA's du equals "
                   f"SOURCE's (directories aside): SOURCE {src} bytes, "
                   f"replicad {', '.join(str(d) for d, _ in first['du'])}; "
                   f"without directories {src - src_dirs} vs "
                   f"{', '.join(map(str, sorted(rest)))}")
    return out


def fs_type(path: Path) -> str:
    """Filesystem type and device of the mount holding path."""
    path = str(path.resolve())
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, typ = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) \
                    and len(mnt) >= len(best[0]):
                best = (mnt, typ, dev)
    return f"{best[1]} ({best[2]} on {best[0]})"


def load_now() -> str:
    """1-minute load average and CPU pressure (PSI some avg60), if known."""
    out = f"load {os.getloadavg()[0]:.1f}"
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        out += f", cpu pressure {some[2].split('=')[1]}%"
    except (OSError, IndexError):
        pass
    return out


def machine_info(data: Path, replicads: dict) -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": cpu,
        "memory": f"{mem_kib / 2**20:.0f} GiB", "kernel": platform.release(),
        "filesystem": fs_type(data), "python": platform.python_version(),
        **{t: f"{b} ({version_of([b])})" for t, b in replicads.items()},
        "repository": git_head(),
        "rsync": version_of(["rsync"]), "cp": version_of(["cp"]),
        "find": version_of(["find"]),
    }


def corpus_line(args, trees, src_summary=None) -> str:
    p = corpus.PROFILES[args.profile]
    big = sum(p.large) + p.medium * corpus.MEDIUM_SIZE
    ch = trees.get("changes", {})
    extra = ""
    if src_summary:
        extra = ("; " + ", ".join(f"{k} {v:,}" for k, v in src_summary.items()
                                  if k != "entries"))
    return (f"profile {args.profile} {args.flavour} (seed {args.seed}): "
            f"{p.files:,} files "
            f"(incl. {p.medium} × 1 MiB and {len(p.large)} large: "
            f"{big / 2**20:.0f} MiB), {p.symlinks} symlinks, {p.fifos} FIFOs"
            f"{extra}; 1% changed = {sum(ch.get('ops', {}).values())} changes "
            f"touching {ch.get('touched', '?')} files {ch.get('ops', '')}")


def report(args, rows, info, trees, data: Path, src_summary=None):
    cache = "cold (caches dropped before each run)" if args.cold else \
        "warm page cache"
    print()
    print(corpus_line(args, trees, src_summary))
    print(f"{args.runs} runs per tool and scenario, tools interleaved, {cache}; "
          f"×base = tool median / {rows[0]['base_tool'] if rows else '?'} median")
    print(f"machine load {info['machine load']}")
    print()
    print(text_table(rows))
    for r in rows:
        for ex in r["examples"]:
            print(f"  {r['scenario']} / {r['tool']}: {ex}")
    du = du_table(rows)
    if du:
        src, src_dirs = rows[0]["du_src"]
        print(f"\ndisk use after the first copy (du -s --block-size=1; SOURCE "
              f"{src}, of which directories {src_dirs}):")
        for label, b, ratio, dk, dd, dr in du:
            print(f"  {label:<22} {b:>14}  ×{ratio:.3f}  {dk:+.0f} KiB "
                  f"(directories {fmt(dd, '+.0f')}, rest {fmt(dr, '+.0f')})")
    lines = targets(rows)
    if lines:
        print("\nSPEC.md §5 targets (medians):")
        for line in lines:
            print("  " + line)
    if args.markdown:
        print("\n" + "-" * 72 + "\n")
        print(f"**{corpus_line(args, trees, src_summary)}.** {args.runs} runs "
              "each, tools "
              f"interleaved, {cache}. Times in seconds (median and min–max); "
              "×base is the ratio of medians to replicad's; +sync adds a "
              "`sync` after the tool (replicad already ends with syncfs); RSS "
              "is the peak of the largest process.\n")
        print(markdown_table(rows))
        if du:
            print(f"\n| tool | du -s bytes after first copy | × SOURCE | "
                  f"Δ KiB | Δ directories KiB | Δ rest KiB |\n"
                  f"|---|---|---|---|---|---|\n"
                  f"| SOURCE | {rows[0]['du_src'][0]} | 1.000 | 0 | 0 | 0 |")
            for label, b, ratio, dk, dd, dr in du:
                print(f"| {label} | {b} | {ratio:.3f} | {dk:+.0f} | "
                      f"{fmt(dd, '+.0f')} | {fmt(dr, '+.0f')} |")
        print()
        for k, v in info.items():
            print(f"- {k}: {v}")
        if lines:
            print()
            for line in lines:
                print(f"- {line}")


# ------------------------------------------------------------------- main ---
def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="replicad benchmark driver (see bench/README.md)")
    ap.add_argument("--profile", choices=sorted(corpus.PROFILES), default="small")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1, help="corpus seed")
    ap.add_argument("--percent", type=float, default=1.0,
                    help="share of files changed for the third scenario")
    ap.add_argument("--flavour", choices=corpus.FLAVOURS, default="plain",
                    help="corpus flavour; exact adds hard links, xattrs, ACLs "
                    "and capabilities (issue #10) and lives in PROFILE-exact/")
    ap.add_argument("--replicad", help="replicad binary (default: "
                    "target/release/replicad of the repo, built if missing)")
    ap.add_argument("--replicad-old", help="a second replicad binary, timed as "
                    "tool replicad-old in the same run (e.g. one built from "
                    "the commit before a change)")
    ap.add_argument("--replicad-arg", action="append", default=[],
                    help="extra argument for replicad --once, both binaries "
                    "(repeatable)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "benchdata"),
                    help="where corpora and replicas go (default: %(default)s)")
    ap.add_argument("--tools", help="comma-separated subset of " + ",".join(TOOLS)
                    + " (default: replicad,replicad-old,rsync,cp,walk; with "
                    "--flavour exact rsync-HAX instead of rsync; replicad-old "
                    "only with --replicad-old)")
    ap.add_argument("--scenarios", default="first,noop,changed",
                    help="comma-separated subset of first,noop,changed")
    ap.add_argument("--cold", action="store_true",
                    help="sync and drop the page cache before each measured run")
    ap.add_argument("--markdown", action="store_true",
                    help="also print a README-ready table with machine info")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="kill a measured run after this many seconds")
    ap.add_argument("--keep", action="store_true",
                    help="keep the replicas (rep-*) afterwards")
    args = ap.parse_args(argv)
    if args.tools is None:
        # On the exact corpus plain rsync -a cannot make an exact copy, so
        # the comparison is with the rsync that can.
        rsync = "rsync-HAX" if args.flavour == "exact" else "rsync"
        args.tools = f"replicad,replicad-old,{rsync},cp,walk"
    args.tools = args.tools.split(",")
    if not set(args.tools) <= set(TOOLS):
        ap.error(f"--tools: unknown {set(args.tools) - set(TOOLS)}")
    if "replicad-old" in args.tools and not args.replicad_old:
        args.tools.remove("replicad-old")
    args.scenarios = args.scenarios.split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Each flavour has its own trees: the stamps would tell them apart, but
    # switching flavours would then regenerate them every time.
    suffix = "" if args.flavour == "plain" else f"-{args.flavour}"
    data = Path(args.data_dir).resolve() / (args.profile + suffix)
    # replicad's state directory (the mark of its last clean pass), fresh per
    # bench run and away from the user's own; replicad-old ignores it.
    state = data / "state"
    shutil.rmtree(state, ignore_errors=True)
    os.environ["REPLICAD_STATE_DIR"] = str(state)
    if REPO in data.parents:
        sys.exit(f"run.py: --data-dir must be outside the repository ({data})")
    missing = sum(not (data / n).exists() for n in ("src", "base", "src-mut")) \
        + sum(t in COPIERS for t in args.tools)
    check_space(data, args.profile, missing)
    replicads = {}
    if "replicad" in args.tools:
        found = find_replicad(args.replicad)
        if found:
            replicads["replicad"] = found
    if "replicad-old" in args.tools:
        replicads["replicad-old"] = find_replicad(args.replicad_old)
    for tool, exe in (("rsync", "rsync"), ("rsync-HAX", "rsync"), ("cp", "cp"),
                      ("walk", "find")):
        if tool in args.tools and not shutil.which(exe):
            print(f"run.py: NOTE {exe} not found; skipping {tool}", file=sys.stderr)
            args.tools.remove(tool)

    trees = prepare_trees(args, data)
    bench = Bench(args, data, trees, replicads)
    started = time.time()
    load_before = load_now()
    if "first" in args.scenarios:
        bench.first_copy()
    if "noop" in args.scenarios:
        bench.noop()
    if "changed" in args.scenarios:
        bench.changed()
    if not args.keep:
        for rep in bench.reps.values():
            sh("rm", "-rf", rep)

    rows = summarize(bench.results, bench.du_src)
    info = machine_info(data, replicads)
    info["machine load"] = f"at start: {load_before}; at end: {load_now()}"
    report(args, rows, info, trees, data, treecmp.summary(bench.snap("src")))
    out = data / "results" / time.strftime(f"{args.profile}-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "args": {k: v for k, v in vars(args).items()}, "machine": info,
        "started": started, "rows": rows,
        "samples": {f"{s}/{t}": [vars(x) for x in ss]
                    for (s, t), ss in bench.results.items()},
    }, indent=1, default=str))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
