"""Benchmark for the in-app hook (issue 7): checkout+checkin cost with and without it, beside OpenTelemetry's.

In one process, on the SQLAlchemy it runs with, it builds identical engines and times `connect()` + `close()`
(one pool checkout and checkin, nothing executed) in interleaved rounds:

- `plain`: no instrumentation;
- `dbwatch`: `dbwatch.hook.instrument()` (sender thread running, reporting to a sidecar that is not there);
- `otel`: opentelemetry-instrumentation-sqlalchemy with the SDK's tracer and meter providers (SQLAlchemy < 2.1
  only: that package refuses 2.1).

OpenTelemetry's instrument() also patches SQLAlchemy process-wide (create_engine, Engine.connect), which slows
every engine, instrumented or not. So `plain` and `dbwatch` are timed first, before it is loaded; then `otel`
beside a `plain` engine in the patched process (`plain+otel-loaded`). Its cost is shown against both baselines.

Two engines kinds: a sync `sqlite` file engine with a QueuePool (pool cost alone), and an `asyncpg` AsyncEngine
against a throwaway PostgreSQL (what an async app runs). It prints the best and median µs per checkout+checkin of
each mode and the µs an instrumentation adds: the median, over rounds, of its time minus plain's in the same round
(back to back, so drift on a busy machine cancels), with the ratio to plain; then RSS and Python heap over
1,000,000 checkouts with the hook, to show memory stays flat. With `--callgrind` it also counts the CPU
instructions per checkout+checkin of each mode on the sqlite engine under valgrind's callgrind (difference of a
3,000- and a 1,000-checkout run): a figure that does not move when other processes load the machine.

Run both SQLAlchemy versions:  .venv/bin/python bench/hook.py --all
One interpreter:               .venv-sa20/bin/python bench/hook.py [--rounds 7] [--n 20000] [--million 1000000]
It prints figures and never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from dbwatch.hook import instrument
from dbwatch.hook.reporter import get_reporter

REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
NOWHERE = "unix:/nonexistent/dbwatch-bench.sock"  # no sidecar: the hook drops and counts, as when it is away
PASSWORD = "bench-pw-not-secret"


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 1e6


def otel_available() -> bool:
    """OpenTelemetry's SQLAlchemy instrumentation and SDK importable, and SQLAlchemy below 2.1 (it refuses 2.1)."""
    if sqlalchemy.__version__.startswith("2.1"):
        return False
    try:
        import opentelemetry.instrumentation.sqlalchemy
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


# CPU time of this thread, not wall time: other processes on a busy machine then barely move the figures. Nothing
# timed here waits on I/O (no statement runs; the pool hands out open connections), and the hook's sender thread
# runs once a second, so per-thread CPU time is the cost the app's request pays.
_clock = time.thread_time


def time_sync(engine: sqlalchemy.Engine, n: int) -> float:
    t0 = _clock()
    for _ in range(n):
        conn = engine.connect()
        conn.close()
    return (_clock() - t0) / n * 1e6


async def time_async(engine: AsyncEngine, n: int) -> float:
    t0 = _clock()
    for _ in range(n):
        conn = await engine.connect()
        await conn.close()
    return (_clock() - t0) / n * 1e6


def added(results: dict[str, list[float]], mode: str, base: str) -> float:
    """Median over rounds of mode minus base, each pair timed back to back in one round."""
    return statistics.median(a - b for a, b in zip(results[mode], results[base], strict=True))


def report(kind: str, results: dict[str, list[float]]) -> None:
    """Per mode: best and median round, and what it adds to plain (paired median) with the ratio."""
    print(f"  {kind}: CPU µs per checkout+checkin, best / median of {len(results['plain'])} interleaved rounds")
    plain = statistics.median(results["plain"])
    for mode, values in results.items():
        best, med = min(values), statistics.median(values)
        extra = ""
        if mode in ("dbwatch", "otel"):
            add = added(results, mode, "plain")
            extra = f"   added {add:+7.2f} µs   ratio {(plain + add) / plain:5.2f}x"
            if mode == "otel":
                extra += f"   (+{added(results, 'otel', 'plain+otel-loaded'):.2f} µs beside plain+otel-loaded)"
        elif mode != "plain":  # plain+otel-loaded: what OTel's process-wide patches cost an engine it did not touch
            extra = f"   (plain +{added(results, mode, 'plain'):.2f} µs once OTel is loaded; not interleaved)"
        print(f"    {mode:19s} {best:8.2f} / {med:8.2f} µs{extra}")
    if "otel" in results:
        hook = added(results, "dbwatch", "plain")
        otel = added(results, "otel", "plain")
        ratio = f"otel/dbwatch = {otel / hook:.1f}x" if hook >= 0.5 else "dbwatch within this run's noise"
        print(f"    otel adds {otel:.1f} µs, dbwatch {hook:.1f} µs: {ratio}")


