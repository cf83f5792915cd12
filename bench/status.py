#!/usr/bin/env python3
"""What the status endpoint costs the mirror, and how fast it answers.

    python3 bench/status.py SRC [--rounds 3] [--passes 5] [--changes 20]

SRC is a corpus (e.g. `corpus.py --profile default`, 100,000 files).  A replica is made
once with `replicad --once`; then, in the same run and alternating round by round, the
service is started on that pair in two ways:

  plain    replicad SRC DST --interval I
  status   the same with --status-addr unix:SOCK, and a scraper GETting /metrics every
           100 ms for the whole run (its answer times are recorded)

In each run: the no-op pass duration (the `duration` field of the `pass complete` lines
after the first pass; nothing changes between them), then event latency (a new 1 KiB
file created, time until the replica has it, polled about every millisecond; one at a
time, --changes of them).  The figures are medians per subject, their ratio (status /
plain), and the scrape's p50/p99 over all status runs.  Percentiles are nearest-rank.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[rank]


def scrape(sock: str) -> float:
    """One GET /metrics over the Unix socket; the answer time in seconds."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    took = time.perf_counter() - start
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        raise RuntimeError(data[:200])
    return took


class Scraper(threading.Thread):
    def __init__(self, sock: str):
        super().__init__(daemon=True)
        self.sock, self.times, self.stop, self.failures = sock, [], threading.Event(), 0

    def run(self):
        while not self.stop.is_set():
            try:
                self.times.append(scrape(self.sock))
            except OSError:
                self.failures += 1
            self.stop.wait(0.1)


def passes(log: Path) -> list[float]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "pass complete" in line:
            for field in line.split():
                if field.startswith("duration="):
                    out.append(float(field.split("=", 1)[1]))
    return out


def one_run(binary, src, dst, interval, want_passes, changes, with_status, workdir):
    log = workdir / f"log-{'status' if with_status else 'plain'}-{time.time_ns()}"
    sock = str(workdir / "status.sock")
    args = [binary, str(src), str(dst), "--interval", f"{interval}s"]
    if with_status:
        args += ["--status-addr", f"unix:{sock}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICAD_")}
    with open(log, "w") as err:
        proc = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL, env=env)
    scraper = None
    try:
        if with_status:
            deadline = time.time() + 60
            while not os.path.exists(sock) and time.time() < deadline:
                time.sleep(0.01)
            scraper = Scraper(sock)
            scraper.start()
        deadline = time.time() + 600
        while len(passes(log)) < want_passes + 1 and time.time() < deadline:
            time.sleep(0.2)
        noop = passes(log)[1 : want_passes + 1]
        lat = []
        probe = src / "status-bench"
        probe.mkdir(exist_ok=True)
        for i in range(changes):
            name = f"n{time.time_ns()}-{i}"
            with open(probe / name, "wb") as f:
                f.write(os.urandom(1024))
            start = time.perf_counter()
            target = dst / "status-bench" / name
            while True:
                try:
                    if target.stat().st_size == 1024:
                        break
                except FileNotFoundError:
                    pass
                if time.perf_counter() - start > 10:
                    break
                time.sleep(0.001)
            lat.append(time.perf_counter() - start)
            time.sleep(0.2)
        return noop, lat, (scraper.times if scraper else [])
    finally:
        if scraper:
            scraper.stop.set()
            scraper.join()
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--replicad", default=str(REPO / "target/release/replicad"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=5, help="no-op passes per run")
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--changes", type=int, default=20, help="event latency samples per run")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    a = ap.parse_args()
    src = a.src.resolve()
    with tempfile.TemporaryDirectory(prefix="replicad-status-bench.", dir=src.parent) as tmp:
        work = Path(tmp)
        dst = work / "replica"
        subprocess.run([a.replicad, "--once", "-q", str(src), str(dst)], check=True)
        samples = {"plain": {"noop": [], "latency": []}, "status": {"noop": [], "latency": []}}
        scrapes = []
        for r in range(a.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            for with_status in order:
                name = "status" if with_status else "plain"
                noop, lat, times = one_run(
                    a.replicad, src, dst, a.interval, a.passes, a.changes, with_status, work
                )
                samples[name]["noop"] += noop
                samples[name]["latency"] += lat
                scrapes += times
                print(f"round {r + 1} {name}: no-op median {statistics.median(noop):.3f} s, "
                      f"latency median {statistics.median(lat) * 1000:.1f} ms", file=sys.stderr)
        res = {}
        for name in ("plain", "status"):
            res[name] = {
                "noop_median_s": statistics.median(samples[name]["noop"]),
                "latency_median_ms": statistics.median(samples[name]["latency"]) * 1000,
                "latency_p99_ms": percentile(samples[name]["latency"], 99) * 1000,
            }
        res["ratio_noop"] = res["status"]["noop_median_s"] / res["plain"]["noop_median_s"]
        res["ratio_latency"] = res["status"]["latency_median_ms"] / res["plain"]["latency_median_ms"]
        res["scrapes"] = len(scrapes)
        res["scrape_p50_ms"] = percentile(scrapes, 50) * 1000
        res["scrape_p99_ms"] = percentile(scrapes, 99) * 1000
        print(json.dumps(res, indent=2))
        if a.json:
            a.json.write_text(json.dumps({"summary": res, "samples": samples,
                                          "scrapes": scrapes}, indent=1))
        shutil_rm = subprocess.run(["rm", "-rf", str(src / "status-bench")])
        return shutil_rm.returncode


if __name__ == "__main__":
    sys.exit(main())
