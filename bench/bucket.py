#!/usr/bin/env python3
"""replicad into an S3 bucket against rclone, side by side (issue #12).

Starts one real Garage node (single-node, loopback, temporary directories; the
recipe of NOTES.md §7 and tests/support/garage.rs) and times, on the same
corpus as bench/run.py (the small profile by default: 10,000 files):

  first upload  SOURCE -> an empty prefix
  no-op         the same again (nothing changed)
  1% changed    a prefix holding the pristine mirror (uploaded untimed by the
                same tool) -> the changed source

for each tool:

  replicad           replicad --once SRC s3://BUCKET/PREFIX
  rclone             rclone sync -M -l --s3-directory-markers
                     --create-empty-src-dirs SRC G:BUCKET/PREFIX
  rclone-checksum    the same with --checksum (hashes every source file and
                     compares with LIST's ETags instead of a HEAD per object);
                     no first upload (it is rclone's)

Each tool writes its own prefixes; the tools take turns within each round, the
order rotating.  Wall time, user+sys CPU and peak RSS per run (bench/run.py's
`timed`); medians and ratios to replicad, and #12's targets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402

BUCKET = "bench"
REGION = "garage"
TOOLS = ("replicad", "rclone", "rclone-checksum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Garage:
    """One Garage node with a default bucket and key, killed on stop()."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "garage"
        self.dir.mkdir(parents=True)
        rpc, self.s3, admin = free_port(), free_port(), free_port()
        self.key_id = "GK" + os.urandom(12).hex()
        self.secret = os.urandom(32).hex()
        self.config = self.dir / "garage.toml"
        self.config.write_text(
            f'metadata_dir = "{self.dir}/meta"\ndata_dir = "{self.dir}/data"\n'
            f'db_engine = "sqlite"\nreplication_factor = 1\n'
            f'rpc_bind_addr = "127.0.0.1:{rpc}"\nrpc_public_addr = "127.0.0.1:{rpc}"\n'
            f'rpc_secret = "{os.urandom(32).hex()}"\n\n'
            f'[s3_api]\ns3_region = "{REGION}"\napi_bind_addr = "127.0.0.1:{self.s3}"\n\n'
            f'[admin]\napi_bind_addr = "127.0.0.1:{admin}"\n'
            f'admin_token = "{os.urandom(16).hex()}"\n')
        env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=self.key_id,
                   GARAGE_DEFAULT_SECRET_KEY=self.secret,
                   GARAGE_DEFAULT_BUCKET=BUCKET, RUST_LOG="garage=warn")
        self.log = open(self.dir / "garage.log", "wb")
        self.proc = subprocess.Popen(
            ["garage", "-c", str(self.config), "server", "--single-node",
             "--default-bucket"], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"bucket.py: garage exited; see {self.dir}/garage.log")
            ok = subprocess.run(["garage", "-c", str(self.config), "bucket", "info",
                                 BUCKET], capture_output=True,
                                env=dict(os.environ, RUST_LOG="warn")).returncode == 0
            if ok:
                return
            time.sleep(0.2)
        sys.exit("bucket.py: garage did not start within 60 s")

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def env(self) -> dict:
        """What replicad and rclone read to reach the bucket."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint(),
            "AWS_ALLOW_HTTP": "true",
            "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_G_TYPE": "s3",
            "RCLONE_CONFIG_G_PROVIDER": "Other",
            "RCLONE_CONFIG_G_ENDPOINT": self.endpoint(),
            "RCLONE_CONFIG_G_REGION": REGION,
            "RCLONE_CONFIG_G_FORCE_PATH_STYLE": "true",
            "RCLONE_CONFIG_G_ACCESS_KEY_ID": self.key_id,
            "RCLONE_CONFIG_G_SECRET_ACCESS_KEY": self.secret,
        }

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def tool_cmd(tool: str, src: Path, prefix: str, replicad: Path) -> list:
    if tool == "replicad":
        return [replicad, "--once", "-q", src, f"s3://{BUCKET}/{prefix}"]
    cmd = ["rclone", "sync", "-M", "-l", "--s3-directory-markers",
           "--create-empty-src-dirs", src, f"G:{BUCKET}/{prefix}"]
    if tool == "rclone-checksum":
        cmd.insert(2, "--checksum")
    return cmd


class Bench:
    def __init__(self, args, trees, replicad: Path, logs: Path):
        self.args, self.trees, self.replicad, self.logs = args, trees, replicad, logs
        self.results: dict[tuple, list] = {}

    def measure(self, scenario, tool, src, prefix, *, timed=True):
        cmd = tool_cmd(tool, src, prefix, self.replicad)
        log = self.logs / f"{scenario.replace(' ', '-')}-{tool}-{prefix}.log"
        if not timed:
            wall, cpu, rss, rc = run.timed(cmd, log, self.args.timeout)
            if rc not in (0, 23) or (rc == 23 and tool != "replicad"):
                sys.exit(f"bucket.py: untimed {tool} to {prefix} failed (rc={rc}); see {log}")
            return None
        os.sync()
        wall, cpu, rss, rc = run.timed(cmd, log, self.args.timeout)
        s = run.Sample(wall, cpu, rss, rc)
        self.results.setdefault((scenario, tool), []).append(s)
        print(f"  {scenario:<13} {tool:<16} {wall:8.3f}s  cpu {cpu:6.2f}s  "
              f"rss {rss / 1024:6.1f} MiB  rc={rc}", flush=True)
        return s

    # (round, tool) pairs, the order rotating each round: the same as bench/run.py.
    rounds = run.Bench.rounds

    def run(self):
        src, base, mut = self.trees["src"], self.trees["base"], self.trees["mut"]
        writers = ["replicad", "rclone"]
        if "first" in self.args.scenarios or "noop" in self.args.scenarios:
            for r, tool in self.rounds(writers):
                self.measure("first upload", tool, src, f"{tool}-r{r}",
                             timed="first" in self.args.scenarios)
        if "noop" in self.args.scenarios:
            for r, tool in self.rounds(list(TOOLS)):
                owner = "rclone" if tool == "rclone-checksum" else tool
                self.measure("no-op", tool, src, f"{owner}-r{r}")
        if "changed" in self.args.scenarios:
            for r, tool in self.rounds(list(TOOLS)):
                prefix = f"{tool}-chg-r{r}"
                self.measure("1% changed", tool, base, prefix, timed=False)
                self.measure("1% changed", tool, mut, prefix)


def report(results: dict) -> list:
    rows = []
    for scenario in ("first upload", "no-op", "1% changed"):
        base = results.get((scenario, "replicad"))
        base_med = statistics.median(s.wall for s in base) if base else None
        for tool in TOOLS:
            samples = results.get((scenario, tool))
            if not samples:
                continue
            wall = statistics.median(s.wall for s in samples)
            rows.append({
                "scenario": scenario, "tool": tool, "wall": wall,
                "min": min(s.wall for s in samples), "max": max(s.wall for s in samples),
                "cpu": statistics.median(s.cpu for s in samples),
                "rss": max(s.rss_kib for s in samples) / 1024,
                "ratio": wall / base_med if base_med else None,
                "rc": sorted({s.rc for s in samples}), "n": len(samples)})
    return rows


def targets(rows) -> list:
    by = {(r["scenario"], r["tool"]): r for r in rows}
    out = []

    def judge(label, a, b, need, at_least=True, key="wall"):
        ra, rb = by.get(a), by.get(b)
        if not ra or not rb:
            return
        ratio = rb[key] / ra[key]
        ok = ratio >= need if at_least else ratio <= need
        out.append(f"{'met   ' if ok else 'MISSED'} {label}: {ratio:.2f} (need "
                   f"{'≥' if at_least else '≤'} {need})")

    judge("first upload no slower than rclone (rclone/replicad)",
          ("first upload", "replicad"), ("first upload", "rclone"), 1.0)
    judge("no-op ≥ 5× faster than rclone", ("no-op", "replicad"), ("no-op", "rclone"), 5.0)
    judge("no-op ≥ 2× faster than rclone --checksum", ("no-op", "replicad"),
          ("no-op", "rclone-checksum"), 2.0)
    judge("1% changed ≥ 3× faster than rclone", ("1% changed", "replicad"),
          ("1% changed", "rclone"), 3.0)
    rss_r = max((r["rss"] for r in rows if r["tool"] == "replicad"), default=None)
    rss_c = max((r["rss"] for r in rows if r["tool"] == "rclone"), default=None)
    if rss_r and rss_c:
        ok = rss_r <= rss_c
        out.append(f"{'met   ' if ok else 'MISSED'} memory no more than rclone's: "
                   f"{rss_r:.1f} MiB against {rss_c:.1f} MiB (peak RSS)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="small", choices=("small", "default", "huge"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--percent", type=float, default=1.0)
    ap.add_argument("--replicad", help="replicad binary (default: target/release/replicad)")
    ap.add_argument("--data-dir", default="/work/benchdata")
    ap.add_argument("--scenarios", default="first,noop,changed")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    args.flavour = "plain"
    args.scenarios = args.scenarios.split(",")
    for exe in ("garage", "rclone"):
        if not shutil.which(exe):
            sys.exit(f"bucket.py: {exe} is not on PATH (see .ci/run)")
    replicad = run.find_replicad(args.replicad)
    if replicad is None:
        sys.exit("bucket.py: no replicad binary")
    data = Path(args.data_dir).resolve() / args.profile
    trees = run.prepare_trees(args, data)
    work = Path(tempfile.mkdtemp(prefix="replicad-bucket-bench-"))
    garage = Garage(work)
    os.environ.update(garage.env())
    # replicad's own state (the xattr mark) stays out of the user's.
    os.environ["REPLICAD_STATE_DIR"] = str(work / "state")
    logs = work / "logs"
    logs.mkdir()
    try:
        bench = Bench(args, trees, replicad, logs)
        bench.run()
    finally:
        garage.stop()
    rows = report(bench.results)
    print()
    print("| scenario | tool | median s | min–max s | × replicad | cpu s | peak RSS MiB | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['tool']} | {r['wall']:.3f} | {r['min']:.3f}–"
              f"{r['max']:.3f} | {r['ratio']:.2f} | {r['cpu']:.2f} | {r['rss']:.1f} | "
              f"{','.join(map(str, r['rc']))} |")
    print()
    for line in targets(rows):
        print(f"- {line}")
    info = run.machine_info(data, {"replicad": replicad})
    info["rclone"] = run.version_of(["rclone"])
    info["garage"] = run.version_of(["garage"])
    for k in ("rsync", "cp", "find"):
        info.pop(k, None)
    print(f"\nmachine: {info}")
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
