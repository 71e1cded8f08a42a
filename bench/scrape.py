"""Benchmark for the daemon foundation (issue 3): scrape latency, RSS and CPU per probe cycle.

Starts a throwaway PostgreSQL cluster and `dbwatch run` as a subprocess with 10 targets (ten databases on the
cluster, loopback only), waits for every target to be probed, then:

- scrapes /metrics 1,000 times over one keep-alive connection (bounded loop) and prints p50/p99/max;
- reads the daemon's RSS from /proc;
- measures the daemon's CPU time over a fixed window with no scrapes and divides it by the probe runs in that
  window (from dbwatch_job_runs_total), which gives CPU seconds per probe cycle (connect + SELECT 1 + close).

Run: .venv/bin/python bench/scrape.py [--targets 10] [--scrapes 1000] [--window 20]
It prints figures and never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dbwatch.pgcluster import Cluster, free_port

PASSWORD = "bench-pw-not-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/statm."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def probe_runs(port: int) -> float:
    """Total probe job runs (all results) from a scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "dbwatch_job_runs_total" and s.labels.get("job") == "probe":
                total += s.value
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    k = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return sorted_values[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0, help="probe interval per target (seconds)")
    ap.add_argument("--window", type=float, default=20.0, help="idle CPU measurement window (seconds)")
    args = ap.parse_args()

    with Cluster(max_connections=50) as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        for i in range(args.targets):
            cluster.psql(f"CREATE DATABASE db{i} OWNER app")
        port = free_port()
        cfg = Path(tmp) / "dbwatch.yaml"
        lines = [f"listen: '127.0.0.1:{port}'", "log: {level: warning}", "targets:"]
        for i in range(args.targets):
            lines += [
                f"  - name: db{i}",
                f"    dsn: 'postgresql://app:{PASSWORD}@127.0.0.1:{cluster.port}/db{i}'",
                f"    interval: {args.interval}",
                f"    timeout: {min(args.interval, 2.0)}",
            ]
        cfg.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError):
                    if probe_runs(port) >= args.targets:
                        break
                if time.monotonic() > deadline:
                    print("bench: dbwatch did not come up", file=sys.stderr)
                    return 1
                time.sleep(0.2)

            conn = HTTPConnection("127.0.0.1", port, timeout=5)
            latencies: list[float] = []
            size = 0
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read()
                latencies.append(time.perf_counter() - t0)
                size = len(body)
            conn.close()
            latencies.sort()

            runs0, cpu0, t0 = probe_runs(port), cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.window)
            runs1, cpu1, t1 = probe_runs(port), cpu_seconds(proc.pid), time.monotonic()
            rss = rss_bytes(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)

    cycles = max(1.0, runs1 - runs0 - 1)  # minus the scrape that counted the window's last run
    print(f"dbwatch scrape benchmark: {args.targets} targets, probe interval {args.interval:g}s")
    print(
        f"  /metrics over {args.scrapes} scrapes ({size} bytes each): "
        f"p50 {percentile(latencies, 0.50) * 1e3:.2f} ms, p99 {percentile(latencies, 0.99) * 1e3:.2f} ms, "
        f"max {latencies[-1] * 1e3:.2f} ms, mean {statistics.fmean(latencies) * 1e3:.2f} ms"
    )
    print(f"  dbwatch RSS after the run: {rss / 2**20:.1f} MiB")
    print(
        f"  CPU over a {t1 - t0:.1f}s idle window: {cpu1 - cpu0:.3f} s for {cycles:.0f} probe cycles "
        f"= {(cpu1 - cpu0) / cycles * 1e3:.2f} ms CPU per probe cycle "
        f"({(cpu1 - cpu0) / (t1 - t0) * 100:.1f}% of one core)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