def make_engines(tmp: Path, pg_url: sqlalchemy.engine.URL | None) -> dict[str, dict[str, Any]]:
    """Every engine first: OpenTelemetry's instrument() also patches create_engine, and runs only once."""
    modes = ["plain", "dbwatch"] + (["otel"] if otel_available() else [])
    out: dict[str, dict[str, Any]] = {"sqlite": {}, "asyncpg": {}}
    for mode in modes:
        out["sqlite"][mode] = sqlalchemy.create_engine(f"sqlite:///{tmp / mode}.db", poolclass=QueuePool, pool_size=5)
        if pg_url is not None:
            out["asyncpg"][mode] = create_async_engine(pg_url, pool_size=5)
    instrument(out["sqlite"]["dbwatch"], "bench", sidecar=NOWHERE, interval=1.0)
    if pg_url is not None:
        instrument(out["asyncpg"]["dbwatch"], "bench-pg", sidecar=NOWHERE, interval=1.0)
    return out


def instrument_otel(engines: list[sqlalchemy.Engine]) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    SQLAlchemyInstrumentor().instrument(
        engines=engines,
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )


def time_rounds(engines: dict[str, sqlalchemy.Engine], rounds: int, n: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {m: [] for m in engines}
    for engine in engines.values():
        time_sync(engine, 2000)  # warm up: connect, caches
    for _ in range(rounds):
        for mode, engine in engines.items():
            results[mode].append(time_sync(engine, n))
    return results


async def time_rounds_async(engines: dict[str, AsyncEngine], rounds: int, n: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {m: [] for m in engines}
    for engine in engines.values():
        await time_async(engine, 500)
    for _ in range(rounds):
        for mode, engine in engines.items():
            results[mode].append(await time_async(engine, n // 4))
    return results


def otel_phase(results: dict[str, list[float]], after: dict[str, list[float]]) -> None:
    """Fold the rounds timed once OTel was loaded into the first phase's: otel is paired with that phase's plain."""
    results["plain+otel-loaded"] = after["plain"]
    results["otel"] = after["otel"]


def bench_both(engines: dict[str, dict[str, Any]], rounds: int, n: int) -> None:
    """plain and dbwatch first; then OpenTelemetry is loaded and otel timed beside plain in the patched process."""
    two = ("plain", "dbwatch")
    sqlite = time_rounds({m: engines["sqlite"][m] for m in two}, rounds, n)
    pg = engines["asyncpg"]
    with asyncio.Runner() as runner:  # one loop throughout: the pooled asyncpg connections belong to it
        asyncpg = runner.run(time_rounds_async({m: pg[m] for m in two}, rounds, n)) if pg else None
        if "otel" in engines["sqlite"]:
            instrument_otel([engines["sqlite"]["otel"]] + ([pg["otel"].sync_engine] if pg else []))
            pair = ("plain", "otel")
            otel_phase(sqlite, time_rounds({m: engines["sqlite"][m] for m in pair}, rounds, n))
            if asyncpg is not None:
                otel_phase(asyncpg, runner.run(time_rounds_async({m: pg[m] for m in pair}, rounds, n)))
        report("sqlite (sync Engine, QueuePool)", sqlite)
        if asyncpg is not None:
            report("asyncpg (AsyncEngine, AsyncAdaptedQueuePool, PostgreSQL on loopback)", asyncpg)
            runner.run(dispose_all(pg.values()))


async def dispose_all(engines: Any) -> None:
    for engine in engines:
        await engine.dispose()


def bench_memory(engine: sqlalchemy.Engine, total: int) -> None:
    step = total // 10
    time_sync(engine, 10_000)
    gc.collect()
    tracemalloc.start()
    heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_mb()
    points: list[str] = []
    for i in range(10):
        time_sync(engine, step)
        if i in (0, 4, 9):
            gc.collect()
            heap = tracemalloc.get_traced_memory()[0] / 1e3
            points.append(f"{(i + 1) * step:>9,d}: RSS {rss_mb():6.1f} MB, heap {heap:8.1f} kB")
    heap1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rep = get_reporter(NOWHERE)
    rep.flush()
    print(f"  memory over {total:,d} checkouts with the hook (start: RSS {rss0:.1f} MB, heap {heap0 / 1e3:.1f} kB)")
    for p in points:
        print(f"    {p}")
    print(f"    heap growth {(heap1 - heap0) / 1e3:+.1f} kB; reports dropped (no sidecar): {rep.dropped}")


def ir_child(mode: str, n: int) -> None:
    """Under callgrind: one sqlite engine in `mode`, warmed up, then n checkouts (the parent diffs two n)."""
    with tempfile.TemporaryDirectory(prefix="dbwatch-bench-") as d:
        engine = sqlalchemy.create_engine(f"sqlite:///{d}/ir.db", poolclass=QueuePool, pool_size=5)
        if mode == "dbwatch":
            instrument(engine, "bench", sidecar=NOWHERE, interval=3600.0)
        elif mode == "otel":
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider

            SQLAlchemyInstrumentor().instrument(
                engines=[engine],
                tracer_provider=TracerProvider(),
                meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            )
        time_sync(engine, 2000)
        time_sync(engine, n)
        engine.dispose()


def bench_callgrind() -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("  callgrind: valgrind not installed, skipped")
        return
    modes = ["plain", "dbwatch"] + (["otel"] if otel_available() else [])
    per: dict[str, float] = {}
    for mode in modes:
        counts = []
        for n in (1000, 3000):
            cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
            out = subprocess.run([*cmd, "--ir-child", mode, str(n)], capture_output=True, text=True, check=False)
            m = re.search(r"Collected : (\d+)", out.stderr)
            if m is None:
                print(f"  callgrind: {mode} run failed: {out.stderr[-300:]}")
                return
            counts.append(int(m.group(1)))
        per[mode] = (counts[1] - counts[0]) / 2000
    print("  sqlite (sync Engine, QueuePool) under callgrind: CPU instructions per checkout+checkin")
    for mode, ir in per.items():
        extra = "" if mode == "plain" else f"   added {ir - per['plain']:+9,.0f}   ratio {ir / per['plain']:5.2f}x"
        print(f"    {mode:8s} {ir:9,.0f}{extra}")


def run_all() -> None:
    for venv in (".venv-sa20", ".venv"):
        py = REPO / venv / "bin" / "python"
        if not py.exists():
            print(f"{venv}: missing (run ./scripts/setup)")
            continue
        subprocess.run([str(py), __file__, *sys.argv[2:]], check=False, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="run under .venv-sa20 (SQLAlchemy 2.0) and .venv (2.1)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=20_000, help="checkouts per round and mode (asyncpg: n/4)")
    parser.add_argument("--million", type=int, default=1_000_000, help="checkouts for the memory check (0: skip)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the asyncpg/PostgreSQL part")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per checkout (valgrind)")
    parser.add_argument("--ir-child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ir_child:
        ir_child(args.ir_child[0], int(args.ir_child[1]))
        return
    if args.all:
        run_all()
        return
    otel = "with OpenTelemetry" if otel_available() else "no OpenTelemetry (it refuses SQLAlchemy 2.1)"
    print(f"SQLAlchemy {sqlalchemy.__version__}, Python {sys.version.split()[0]}: {otel}")
    with tempfile.TemporaryDirectory(prefix="dbwatch-bench-") as d, contextlib.ExitStack() as stack:
        pg_url = None
        if not args.no_postgres:
            from dbwatch.pgcluster import Cluster

            cluster = stack.enter_context(Cluster(version="15", max_connections=50))
            cluster.psql(f"CREATE ROLE bench LOGIN PASSWORD '{PASSWORD}'")
            pg_url = sqlalchemy.engine.URL.create(
                "postgresql+asyncpg", "bench", PASSWORD, cluster.host, cluster.port, "postgres"
            )
        engines = make_engines(Path(d), pg_url)
        bench_both(engines, args.rounds, args.n)
        if args.million:
            bench_memory(engines["sqlite"]["dbwatch"], args.million)
        for engine in engines["sqlite"].values():
            engine.dispose()
    if args.callgrind:
        bench_callgrind()
    print("  target: the hook adds <= 5 µs per checkout+checkin")


if __name__ == "__main__":
    main()
