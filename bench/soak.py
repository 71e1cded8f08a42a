"""Bounded soak (issue 6): one `dbwatch run`, 20 targets, faults injected on a loop of fixed length, 10 scrapes/s.

Targets: 16 databases on a cluster that the fault loop breaks and repairs (stop, SIGKILL, immediate restart,
dbwatch's sessions terminated), 2 on a steady cluster, a loopback port that accepts and never answers, and a name
under `.invalid` (resolved in a private mount namespace whose resolver is 127.0.0.1, as in tests/faults).
A scraper thread GETs /metrics 10 times a second over one keep-alive connection. Every report period it prints
elapsed time, RSS, open fds, scrape p50/p99/max and errors in that period, and the fault then in force. At the end
it prints RSS and fds at start and end and the growth against the stated bounds, and checks the counts are exact:
every probe run is counted once as ok, error or timeout, and the failure counters equal the error+timeout runs.

Five log files (`logs.sources`, format plain) grow at --log-rate MB/s in total (default 2), each rotated by
rename + create every --rotate-mb MB, with a logged traceback every 200 lines; at the end (once the backlog is read)
the lines and tracebacks dbwatch counted are checked against what was written, and the rotations it saw.

Run: .venv/bin/python bench/soak.py [--duration 600] [--cycle 40] [--report 30] [--targets 20] [--rate 10]
     [--log-files 5] [--log-rate 2] [--rotate-mb 20]
It prints figures and never asserts. Loopback only; every loop is bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dbwatch.pgcluster import Cluster  # the repo root is on sys.path first (ruff's E402 allows sys.path edits)
from tests.faults.harness import (
    UNRESOLVABLE_HOST,
    Blackhole,
    DaemonProcess,
    open_fds,
    resolver_isolation,
    rss_bytes,
)

PASSWORD = "soak-pw-not-secret"
RSS_BOUND_MIB = 16.0  # stated bound: RSS growth from the first report to the end
FD_BOUND = 10  # stated bound: open-fd growth (sockets in flight at the moment of sampling)


class Scraper(threading.Thread):
    """GET /metrics at a fixed rate over one keep-alive connection until stopped; keeps latencies per period."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(name="scraper", daemon=True)
        self.port, self.period = port, 1.0 / rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.total = 0

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            lat, err = self.latencies, self.errors
            self.latencies, self.errors = [], 0
        return lat, err

    def run(self) -> None:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=5)
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = HTTPConnection("127.0.0.1", self.port, timeout=5)
            with self.lock:
                self.total += 1
                if ok:
                    self.latencies.append(time.perf_counter() - t0)
                else:
                    self.errors += 1
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        conn.close()


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/app/views.py", line 42, in login\n'
    "    user = await repo.get(uid)\n"
    '  File "/srv/app/app/repo.py", line 17, in get\n'
    "    return row.email\n"
    "sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called; can't call await_only() here.\n"
)


class LogWriter(threading.Thread):
    """Appends plain log lines (a traceback every 200 lines) to n files at a total rate, rotating by rename+create."""

    def __init__(self, paths: list[Path], mb_per_s: float, rotate_mb: float) -> None:
        super().__init__(name="logwriter", daemon=True)
        self.paths, self.rate, self.rotate = paths, mb_per_s * 1e6, rotate_mb * 1e6
        self.stop = threading.Event()
        self.lines = dict.fromkeys((p.stem for p in paths), 0)
        self.tracebacks = dict.fromkeys((p.stem for p in paths), 0)
        self.rotations = dict.fromkeys((p.stem for p in paths), 0)
        self.bytes = 0

    def run(self) -> None:
        files = {p: p.open("ab") for p in self.paths}
        sizes = dict.fromkeys(self.paths, 0)
        tick = 0.1
        per_file = int(self.rate * tick / len(self.paths))  # bytes per file per tick
        n = 0
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                for p, f in files.items():
                    chunk: list[str] = []
                    size = 0
                    while size < per_file:
                        n += 1
                        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                        if n % 200 == 0:
                            rec = f"{stamp},000 ERROR [app.auth] login failed for user {n}\n{TRACEBACK}"
                            self.tracebacks[p.stem] += 1
                        else:
                            rec = f"{stamp},000 INFO [app.access] 10.0.0.{n % 250} GET /api/items/{n} 200 0.0{n % 9}s\n"
                        chunk.append(rec)
                        size += len(rec)
                        self.lines[p.stem] += rec.count("\n")
                    f.write("".join(chunk).encode())
                    f.flush()
                    sizes[p] += size
                    self.bytes += size
                    if sizes[p] >= self.rotate:  # rename + create, as logrotate without copytruncate
                        f.close()
                        os.replace(p, p.with_suffix(".log.1"))
                        files[p] = p.open("ab")
                        sizes[p] = 0
                        self.rotations[p.stem] += 1
                next_at += tick
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for f in files.values():
                f.close()


