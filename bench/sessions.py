"""Benchmark for issue 4: the cost of session metrics to the database, dbwatch vs prometheus-postgres-exporter.

One throwaway PostgreSQL 15 (log_statement=all, log_connections=on, log_line_prefix '%a|%p|') with ~50 held client
connections in mixed states over two databases (idle, idle in transaction, active pg_sleep). Both tools connect as
the same pg_monitor role and are told apart by application_name (`dbwatch`, `postgres_exporter`). Then:

- postgres_exporter (Debian's package, default collectors) is scraped N times in a row: every scrape queries;
- dbwatch (`dbwatch run` subprocess) collects N times on its own schedule (pg_activity + pg_database), and is then
  scraped N times (a scrape only reads memory);
- each is scraped by C concurrent clients for a few rounds, counting new server connections.

For both it prints: SQL statements per collection (from the server log, by application_name), PG backend CPU per
collection (/proc of the tool's backends), the tool's own CPU per scrape, scrape latency p50/p95, RSS, series count,
connections opened under concurrent scrapes, and the dbwatch/postgres_exporter ratios. It never asserts.

Run: .venv/bin/python bench/sessions.py [--scrapes 100] [--concurrency 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from dbwatch.pgcluster import Cluster, free_port

PASSWORD = "bench-pw-not-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
COLLECTORS = ("pg_activity", "pg_database")
EXPORTER = shutil.which("prometheus-postgres-exporter") or "/usr/bin/prometheus-postgres-exporter"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    k = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return sorted_values[k]


class ServerLog:
    """Reads the server log from an offset and counts statements and connections per application_name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since(self, app: str, pid: int | None = None) -> tuple[int, int, set[int]]:
        """(statements, connections authorized, backend pids) logged for app (one backend) since the mark."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        statements = connections = 0
        pids: set[int] = set()
        prefix = f"{app}|" if pid is None else f"{app}|{pid}|"
        for line in text.splitlines():
            if not line.startswith(prefix):
                continue
            pid = line.split("|", 2)[1]
            if pid.isdigit():
                pids.add(int(pid))
            # simple protocol: "statement: ..."; extended: "execute <name>: ..." (parse/bind are not logged)
            if "statement: " in line or " execute " in line:
                statements += 1
            elif "connection authorized" in line:
                connections += 1
        return statements, connections, pids


@dataclass
class Figures:
    """What one tool cost."""

    name: str
    logged: float = 0.0  # collections while statements were logged
    statements: int = 0
    collections: float = 0.0  # collections while backend CPU was measured (statement logging off)
    backend_cpu: float = 0.0
    scrape_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rss: int = 0
    series: int = 0
    session_series: int = 0
    concurrent_connections: int = 0
    new_connections: int = 0  # opened during the CPU phase
    max_backends: int = 0

    @property
    def per_collection(self) -> float:
        return self.statements / max(1.0, self.logged)

    @property
    def cpu_per_collection(self) -> float:
        return self.backend_cpu / max(1.0, self.collections)


def scrape_many(port: int, n: int) -> tuple[list[float], str]:
    """n sequential scrapes over one keep-alive connection; latencies and the last body."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    body = b""
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
        latencies.append(time.perf_counter() - t0)
    conn.close()
    return sorted(latencies), body.decode()


