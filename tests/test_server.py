"""The daemon over real sockets: /metrics from the store, /healthz, /readyz, restart detection."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import asyncpg
import pytest

from dbwatch import metrics as m
from dbwatch.errors import Reason
from dbwatch.pgcluster import free_port
from dbwatch.server import SCHEDULER
from tests.helpers import eventually, running, sample


def t(name: str, dsn: str, **kw: object) -> dict[str, object]:
    return {"name": name, "dsn": dsn, "interval": 0.5, "timeout": 0.4, **kw}


async def test_metrics_after_a_probe(pg) -> None:
    """probe_up, phases, zeroed failure reasons and last success appear; promtool finds no lint."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        text = await eventually(lambda: _up(d, "main", 1.0), timeout=10)
        assert sample(text, "dbwatch_probe_duration_seconds_count", {"target": "main", "phase": "query"}) >= 1
        for r in Reason:
            assert sample(text, "dbwatch_probe_failures_total", {"target": "main", "reason": r.value}) == 0
        assert sample(text, "dbwatch_probe_last_success_timestamp_seconds", {"target": "main"}) > time.time() - 60
        assert sample(text, "dbwatch_build_info") == 1
        assert sample(text, "process_resident_memory_bytes") > 0
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by scripts/test.sh (Debian package prometheus)"
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr


async def _up(d, target: str, want: float) -> str | None:
    text = await d.metrics()
    return text if sample(text, "dbwatch_probe_up", {"target": target}) == want else None


async def test_scrape_never_touches_the_database(pg) -> None:
    """Many scrapes between two probes run no query: run counters don't move, no extra sessions appear."""
    async with running({"targets": [t("main", pg.dsn, interval=30, timeout=5)]}) as d:
        await eventually(lambda: _up(d, "main", 1.0))
        su = await asyncpg.connect(**pg.cluster.superuser_kwargs())
        try:
            before = await su.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = 'appdb'")
            runs = d.store.counter_value(m.JOB_RUNS, ("probe", "main", "ok"))
            await asyncio.gather(*(d.metrics() for _ in range(200)))
            await su.execute("SELECT pg_stat_clear_snapshot()")
            after = await su.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = 'appdb'")
            assert d.store.counter_value(m.JOB_RUNS, ("probe", "main", "ok")) == runs == 1
            assert after == before
        finally:
            await su.close()


async def test_readyz_flips_with_critical_target_only(pg) -> None:
    """A failing non-critical target keeps /readyz at 200; a failing critical one makes it 503."""
    dead = f"postgresql://app:pw@127.0.0.1:{free_port()}/x"
    async with running({"targets": [t("main", pg.dsn), t("optional", dead, critical=False)]}) as d:
        await eventually(lambda: d.store.status["optional"].last_reason == "refused")
        status, body = await eventually(lambda: _status(d, "/readyz", 200))
        info = json.loads(body)
        assert info["targets"]["optional"]["reason"] == "refused"
        assert info["targets"]["main"]["up"] is True
    async with running({"targets": [t("main", pg.dsn), t("critical_dead", dead, critical=True)]}) as d:
        await eventually(lambda: d.store.status["critical_dead"].last_reason == "refused")
        status, body = await d.get("/readyz")
        assert status == 503
        assert json.loads(body)["targets"]["critical_dead"]["reason"] == "refused"


async def _status(d, path: str, want: int) -> tuple[int, str] | None:
    status, body = await d.get(path)
    return (status, body) if status == want else None


async def test_readyz_flips_when_critical_target_stops_and_recovers(pg_factory) -> None:
    """Stop the server: probe_up 0 within interval+timeout and /readyz 503; start it: back within an interval."""
    c = pg_factory()
    async with running({"targets": [t("db", c.dsn, interval=1.0, timeout=0.5, stale_after=1.6)]}) as d:
        await eventually(lambda: _up(d, "db", 1.0))
        await eventually(lambda: _status(d, "/readyz", 200))
        c.cluster.stop("fast")
        t0 = time.monotonic()
        await eventually(lambda: _up(d, "db", 0.0), timeout=5)
        assert time.monotonic() - t0 <= 1.0 + 0.5 + 0.5  # one interval + timeout (+ scheduling slack)
        await eventually(lambda: _status(d, "/readyz", 503), timeout=5)
        c.cluster.start()
        t1 = time.monotonic()
        await eventually(lambda: _up(d, "db", 1.0), timeout=5)
        assert time.monotonic() - t1 <= 1.0 + 0.5
        text = await d.metrics()
        assert sample(text, "dbwatch_probe_failures_total", {"target": "db", "reason": "refused"}) >= 1


async def test_healthz_fails_when_a_scheduler_task_dies(pg) -> None:
    """Kill a job task: /healthz answers 503 naming it; the body never carries a DSN."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        status, _ = await d.get("/healthz")
        assert status == 200
        app_sched = None
        for task in asyncio.all_tasks():
            if task.get_name() == "job:probe:main":
                task.cancel()
                app_sched = task
        assert app_sched is not None
        status, body = await eventually(lambda: _status(d, "/healthz", 503))
        assert "job:probe:main" in json.loads(body)["dead_tasks"]
        assert "postgresql://" not in body


async def test_health_bodies_never_carry_dsn_or_password(pg) -> None:
    async with running({"targets": [t("main", pg.dsn), t("bad", pg.cluster.dsn("app", "nope", "appdb"))]}) as d:
        await eventually(lambda: d.store.status["bad"].last_reason == "auth_failed")
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            _, body = await d.get(path)
            assert "postgresql://" not in body
            assert pg.password not in body


@pytest.mark.parametrize("n_scrapes", [50])
async def test_concurrent_scrapes_are_consistent(pg, n_scrapes: int) -> None:
    """Concurrent scrapes all succeed and see the same families."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        await eventually(lambda: _up(d, "main", 1.0))
        bodies = await asyncio.gather(*(d.metrics() for _ in range(n_scrapes)))
        assert all("dbwatch_probe_up" in b for b in bodies)
        assert SCHEDULER  # the app key is public for embedding