def log_counts(port: int) -> dict[str, dict[str, float]]:
    """Per log source: lines, exceptions, rotations (rename) and backlog bytes from one scrape."""
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[str, dict[str, float]] = {}
    names = {
        "dbwatch_log_lines_total": "lines",
        "dbwatch_log_exceptions_total": "exceptions",
        "dbwatch_log_rotations_total": "rotations",
        "dbwatch_log_backlog_bytes": "backlog",
    }
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = names.get(s.name)
            if key is None or (key == "rotations" and s.labels.get("kind") != "rename"):
                continue
            row = out.setdefault(s.labels["source"], dict.fromkeys(names.values(), 0.0))
            row[key] += s.value
    return out


def _start(cluster: Cluster) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.start()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return


def _terminate_sessions(cluster: Cluster, seconds: float) -> int:
    async def storm() -> int:
        su = await asyncpg.connect(**cluster.superuser_kwargs())
        n = 0
        try:
            stmt = await su.prepare(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'dbwatch%' AND pid <> pg_backend_pid()"
            )
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                n += await stmt.fetchval()
                await asyncio.sleep(0.005)
        finally:
            await su.close()
        return int(n)

    return asyncio.run(storm())


def faults(cluster: Cluster, hold: float) -> list[tuple[str, Callable[[], None]]]:
    """The fault loop: (name, action) pairs; each action breaks, holds for `hold` seconds and repairs."""

    def stop() -> None:
        cluster.stop("fast")
        time.sleep(hold)
        _start(cluster)

    def kill() -> None:
        cluster.kill9()
        time.sleep(hold)
        _start(cluster)

    def restart() -> None:
        cluster.stop("immediate")
        _start(cluster)
        time.sleep(hold)

    def terminate() -> None:
        _terminate_sessions(cluster, hold)

    return [("stopped", stop), ("sigkill", kill), ("restart", restart), ("terminate", terminate)]


