#!/usr/bin/env python3
"""Change-to-replica latency of the replicad service, side by side with lsyncd.

    python3 bench/latency.py                         # all subjects, N=200 per kind
    python3 bench/latency.py --subjects lsyncd-rsync-0,lsyncd-direct-0 --n 50

Each subject mirrors its own copy of the same seeded starting tree
(~1,000 files in 20 directories).  Once the subject's replica matches,
single changes are made one at a time, the kinds taking turns:

  create   a new 1-4 KiB file
  modify   new bytes written in place into an existing file (same size)
  rename   an existing file renamed (to another directory every other time)
  delete   an existing file unlinked

and for each the time from the syscall's return until the replica shows it
(same bytes at the new name / old name gone) is measured by polling
os.lstat about every millisecond.  Every change touches a different file,
whose mtime is years old, so rsync's whole-second quick check cannot hide a
change.  Between changes there is a --gap pause.  A change not seen within
the timeout counts as "missed".  Then a burst of --burst new files
(100 per directory) is written as fast as possible and the time from the
last file's close() until the replica's burst directory matches is taken.
Finally, after a quiet period, the whole replica is compared with the
source (treecmp.py): "exact" or the number of differing paths.

Subjects (--subjects):
  replicad-100ms   replicad SRC DST --interval 1h --debounce 100ms
  replicad-10ms    replicad SRC DST --interval 1h --debounce 10ms
  lsyncd-rsync-0   lsyncd default.rsync (rsync archive), delay = 0
  lsyncd-rsync-1   same, delay = 1
  lsyncd-direct-0  lsyncd default.direct (cp/mv/rm), delay = 0
  lsyncd-rsync-15  same as -0 with lsyncd's default delay of 15 s (uses --slow-n)
Subjects whose delay is 1 s or more do --slow-n changes per kind, not --n.
lsyncd config files are written to a temporary directory.

Percentiles are nearest-rank; the poller itself costs a little CPU on the
same machine, for every subject alike.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import treecmp  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KINDS = ("create", "modify", "rename", "delete")
OLD_MTIME_NS = 1_500_000_000 * 10**9 + 123_456_789  # 2017
SUBJECTS = {
    "replicad-100ms": ("replicad", "100ms"),
    "replicad-10ms": ("replicad", "10ms"),
    "lsyncd-rsync-0": ("lsyncd", ("default.rsync", 0)),
    "lsyncd-rsync-1": ("lsyncd", ("default.rsync", 1)),
    "lsyncd-direct-0": ("lsyncd", ("default.direct", 0)),
    "lsyncd-rsync-15": ("lsyncd", ("default.rsync", None)),  # None: default 15 s
}
DEFAULT_SUBJECTS = "replicad-100ms,replicad-10ms,lsyncd-rsync-0,lsyncd-rsync-1," \
                   "lsyncd-direct-0,lsyncd-rsync-15"


# ------------------------------------------------------------ the trees ---
def home(kind: str, i: int) -> str:
    """Directory of the i-th pre-existing file of a kind."""
    return f"d{(i * 3 + ('modify', 'rename', 'delete').index(kind)) % 20:02}"


def make_seed_tree(root: Path, n_per_kind: int, seed: int):
    """The starting tree: 20 dirs with 400 filler files plus, for modify,
    rename and delete, a distinct existing file for every change."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(20):
        (root / f"d{i:02}").mkdir()
    rels = [f"d{i % 20:02}/fill{i}" for i in range(400)]
    rels += [f"{home(k, i)}/{k}{i}" for k in ("modify", "rename", "delete")
             for i in range(n_per_kind)]
    for rel in rels:
        p = root / rel
        p.write_bytes(rng.randbytes(rng.randrange(1024, 4097)))
        os.utime(p, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    for d in [root / f"d{i:02}" for i in range(20)] + [root]:
        os.utime(d, ns=(OLD_MTIME_NS, OLD_MTIME_NS))


def trees_match(src: Path, dst: Path, examples: list | None = None) -> int:
    """Number of differing paths (0: exact); a few go into examples."""
    try:
        count, ex = treecmp.compare(treecmp.snapshot(src), treecmp.snapshot(dst),
                                    limit=5)
    except FileNotFoundError:
        return -1
    if examples is not None:
        examples[:] = ex
    return count


def all_present(src: Path, dst: Path):
    """A condition: every file under src exists under dst with its size
    (checked from the first one not yet seen, as they arrive)."""
    want = sorted((os.path.relpath(os.path.join(b, f), src),
                   os.lstat(os.path.join(b, f)).st_size)
                  for b, _, fs in os.walk(src) for f in fs)
    pos = 0

    def cond():
        nonlocal pos
        while pos < len(want):
            rel, size = want[pos]
            try:
                if os.lstat(dst / rel).st_size != size:
                    return False
            except OSError:
                return False
            pos += 1
        return True
    return cond


def wait_until(cond, timeout: float, step: float = 0.001) -> float | None:
    """Poll cond() every `step` s; the perf_counter() at which it first was
    true, or None after timeout seconds."""
    deadline = time.perf_counter() + timeout
    while True:
        now = time.perf_counter()
        if cond():
            return now
        if now > deadline:
            return None
        time.sleep(step)


# ---------------------------------------------------------- the changes ---
def same_file(a: Path, b: Path) -> bool:
    """b exists and has a's bytes (metadata is judged by the final check)."""
    try:
        if os.lstat(a).st_size != os.lstat(b).st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def gone(p: Path) -> bool:
    return not os.path.lexists(p)


def do_change(kind: str, i: int, src: Path, dst: Path, rng: random.Random):
    """Make the i-th change of a kind; return (t0, condition for 'replica
    shows it').  t0 is taken right after the changing syscall returned."""
    if kind == "create":
        rel = f"d{i % 20:02}/new{i}"
        data = rng.randbytes(rng.randrange(1024, 4097))
        fd = os.open(src / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        t0 = time.perf_counter()
        return t0, lambda: same_file(src / rel, dst / rel)
    if kind == "modify":
        rel = f"{home('modify', i)}/modify{i}"
        size = os.lstat(src / rel).st_size
        fd = os.open(src / rel, os.O_WRONLY)
        os.pwrite(fd, rng.randbytes(size), 0)
        os.close(fd)
        t0 = time.perf_counter()
        return t0, lambda: same_file(src / rel, dst / rel)
    if kind == "rename":
        rel = f"{home('rename', i)}/rename{i}"
        new = f"d{(i * 7) % 20:02}/renamed{i}" if i % 2 else \
            f"{home('rename', i)}/renamed{i}"
        os.rename(src / rel, src / new)
        t0 = time.perf_counter()
        return t0, lambda: gone(dst / rel) and same_file(src / new, dst / new)
    if kind == "delete":
        rel = f"{home('delete', i)}/delete{i}"
        os.unlink(src / rel)
        t0 = time.perf_counter()
        return t0, lambda: gone(dst / rel)
    raise ValueError(kind)


def burst(src: Path, n: int, rng: random.Random) -> tuple[float, Path]:
    """Write n new files (100 per directory) under src/burst; return the
    time it took and the directory's path relative to src."""
    rel = Path("burst")
    data = rng.randbytes(1 << 16)
    t0 = time.perf_counter()
    (src / rel).mkdir()
    for i in range(n):
        d = src / rel / f"b{i // 100:03}"
        if i % 100 == 0:
            d.mkdir()
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        off = rng.randrange(len(data) - 1024)
        os.write(fd, data[off:off + rng.randrange(0, 1024)])
        os.close(fd)
    return time.perf_counter() - t0, rel


# ------------------------------------------------------------- subjects ---
def lsyncd_config(tmp: Path, mode: str, delay, src: Path, dst: Path) -> Path:
    """Write an lsyncd config; returns its path."""
    delay_line = f"    delay = {delay},\n" if delay is not None else ""
    rsync_opts = "    rsync = { archive = true },\n"
    cfg = tmp / f"lsyncd-{mode}-{delay}.lua"
    cfg.write_text(
        "settings {\n"
        f"    logfile = \"{tmp}/lsyncd.log\",\n"
        f"    statusFile = \"{tmp}/lsyncd.status\",\n"
        "    nodaemon = true,\n"
        "    inotifyMode = \"CloseWrite or Modify\",\n"
        "}\n"
        "sync {\n"
        f"    {mode},\n"
        f"    source = \"{src}\",\n"
        f"    target = \"{dst}\",\n"
        f"{delay_line}{rsync_opts}"
        "}\n")
    return cfg


def start_subject(name: str, src: Path, dst: Path, tmp: Path, replicad: Path | None):
    """Start the subject; returns (Popen, effective delay in s, log path)."""
    kind, arg = SUBJECTS[name]
    log = open(tmp / f"{name}.log", "wb")
    if kind == "replicad":
        cmd = [replicad, src, dst, "--interval", "1h", "--debounce", arg]
        delay = float(arg.rstrip("ms")) / 1000
    else:
        mode, d = arg
        cmd = ["lsyncd", lsyncd_config(tmp, mode, d, src, dst)]
        delay = 15.0 if d is None else float(d)
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    return p, delay, tmp / f"{name}.log"


def stop_subject(p: subprocess.Popen):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def rss_kib(pid: int) -> dict:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def pct(xs, q):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def run_subject(name, args, seed_tree: Path, work: Path, replicad) -> dict:
    """Measure one subject; returns its results."""
    src, dst, tmp = work / name / "src", work / name / "dst", work / name / "tmp"
    shutil.rmtree(work / name, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["cp", "-a", seed_tree, src], check=True)
    p, delay, log = start_subject(name, src, dst, tmp, replicad)
    res = {"subject": name, "delay": delay}
    try:
        t_start = time.perf_counter()
        t_init = wait_until(lambda: p.poll() is None and trees_match(src, dst) == 0,
                            60, step=0.05)
        if t_init is None:
            res["error"] = (f"initial sync did not converge in 60 s (exit status "
                            f"{p.poll()}); see {log}")
            return res
        res["initial_s"] = t_init - t_start
        res["rss_start"] = rss_kib(p.pid)
        n = args.slow_n if delay >= 1 else args.n
        timeout = max(5.0, 3 * delay + 5)
        rng = random.Random(f"latency/{args.seed}")
        lat = {k: [] for k in KINDS}
        missed = {k: 0 for k in KINDS}
        for i in range(n):
            for kind in KINDS:
                t0, cond = do_change(kind, i, src, dst, rng)
                seen = wait_until(cond, timeout)
                if seen is None:
                    missed[kind] += 1
                else:
                    lat[kind].append(max(0.0, seen - t0))
                time.sleep(args.gap / 1000)
            if (i + 1) % 50 == 0 or i + 1 == n:
                print(f"  {i + 1}/{n} rounds, missed {sum(missed.values())}",
                      flush=True)
        res["latency"] = {k: sorted(v) for k, v in lat.items()}
        res["missed"] = missed
        res["n"] = n
        took, rel = burst(src, args.burst, rng)
        t_end = time.perf_counter()
        seen = wait_until(all_present(src / rel, dst / rel),
                          max(120, 3 * delay + 60), step=0.01)
        res["burst"] = {"files": args.burst, "write_s": took,
                        "converge_s": None if seen is None else seen - t_end}
        res["rss_after"] = rss_kib(p.pid)
        time.sleep(max(1.0, 2 * delay + 1))
        res["final_examples"] = []
        res["final_diffs"] = trees_match(src, dst, res["final_examples"])
        res["alive"] = p.poll() is None
    finally:
        stop_subject(p)
    return res


# --------------------------------------------------------------- report ---
def ms(x):
    return "-" if x is None else f"{x * 1000:.1f}"


def report(results: list, args) -> str:
    lines = [f"change-to-replica latency, ms (nearest-rank percentiles; "
             f"gap {args.gap} ms between changes)", ""]
    head = ("subject", "kind", "n", "missed", "p50", "p95", "p99", "max")
    rows = [head]
    extra = []
    for r in results:
        if "error" in r:
            extra.append(f"{r['subject']}: {r['error']}")
            continue
        for kind in KINDS:
            xs = r["latency"][kind]
            rows.append((r["subject"], kind, str(r["n"]), str(r["missed"][kind]),
                         ms(pct(xs, 50)), ms(pct(xs, 95)), ms(pct(xs, 99)),
                         ms(xs[-1] if xs else None)))
        allx = sorted(x for k in KINDS for x in r["latency"][k])
        rows.append((r["subject"], "all", str(len(allx)),
                     str(sum(r["missed"].values())), ms(pct(allx, 50)),
                     ms(pct(allx, 95)), ms(pct(allx, 99)),
                     ms(allx[-1] if allx else None)))
        b = r["burst"]
        conv = "never" if b["converge_s"] is None else f"{b['converge_s']:.2f} s"
        fin = "exact" if r["final_diffs"] == 0 else f"{r['final_diffs']} paths differ"
        rss = r.get("rss_after", {})
        extra.append(
            f"{r['subject']}: initial sync {r['initial_s']:.2f} s; burst of "
            f"{b['files']} files written in {b['write_s']:.2f} s, replica converged "
            f"{conv} after the last one; final replica {fin}; RSS "
            f"{r.get('rss_start', {}).get('VmRSS', '?')} KiB at start, "
            f"{rss.get('VmRSS', '?')} KiB after (peak {rss.get('VmHWM', '?')}; "
            f"main process only){'' if r['alive'] else '; DIED during the run'}")
        extra += [f"    {ex}" for ex in r["final_examples"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for j, row in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines += extra
    return "\n".join(lines)


def find_replicad(arg) -> Path | None:
    if arg:
        return Path(arg).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    p = target / "release" / "replicad"
    return p if os.access(p, os.X_OK) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="replicad vs lsyncd change latency "
                                 "(see bench/README.md)")
    ap.add_argument("--subjects", default=DEFAULT_SUBJECTS,
                    help="comma-separated, from: " + ", ".join(SUBJECTS))
    ap.add_argument("--n", type=int, default=200, help="changes per kind")
    ap.add_argument("--slow-n", type=int, default=5,
                    help="changes per kind for subjects with a delay >= 1 s")
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--gap", type=float, default=50, help="ms between changes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--replicad", help="binary (default target/release/replicad)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "benchdata"))
    args = ap.parse_args(argv)
    subjects = args.subjects.split(",")
    for s in subjects:
        if s not in SUBJECTS:
            ap.error(f"unknown subject {s}")
    replicad = find_replicad(args.replicad)
    if replicad is None and any(s.startswith("replicad") for s in subjects):
        print("latency.py: NOTE no replicad binary (build it or pass --replicad);"
              " skipping the replicad subjects", file=sys.stderr)
        subjects = [s for s in subjects if not s.startswith("replicad")]
    if any(s.startswith("lsyncd") for s in subjects) and not shutil.which("lsyncd"):
        print("latency.py: NOTE lsyncd not installed (apt-get install lsyncd);"
              " skipping it", file=sys.stderr)
        subjects = [s for s in subjects if not s.startswith("lsyncd")]

    work = Path(args.data_dir).resolve() / "latency"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seed_tree = work / "seed"
    make_seed_tree(seed_tree, max(args.n, args.slow_n), args.seed)
    results = []
    for name in subjects:
        print(f"measuring {name} ...", flush=True)
        r = run_subject(name, args, seed_tree, work, replicad)
        results.append(r)
        if "error" in r:
            print(f"  {r['error']}", flush=True)
    text = report(results, args)
    print()
    print(text)
    out = work / time.strftime("latency-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
