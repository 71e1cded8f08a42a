"""Benchmark for issue 13: what N dbwatch sidecars cost one database, this design vs the duplicating one.

One throwaway PostgreSQL 15 (log_statement=all, log_connections=on, log_line_prefix '%a|%u|') with a few held app
sessions. N `dbwatch run` processes (N = 1, 5, 20 by default), each a sidecar of its own "pod": the probe connects as
the app role (`app`), the monitoring session as the monitoring role (`dbwatch`, the README's recipe). Each N runs
twice: `collect.mode: auto` (this design: one instance per database collects, advisory lock) and
`collect.mode: always` (every instance collects: what the design before issue 13 did). For each it prints, over a
measurement window after warm-up:

- database-wide statements per collection interval (server log, monitoring role), and the probes' statements;
- persistent dbwatch sessions (sampled each second, max; a session older than 1.5 s counts);
- new server connections per second (log_connections, both roles);
- total series across the N scrapes, and the database-wide ones among them.

Target: database-wide statements, sessions and series independent of N. It never asserts.

Run: .venv/bin/python bench/replicas.py [--counts 1 5 20] [--interval 2] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import yaml

from dbwatch.pgcluster import Cluster, free_port

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench-replicas-pw"
PERSISTENT = "backend_start < now() - interval '1.5 seconds'"
# The README's role (CONNECTION LIMIT 2) for this design; the old design needs a role without a limit (N sessions).
MONITOR_ROLE = {"auto": "dbwatch", "always": "dbwatch_old"}


@dataclass
class Figures:
    n: int
    design: str
    db_wide_statements: float  # per collection interval
    probe_statements: float  # per probe interval
    sessions: int
    connections_per_s: float
    series: int
    db_wide_series: int


@contextlib.contextmanager
def sidecars(n: int, mode: str, cluster: Cluster, interval: float, workdir: Path) -> Iterator[list[int]]:
    """N `dbwatch run` processes; yields their ports once every one answers /healthz."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(n):
            port = free_port()
            target = {
                "name": "db",
                "dsn": cluster.dsn("app", PASSWORD, "appdb"),
                "interval": interval,
                "timeout": min(1.0, interval / 2),
                "own_sessions": {"application_name": f"pod-{i}"},
                "collect": {"dsn": cluster.dsn(MONITOR_ROLE[mode], PASSWORD, "appdb"), "mode": mode},
            }
            cfg = workdir / f"dbwatch-{mode}-{i}.yaml"
            cfg.write_text(
                yaml.safe_dump({"listen": f"127.0.0.1:{port}", "log": {"level": "warning"}, "targets": [target]})
            )
            argv = [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO))
            ports.append(port)
        for port in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


async def measure(n: int, mode: str, cluster: Cluster, interval: float, window: float, workdir: Path) -> Figures:
    admin = await asyncpg.connect(**cluster.superuser_kwargs())
    try:
        with sidecars(n, mode, cluster, interval, workdir) as ports:
            await asyncio.sleep(3 * interval + 2)  # warm-up: start-up jitter, the lock taken, first collections
            start = cluster.logfile.stat().st_size
            t0 = time.monotonic()
            sessions = 0
            while time.monotonic() - t0 < window:
                q = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbwatch' AND {PERSISTENT}"  # noqa: S608
                sessions = max(sessions, await admin.fetchval(q))
                await asyncio.sleep(1.0)
            elapsed = time.monotonic() - t0
            with cluster.logfile.open("rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").splitlines()
            bodies = [await asyncio.to_thread(scrape, p) for p in ports]
    finally:
        await admin.close()

    def statements(user: str) -> int:
        prefix = f"dbwatch|{user}|"
        return sum(1 for ln in lines if ln.startswith(prefix) and ("statement: " in ln or "execute " in ln))

    conns = sum(1 for ln in lines if "connection authorized: user=" in ln and "application_name=dbwatch" in ln)
    samples = [ln for b in bodies for ln in b.splitlines() if ln and not ln.startswith("#")]
    ticks = elapsed / interval
    return Figures(
        n=n,
        design="this (auto)" if mode == "auto" else "old (always)",
        db_wide_statements=statements(MONITOR_ROLE[mode]) / ticks,
        probe_statements=statements("app") / ticks,
        sessions=sessions,
        connections_per_s=conns / elapsed,
        series=len(samples),
        db_wide_series=sum(1 for ln in samples if ln.startswith("dbwatch_pg_")),
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--interval", type=float, default=2.0, help="probe and collection interval (s)")
    ap.add_argument("--window", type=float, default=20.0, help="measurement window per run (s)")
    args = ap.parse_args()
    settings = {"log_statement": "'all'", "log_connections": "on", "log_line_prefix": "'%a|%u|'"}
    with Cluster(version="15", max_connections=100, settings=settings) as cluster, tempfile.TemporaryDirectory() as d:
        cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("CREATE DATABASE appdb OWNER app")
        cluster.psql(f"CREATE ROLE dbwatch LOGIN PASSWORD '{PASSWORD}' CONNECTION LIMIT 2")
        cluster.psql(f"CREATE ROLE dbwatch_old LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("GRANT pg_monitor TO dbwatch, dbwatch_old")
        held = [
            await asyncpg.connect(cluster.dsn("app", PASSWORD, "appdb"), server_settings={"application_name": a})
            for a in ("shop", "shop", "shop", "worker", "worker")
        ]
        await held[0].execute("BEGIN; SELECT 1")
        results: list[Figures] = []
        try:
            for n in args.counts:
                for mode in ("auto", "always"):
                    fig = await measure(n, mode, cluster, args.interval, args.window, Path(d))
                    results.append(fig)
                    print(f"  measured n={n} {fig.design}", file=sys.stderr, flush=True)
        finally:
            for c in held:
                c.terminate()
    print(
        f"bench/replicas.py: N dbwatch sidecars on one PostgreSQL 15; interval {args.interval:g}s,"
        f" window {args.window:g}s"
    )
    print("design 'old (always)': every instance collects, as before issue 13 (measured, not computed)")
    head = (
        f"{'N':>3} {'design':<13} {'db-wide stmts/interval':>23} {'probe stmts/interval':>21} "
        f"{'persistent sessions':>20} {'new conns/s':>12} {'series (all N)':>15} {'db-wide series':>15}"
    )
    print(head)
    for f in results:
        print(
            f"{f.n:>3} {f.design:<13} {f.db_wide_statements:>23.2f} {f.probe_statements:>21.2f} {f.sessions:>20} "
            f"{f.connections_per_s:>12.2f} {f.series:>15} {f.db_wide_series:>15}"
        )
    print("old/this ratios (database-wide statements, persistent sessions, database-wide series):")
    for n in args.counts:
        new = next(f for f in results if f.n == n and f.design.startswith("this"))
        old = next(f for f in results if f.n == n and f.design.startswith("old"))

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.1f}x" if b else "n/a"

        print(
            f"  N={n:>2}: statements {ratio(old.db_wide_statements, new.db_wide_statements)}, "
            f"sessions {ratio(old.sessions, new.sessions)}, series {ratio(old.db_wide_series, new.db_wide_series)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