def scrape_once(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return str(r.read().decode())


def count_series(body: str, prefixes: tuple[str, ...]) -> tuple[int, int]:
    """(all samples, samples of families starting with one of prefixes)."""
    total = sessions = 0
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            total += 1
            if s.name.startswith(prefixes):
                sessions += 1
    return total, sessions


def wait_http(port: int, ready: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if ready in scrape_once(port):
                return
        time.sleep(0.2)
    raise RuntimeError(f"no {ready} on port {port}")


async def log_statements(admin: asyncpg.Connection, on: bool) -> None:
    """Statement logging counts statements but costs the server CPU per statement byte: only on while counting."""
    await admin.execute(f"ALTER SYSTEM SET log_statement = '{'all' if on else 'none'}'")
    await admin.execute("SELECT pg_reload_conf()")
    await asyncio.sleep(0.2)  # backends apply the reload at their next command


def backend_cpu(pids: set[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


async def hold_workload(dsn_app: str, dsn_other: str) -> tuple[list[asyncpg.Connection], list[asyncio.Future[object]]]:
    """~50 client sessions: idle, idle in transaction and active pg_sleep, over two databases."""
    conns: list[asyncpg.Connection] = []
    sleepers: list[asyncio.Future[object]] = []
    plan = [(dsn_app, "web", 20, "idle"), (dsn_app, "worker", 8, "iit"), (dsn_app, "report", 5, "active")]
    plan += [(dsn_other, "web", 10, "idle"), (dsn_other, "worker", 5, "iit"), (dsn_other, "cron", 2, "active")]
    for dsn, app, n, state in plan:
        for _ in range(n):
            c = await asyncpg.connect(dsn, server_settings={"application_name": app})
            conns.append(c)
            if state == "iit":
                await c.execute("BEGIN; SELECT 1")
            elif state == "active":
                sleepers.append(asyncio.ensure_future(c.execute("SELECT pg_sleep(3600)")))
    return conns, sleepers


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def concurrent_scrapes(port: int, concurrency: int, rounds: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            list(pool.map(lambda _: scrape_once(port), range(concurrency)))


async def max_backends(admin: asyncpg.Connection, app: str, stop: asyncio.Event) -> int:
    most = 0
    while not stop.is_set():
        n = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
        most = max(most, n)
        await asyncio.sleep(0.01)
    return most


async def during(admin: asyncpg.Connection, app: str, fn: object, *args: object) -> int:
    """Run a blocking fn in a thread while sampling the app's backend count; return the maximum seen."""
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(max_backends(admin, app, stop))
    try:
        await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
    finally:
        stop.set()
    return await sampler


async def bench_exporter(
    args: argparse.Namespace, cluster: Cluster, log: ServerLog, admin: asyncpg.Connection
) -> Figures:
    f = Figures("postgres_exporter")
    port = free_port()
    dsn = (
        f"postgresql://monitor:{PASSWORD}@127.0.0.1:{cluster.port}/appdb"
        "?sslmode=disable&application_name=postgres_exporter"
    )
    argv = [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]
    with process(argv, {"DATA_SOURCE_NAME": dsn}) as proc:
        wait_http(port, "pg_up 1")
        await log_statements(admin, True)
        log.mark()
        await asyncio.to_thread(scrape_many, port, args.logged)
        f.statements, _, _ = log.since("postgres_exporter")
        f.logged = args.logged  # every scrape is a collection
        await log_statements(admin, False)
        log.mark()
        pids = {
            r["pid"]
            for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = 'postgres_exporter'")
        }
        cpu0, own0 = backend_cpu(pids), cpu_seconds(proc.pid)
        f.latencies, body = await asyncio.to_thread(scrape_many, port, args.scrapes)
        now = {
            r["pid"]
            for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = 'postgres_exporter'")
        }
        f.backend_cpu = backend_cpu(pids) - cpu0 + backend_cpu(now - pids)
        f.scrape_cpu = (cpu_seconds(proc.pid) - own0) / args.scrapes
        f.collections = args.scrapes
        f.new_connections = log.since("postgres_exporter")[1]
        f.rss = rss_bytes(proc.pid)
        f.series, f.session_series = count_series(body, ("pg_stat_activity", "pg_stat_database", "pg_settings"))
        log.mark()
        f.max_backends = await during(
            admin, "postgres_exporter", concurrent_scrapes, port, args.concurrency, args.rounds
        )
        f.concurrent_connections = log.since("postgres_exporter")[1]
    return f


async def bench_dbwatch(
    args: argparse.Namespace, cluster: Cluster, log: ServerLog, admin: asyncpg.Connection
) -> Figures:
    f = Figures("dbwatch")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "dbwatch.yaml"
        cfg.write_text(
            f"listen: '127.0.0.1:{port}'\nlog: {{level: warning}}\ntargets:\n"
            f"  - name: bench\n    dsn: 'postgresql://monitor:{PASSWORD}@127.0.0.1:{cluster.port}/appdb'\n"
            f"    interval: 3600s\n    timeout: 5s\n"
            f"    collect: {{interval: {args.collect_interval}, budget: {args.collect_interval}}}\n"
        )
        with process([sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)]) as proc:
            wait_http(port, 'dbwatch_job_runs_total{job="pg_database",result="ok",target="bench"} 1')

            def runs() -> float:
                total = 0.0
                for fam in text_string_to_metric_families(scrape_once(port)):
                    for s in fam.samples:
                        if s.name == "dbwatch_job_runs_total" and s.labels.get("job") in COLLECTORS:
                            total += s.value
                return total / len(COLLECTORS)  # a collection cycle = one run of each collector

            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'dbwatch' AND state = 'idle'"
            )
            # Collections only (no scrapes but the ones that read the run counter).
            await log_statements(admin, True)
            log.mark()
            r0 = runs()
            await asyncio.sleep(args.logged * args.collect_interval)
            f.logged = runs() - r0
            f.statements, _, _ = log.since("dbwatch", pid)
            await log_statements(admin, False)
            log.mark()
            r0, cpu0, own0, t0 = runs(), cpu_seconds(pid), cpu_seconds(proc.pid), time.monotonic()
            await asyncio.sleep(args.scrapes * args.collect_interval)
            r1, cpu1, own1, t1 = runs(), cpu_seconds(pid), cpu_seconds(proc.pid), time.monotonic()
            f.collections = r1 - r0
            f.backend_cpu = cpu1 - cpu0
            f.new_connections = log.since("dbwatch")[1]
            idle_rate = (own1 - own0) / (t1 - t0)
            # Scrapes: the tool's CPU beyond what its collections take in the same time.
            own0, t0 = cpu_seconds(proc.pid), time.monotonic()
            log.mark()
            f.latencies, body = await asyncio.to_thread(scrape_many, port, args.scrapes)
            f.scrape_cpu = max(0.0, (cpu_seconds(proc.pid) - own0) - idle_rate * (time.monotonic() - t0)) / args.scrapes
            f.rss = rss_bytes(proc.pid)
            f.series, f.session_series = count_series(body, ("dbwatch_pg_",))
            log.mark()
            f.max_backends = await during(admin, "dbwatch", concurrent_scrapes, port, args.concurrency, args.rounds)
            f.concurrent_connections = log.since("dbwatch")[1]
    return f


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(d: Figures, e: Figures, args: argparse.Namespace) -> None:
    rows = [
        (
            "SQL statements per collection",
            f"{d.per_collection:.2f}",
            f"{e.per_collection:.2f}",
            ratio(d.per_collection, e.per_collection),
        ),
        (
            "PG backend CPU per collection (ms)",
            f"{d.cpu_per_collection * 1e3:.2f}",
            f"{e.cpu_per_collection * 1e3:.2f}",
            ratio(d.cpu_per_collection, e.cpu_per_collection),
        ),
        (
            "tool CPU per scrape (ms)",
            f"{d.scrape_cpu * 1e3:.2f}",
            f"{e.scrape_cpu * 1e3:.2f}",
            ratio(d.scrape_cpu, e.scrape_cpu),
        ),
        (
            "scrape p50 (ms)",
            f"{percentile(d.latencies, 0.5) * 1e3:.2f}",
            f"{percentile(e.latencies, 0.5) * 1e3:.2f}",
            ratio(percentile(d.latencies, 0.5), percentile(e.latencies, 0.5)),
        ),
        (
            "scrape p95 (ms)",
            f"{percentile(d.latencies, 0.95) * 1e3:.2f}",
            f"{percentile(e.latencies, 0.95) * 1e3:.2f}",
            ratio(percentile(d.latencies, 0.95), percentile(e.latencies, 0.95)),
        ),
        ("RSS (MiB)", f"{d.rss / 2**20:.1f}", f"{e.rss / 2**20:.1f}", ratio(d.rss, e.rss)),
        ("series in one scrape (all)", str(d.series), str(e.series), ratio(d.series, e.series)),
        (
            "  of which session/database/settings",
            str(d.session_series),
            str(e.session_series),
            ratio(d.session_series, e.session_series),
        ),
        (
            f"connections opened, {args.rounds}x{args.concurrency} concurrent scrapes",
            str(d.concurrent_connections),
            str(e.concurrent_connections),
            "-",
        ),
        ("max backends of the tool during them", str(d.max_backends), str(e.max_backends), "-"),
    ]
    print(f"sessions benchmark: PostgreSQL 15, {args.held} held client sessions in mixed states over 2 databases")
    print(f"  postgres_exporter: {args.scrapes} scrapes (each one a collection)")
    print(
        f"  statements counted over {args.logged} collections with log_statement=all; CPU measured with it off "
        f"(connections opened meanwhile: dbwatch {d.new_connections}, postgres_exporter {e.new_connections})"
    )
    print(
        f"  dbwatch: {d.collections:.0f} collections of pg_activity + pg_database every {args.collect_interval}s, "
        f"then {args.scrapes} scrapes (memory only)"
    )
    w = max(len(r[0]) for r in rows)
    print(f"  {'':{w}}  {'dbwatch':>10}  {'pg_exporter':>11}  {'ratio':>7}")
    for name, a, b, r in rows:
        print(f"  {name:{w}}  {a:>10}  {b:>11}  {r:>7}")
    print("  (ratio = dbwatch / postgres_exporter; targets: <= 2 statements, <= 0.25x backend CPU, p50 <= 1x)")


async def run(args: argparse.Namespace) -> int:
    settings = {
        "log_connections": "on",
        "log_line_prefix": "'%a|%p| '",
        "max_connections": "150",
    }
    with Cluster(version="15", settings=settings) as cluster:
        cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql(f"CREATE ROLE monitor LOGIN PASSWORD '{PASSWORD}'")
        cluster.psql("GRANT pg_monitor TO monitor")
        cluster.psql("CREATE DATABASE appdb OWNER app")
        cluster.psql("CREATE DATABASE otherdb OWNER app")
        admin = await asyncpg.connect(**cluster.superuser_kwargs(), server_settings={"application_name": "bench"})
        base = f"postgresql://app:{PASSWORD}@127.0.0.1:{cluster.port}"
        conns, sleepers = await hold_workload(f"{base}/appdb", f"{base}/otherdb")
        args.held = len(conns)
        log = ServerLog(cluster.logfile)
        try:
            exporter = await bench_exporter(args, cluster, log, admin)
            dbwatch = await bench_dbwatch(args, cluster, log, admin)
        finally:
            for s in sleepers:
                s.cancel()
            for c in conns:
                c.terminate()
            await admin.close()
    report(dbwatch, exporter, args)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrapes", type=int, default=100, help="scrapes of each tool, and dbwatch collections")
    ap.add_argument("--collect-interval", type=float, default=0.2, help="dbwatch collection interval (seconds)")
    ap.add_argument("--logged", type=int, default=20, help="collections counted with statement logging on")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