def _ms(sorted_lat: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted latencies in ms; NaN when there are none."""
    if not sorted_lat:
        return float("nan")
    return sorted_lat[min(len(sorted_lat) - 1, int(q * len(sorted_lat)))] * 1e3


def counts(port: int) -> dict[str, dict[str, float]]:
    """Per target: probe runs by result and the sum of its failure counters, from one scrape."""
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "dbwatch_job_runs_total" and s.labels.get("job") == "probe":
                row = out.setdefault(s.labels["target"], {"ok": 0.0, "error": 0.0, "timeout": 0.0, "failures": 0.0})
                row[s.labels["result"]] += s.value
            elif s.name == "dbwatch_probe_failures_total":
                row = out.setdefault(s.labels["target"], {"ok": 0.0, "error": 0.0, "timeout": 0.0, "failures": 0.0})
                row["failures"] += s.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="total seconds (bounded)")
    ap.add_argument("--cycle", type=float, default=40.0, help="seconds per fault step (break, hold, repair, rest)")
    ap.add_argument("--report", type=float, default=30.0, help="seconds between report lines")
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--rate", type=float, default=10.0, help="scrapes per second")
    ap.add_argument("--interval", type=float, default=2.0, help="probe interval per target")
    ap.add_argument("--log-files", type=int, default=5)
    ap.add_argument("--log-rate", type=float, default=2.0, help="MB/s written, in total over the log files")
    ap.add_argument("--rotate-mb", type=float, default=20.0, help="rotate each log file after this many MB")
    args = ap.parse_args()
    prefix = resolver_isolation()
    if prefix is None:
        print("soak: needs root and unshare to keep the .invalid lookup on loopback", file=sys.stderr)
        return 1
    n_faulty = max(1, args.targets - 4)
    logdir = Path(tempfile.mkdtemp(prefix="dbwatch-soak-logs-"))
    log_paths = [logdir / f"app{i}.log" for i in range(args.log_files)]
    for p in log_paths:
        p.touch()
    (logdir / "state").mkdir()
    sources = [{"name": p.stem, "path": str(p), "format": "plain"} for p in log_paths]
    logs_cfg = {"sources": sources, "state_dir": str(logdir / "state")}
    with Cluster(max_connections=150) as faulty, Cluster(max_connections=50) as steady, Blackhole() as hole:
        targets: list[dict[str, object]] = []
        for c, n, prefix_name in ((faulty, n_faulty, "f"), (steady, 2, "s")):
            c.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
            c.psql("GRANT pg_monitor TO app")
            for i in range(n):
                c.psql(f"CREATE DATABASE {prefix_name}{i:02d} OWNER app")
                name = f"{prefix_name}{i:02d}"
                targets.append({"name": name, "dsn": c.dsn("app", PASSWORD, name)})
        targets.append({"name": "hang", "dsn": f"postgresql://app:x@127.0.0.1:{hole.port}/x", "critical": False})
        targets.append({"name": "dns", "dsn": f"postgresql://app:x@{UNRESOLVABLE_HOST}:5432/x", "critical": False})
        for t in targets:
            t.update(interval=args.interval, timeout=min(args.interval, 1.0))
        config = {"log": {"level": "warning"}, "targets": targets, "logs": logs_cfg}
        daemon = DaemonProcess(config, prefix=prefix).start()
        # The daemon runs under `unshare ... sh -c 'exec python'`: its pid is the dbwatch process after exec.
        pid = daemon.pid
        scraper = Scraper(daemon.port, args.rate)
        scraper.start()
        writer = LogWriter(log_paths, args.log_rate, args.rotate_mb)
        writer.start()
        steps = faults(faulty, hold=min(args.cycle / 4, 10.0))
        seen: list[str] = []  # faults begun since the last report line
        stop_faults = threading.Event()

        def fault_loop() -> None:
            i = 0
            while not stop_faults.is_set():
                name, action = steps[i % len(steps)]
                seen.append(name)
                action()
                stop_faults.wait(max(0.0, args.cycle - min(args.cycle / 4, 10.0)))
                i += 1

        fault_thread = threading.Thread(target=fault_loop, name="faults", daemon=True)
        print(
            f"soak: {len(targets)} targets ({n_faulty} on the faulted cluster), interval {args.interval:g}s, "
            f"{args.rate:g} scrapes/s, fault step {args.cycle:g}s, {args.duration:g}s total; {args.log_files} log "
            f"files at {args.log_rate:g} MB/s in total, rotated every {args.rotate_mb:g} MB"
        )
        print(f"{'t(s)':>6} {'RSS MiB':>8} {'fds':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errs':>4}  fault")
        start = time.monotonic()
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (0.0, 0)
        fault_thread.start()
        try:
            while time.monotonic() - start < args.duration:
                time.sleep(min(args.report, max(0.0, args.duration - (time.monotonic() - start))))
                lat, errs = scraper.take()
                lat.sort()
                rss, fds = rss_bytes(pid) / 2**20, open_fds(pid)
                faults_line = ",".join(seen) or "-"
                seen.clear()
                last = (rss, fds)
                if first is None:
                    first = last
                print(
                    f"{time.monotonic() - start:6.0f} {rss:8.1f} {fds:4d} {_ms(lat, 0.5):7.2f} {_ms(lat, 0.99):7.2f} "
                    f"{_ms(lat, 1.0):7.2f} {errs:4d}  {faults_line}",
                    flush=True,
                )
        finally:
            stop_faults.set()
            writer.stop.set()
            writer.join(10)
            fault_thread.join(60)
            scraper.stop.set()
            scraper.join(10)
            with contextlib.suppress(Exception):
                _start(faulty)
            time.sleep(args.interval * 2)
            final = counts(daemon.port) if daemon.alive() else {}
            logs: dict[str, dict[str, float]] = {}
            drain_deadline = time.monotonic() + 120  # bounded: the backlog left when writing stopped
            while daemon.alive():
                logs = log_counts(daemon.port)
                done = all(logs.get(k, {}).get("lines") == v for k, v in writer.lines.items())
                if done or time.monotonic() > drain_deadline:
                    break
                time.sleep(1)
            alive = daemon.alive()
            code = daemon.stop()
            daemon.cleanup()
    if first is None:
        print("soak: no report period completed", file=sys.stderr)
        return 1
    total = {k: sum(row[k] for row in final.values()) for k in ("ok", "error", "timeout", "failures")}
    off = {t: row for t, row in final.items() if row["failures"] != row["error"] + row["timeout"]}
    print(f"soak: dbwatch alive to the end: {alive}; exit code after SIGTERM: {code}; scrapes: {scraper.total}")
    print(
        f"soak: RSS {first[0]:.1f} -> {last[0]:.1f} MiB (growth {last[0] - first[0]:+.1f}, bound {RSS_BOUND_MIB:g}); "
        f"fds {first[1]} -> {last[1]} (growth {last[1] - first[1]:+d}, bound {FD_BOUND})"
    )
    print(
        f"soak: probe runs {total['ok'] + total['error'] + total['timeout']:.0f} = ok {total['ok']:.0f} + error "
        f"{total['error']:.0f} + timeout {total['timeout']:.0f}; dbwatch_probe_failures_total {total['failures']:.0f}"
        f" ({'exact' if not off else 'MISMATCH'})"
    )
    lines_ok = all(logs.get(k, {}).get("lines") == v for k, v in writer.lines.items())
    exc_ok = all(logs.get(k, {}).get("exceptions") == v for k, v in writer.tracebacks.items())
    rot_ok = all(logs.get(k, {}).get("rotations") == v for k, v in writer.rotations.items())
    print(
        f"soak: logs {writer.bytes / 1e6:.0f} MB written in {len(log_paths)} files; lines {sum(writer.lines.values())} "
        f"written, {sum(r.get('lines', 0) for r in logs.values()):.0f} counted ({'exact' if lines_ok else 'MISMATCH'});"
        f" tracebacks {sum(writer.tracebacks.values())} written, "
        f"{sum(r.get('exceptions', 0) for r in logs.values()):.0f} counted ({'exact' if exc_ok else 'MISMATCH'}); "
        f"rotations {sum(writer.rotations.values())} done, {sum(r.get('rotations', 0) for r in logs.values()):.0f} "
        f"seen ({'exact' if rot_ok else 'MISMATCH'})"
    )
    if not (lines_ok and exc_ok and rot_ok):
        for k in sorted(writer.lines):
            print(
                f"soak:   {k}: lines {writer.lines[k]}/{logs.get(k, {}).get('lines', 0):.0f} tracebacks "
                f"{writer.tracebacks[k]}/{logs.get(k, {}).get('exceptions', 0):.0f} rotations "
                f"{writer.rotations[k]}/{logs.get(k, {}).get('rotations', 0):.0f}"
            )
    shutil.rmtree(logdir, ignore_errors=True)
    for target, row in sorted(off.items()):
        print(
            f"soak:   {target}: error {row['error']:.0f} + timeout {row['timeout']:.0f} runs, "
            f"failures_total {row['failures']:.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
