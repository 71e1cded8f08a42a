"""Fleet benchmark (issue 6): one dbwatch watching >= 50 targets: series count, scrape cost, CPU and RSS.

Starts a throwaway PostgreSQL cluster with N databases (loopback only) and `dbwatch run` as a subprocess with
one target per database, waits until every target was probed, then over a fixed window prints:

- the series /metrics carries (all samples, and the `dbwatch_` ones) and its size;
- /metrics latency over a bounded number of scrapes (p50/p99/max);
- the daemon's RSS at the end and its CPU use over the window (percent of one core, and per probe);
- the same figures for a one-target sidecar, for sizing deploy/'s resource requests and limits.

Run: .venv/bin/python bench/fleet.py [--targets 50] [--interval 15] [--window 60] [--scrapes 300]
It prints figures and never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from scrape import cpu_seconds, percentile, rss_bytes

from dbwatch.pgcluster import Cluster, free_port

PASSWORD = "bench-pw-not-secret"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def series(text: str) -> tuple[int, int, float]:
    """(all samples, dbwatch_ samples, probe runs) in one exposition."""
    total = ours = 0
    runs = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            total += 1
            ours += s.name.startswith("dbwatch_")
            if s.name == "dbwatch_job_runs_total" and s.labels.get("job") == "probe":
                runs += s.value
    return total, ours, runs


def measure(cluster: Cluster, n: int, interval: float, window: float, scrapes: int, tmp: Path) -> dict[str, float]:
    port = free_port()
    cfg = tmp / f"dbwatch-{n}.yaml"
    lines = [f"listen: '127.0.0.1:{port}'", "log: {level: warning}", "targets:"]
    for i in range(n):
        lines += [
            f"  - name: db{i:03d}",
            f"    dsn: 'postgresql://app:{PASSWORD}@127.0.0.1:{cluster.port}/db{i:03d}'",
            f"    interval: {interval}",
            f"    timeout: {min(interval, 5.0)}",
        ]
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if series(scrape(port))[2] >= n:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("dbwatch did not probe every target within 60 s")
            time.sleep(0.2)
        runs0, cpu0, t0 = series(scrape(port))[2], cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        text = scrape(port)
        runs1, cpu1, t1 = series(text)[2], cpu_seconds(proc.pid), time.monotonic()
        total, ours, _ = series(text)
        conn = HTTPConnection("127.0.0.1", port, timeout=5)
        lat: list[float] = []
        for _ in range(scrapes):  # bounded
            s0 = time.perf_counter()
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            lat.append(time.perf_counter() - s0)
        conn.close()
        lat.sort()
        return {
            "targets": n,
            "series": total,
            "dbwatch_series": ours,
            "bytes": len(text),
            "p50_ms": percentile(lat, 0.5) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": lat[-1] * 1e3,
            "rss_mib": rss_bytes(proc.pid) / 2**20,
            "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "cpu_ms_per_probe": (cpu1 - cpu0) / max(1.0, runs1 - runs0) * 1e3,
            "probes": runs1 - runs0,
            "window": t1 - t0,
        }
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--interval", type=float, default=15.0, help="probe interval per target (seconds)")
    ap.add_argument("--window", type=float, default=60.0, help="CPU measurement window (seconds)")
    ap.add_argument("--scrapes", type=int, default=300)
    args = ap.parse_args()
    with Cluster(max_connections=max(100, args.targets + 20)) as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("GRANT pg_monitor TO app")
        for i in range(args.targets):
            cluster.psql(f"CREATE DATABASE db{i:03d} OWNER app")
        results = [measure(cluster, n, args.interval, args.window, args.scrapes, Path(tmp)) for n in (1, args.targets)]
    print(f"dbwatch fleet benchmark: probe interval {args.interval:g}s, {args.window:g}s window, loopback cluster")
    for r in results:
        print(
            f"  {r['targets']:3.0f} targets: {r['series']:5.0f} series ({r['dbwatch_series']:.0f} dbwatch_), "
            f"{r['bytes'] / 1024:.0f} KiB/scrape; /metrics p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
            f"max {r['max_ms']:.2f} ms; RSS {r['rss_mib']:.1f} MiB; CPU {r['cpu_pct']:.2f}% of a core "
            f"({r['probes']:.0f} probes, {r['cpu_ms_per_probe']:.2f} ms CPU each)"
        )
    one, many = results
    per_target = (many["rss_mib"] - one["rss_mib"]) / max(1, many["targets"] - 1)
    print(
        f"  RSS per extra target: {per_target * 1024:.0f} KiB; series per target: "
        f"{(many['dbwatch_series'] - one['dbwatch_series']) / max(1, many['targets'] - 1):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
