#!/usr/bin/env python3
"""Resident memory of the service around a burst: idle on an empty SOURCE, right after
100,000 new files (in 100 new directories) have reached REPLICA, and through a minute
of quiet. Usage: bench/burst_rss.py [path/to/replicad] (default: target/release/replicad).
"""
import os
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def files_under(root):
    return sum(len(files) for _, _, files in os.walk(root))


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/replicad"
    with tempfile.TemporaryDirectory(prefix="burst-rss.") as base:
        src, dst, log = (os.path.join(base, n) for n in ("src", "dst", "log"))
        os.mkdir(src)
        with open(log, "w") as err:
            svc = subprocess.Popen([binary, src, dst, "--interval", "1h"], stderr=err)
        try:
            wait_for(lambda: "pass complete" in open(log).read(), 60, "the first pass")
            time.sleep(2)
            print(f"idle: {rss_kib(svc.pid) / 1024:.1f} MiB")
            for d in range(100):
                os.mkdir(os.path.join(src, f"d{d}"))
                for f in range(1000):
                    open(os.path.join(src, f"d{d}", f"f{f}"), "w").close()
            wait_for(lambda: files_under(dst) >= 100_000, 300, "the burst to reach REPLICA")
            print(f"converged: {rss_kib(svc.pid) / 1024:.1f} MiB")
            for i in range(6):
                time.sleep(10)
                print(f"quiet {10 * (i + 1)} s: {rss_kib(svc.pid) / 1024:.1f} MiB")
        finally:
            svc.terminate()
            svc.wait()


if __name__ == "__main__":
    main()
