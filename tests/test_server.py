"""The daemon over real sockets: /metrics from the store, /healthz, /readyz, restart detection."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import shutil
import subprocess
import time

import aiohttp
import asyncpg
import pytest

from dbwatch import metrics as m
from dbwatch.errors import Reason
from dbwatch.pgcluster import free_port
from tests.faults.harness import Blackhole
from tests.helpers import PG, Daemon, PGFactory, eventually, running, sample, value


def t(name: str, dsn: str, **kw: object) -> dict[str, object]:
    return {"name": name, "dsn": dsn, "interval": 0.5, "timeout": 0.4, **kw}


async def test_metrics_after_a_probe(pg: PG) -> None:
    """probe_up, phases, zeroed failure reasons and last success appear; promtool finds no lint."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        text = await eventually(lambda: _up(d, "main", 1.0), timeout=10)
        assert value(text, "dbwatch_probe_duration_seconds_count", {"target": "main", "phase": "query"}) >= 1
        for r in Reason:
            assert sample(text, "dbwatch_probe_failures_total", {"target": "main", "reason": r.value}) == 0
        assert (
            sample(text, "dbwatch_probe_last_success_timestamp_seconds", {"target": "main"}) or 0
        ) > time.time() - 60
        assert sample(text, "dbwatch_build_info") == 1
        assert value(text, "process_resident_memory_bytes") > 0
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by scripts/test.sh (Debian package prometheus)"
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr


async def _up(d: Daemon, target: str, want: float) -> str | None:
    text = await d.metrics()
    return text if sample(text, "dbwatch_probe_up", {"target": target}) == want else None


async def test_scrape_never_touches_the_database(pg: PG) -> None:
    """Many scrapes between two probes run no query: run counters don't move, no extra sessions appear."""
    async with running({"targets": [t("main", pg.dsn, interval=30, timeout=5)]}) as d:
        await eventually(lambda: _up(d, "main", 1.0))
        # The collectors (pg_activity, pg_database) run on their own schedule: let their first run pass too.
        jobs = ("probe", "pg_activity", "pg_database")
        await eventually(lambda: all(d.store.counter_value(m.JOB_RUNS, (j, "main", "ok")) >= 1 for j in jobs))
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


async def test_readyz_gates_only_on_opted_in_targets(pg: PG) -> None:
    """A failing target keeps /readyz at 200 by default (critical or not); one with gate_readiness makes it 503."""
    dead = f"postgresql://app:pw@127.0.0.1:{free_port()}/x"
    async with running({"targets": [t("main", pg.dsn), t("down", dead, critical=True)]}) as d:
        await eventually(lambda: d.store.status["down"].last_reason == "refused")
        status, body = await eventually(lambda: _status(d, "/readyz", 200))
        info = json.loads(body)
        assert info["checks"] == {"config_loaded": True, "listeners_up": True, "first_cycle_done": True}
        assert info["targets"]["down"] == {
            "gates_readiness": False,
            "up": False,
            "fresh": False,
            "last_success_age_seconds": None,
            "reason": "refused",
        }
        assert info["targets"]["main"]["up"] is True
    async with running({"targets": [t("main", pg.dsn), t("gating", dead, gate_readiness=True)]}) as d:
        await eventually(lambda: d.store.status["gating"].last_reason == "refused")
        status, body = await d.get("/readyz")
        assert status == 503
        assert json.loads(body)["targets"]["gating"]["reason"] == "refused"


async def test_readyz_waits_for_the_first_cycle() -> None:
    """/readyz is 503 until every job has finished one run (here a probe that hangs until its timeout), then 200."""
    with Blackhole() as hole:
        hang = f"postgresql://app:pw@127.0.0.1:{hole.port}/x"
        async with running({"targets": [t("hang", hang, interval=5, timeout=2)]}) as d:
            status, body = await d.get("/readyz")
            assert (status, json.loads(body)["checks"]["first_cycle_done"]) == (503, False)
            _, body = await eventually(lambda: _status(d, "/readyz", 200), timeout=10)
            assert json.loads(body)["targets"]["hang"]["reason"] == "timeout"


async def _status(d: Daemon, path: str, want: int) -> tuple[int, str] | None:
    status, body = await d.get(path)
    return (status, body) if status == want else None


async def test_readyz_through_a_database_stop_default_and_opt_in(pg_factory: PGFactory) -> None:
    """Stop the server: the default daemon's /readyz stays 200 throughout, the opted-in one's turns 503 (and back).

    Both watch the same server at once; probe_up goes to 0 within interval+timeout in both.
    """
    c = pg_factory()
    common = {"interval": 1.0, "timeout": 0.5, "stale_after": 1.6}
    async with (
        running({"targets": [t("db", c.dsn, **common)]}) as plain,
        running({"targets": [t("db", c.dsn, gate_readiness=True, **common)]}) as gated,
    ):
        for d in (plain, gated):
            await eventually(functools.partial(_up, d, "db", 1.0))
            await eventually(functools.partial(_status, d, "/readyz", 200))
        seen: list[int] = []

        async def gated_down() -> bool:
            seen.append((await plain.get("/readyz"))[0])
            return await _status(gated, "/readyz", 503) is not None

        c.cluster.stop("fast")
        t0 = time.monotonic()
        await eventually(lambda: _up(plain, "db", 0.0), timeout=5)
        assert time.monotonic() - t0 <= 1.0 + 0.5 + 0.5  # one interval + timeout (+ scheduling slack)
        await eventually(gated_down, timeout=5)
        # Well past stale_after: the default daemon still answers 200 (its pod stays in its Service).
        await eventually(lambda: time.monotonic() - t0 > 2 * common["stale_after"] and gated_down(), timeout=10)
        assert set(seen) == {200}
        c.cluster.start()
        t1 = time.monotonic()
        await eventually(lambda: _up(gated, "db", 1.0), timeout=5)
        assert time.monotonic() - t1 <= 1.0 + 0.5
        await eventually(lambda: _status(gated, "/readyz", 200), timeout=5)
        text = await plain.metrics()
        assert value(text, "dbwatch_probe_failures_total", {"target": "db", "reason": "refused"}) >= 1


async def test_healthz_fails_when_a_scheduler_task_dies(pg: PG) -> None:
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


async def test_health_bodies_never_carry_dsn_or_password(pg: PG) -> None:
    async with running({"targets": [t("main", pg.dsn), t("bad", pg.cluster.dsn("app", "nope", "appdb"))]}) as d:
        await eventually(lambda: d.store.status["bad"].last_reason == "auth_failed")
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            _, body = await d.get(path)
            assert "postgresql://" not in body
            assert pg.password not in body


@pytest.mark.parametrize("n_scrapes", [50])
async def test_concurrent_scrapes_are_consistent(pg: PG, n_scrapes: int) -> None:
    """Concurrent scrapes all succeed and see the same families."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        await eventually(lambda: _up(d, "main", 1.0))
        bodies = await asyncio.gather(*(d.metrics() for _ in range(n_scrapes)))
        assert all("dbwatch_probe_up" in b for b in bodies)


def _store_part(text: str) -> list[str]:
    """The exposition lines that come from the store (process_* and python_info change on every scrape)."""
    return [ln for ln in text.splitlines() if "process_" not in ln and "python_info" not in ln]


def _samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def test_concurrent_scrapes_share_one_body_until_the_store_changes() -> None:
    """Ten scrapes at once get the same body (text and OpenMetrics); a change shows in the next scrape."""
    refused = f"postgresql://app:x@127.0.0.1:{free_port()}/x"
    target = {"name": "gone", "dsn": refused, "interval": 30, "timeout": 1, "collect": {"collectors": []}}
    om = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
    async with running({"targets": [target]}) as d:
        await eventually(lambda: d.store.counter_value(m.JOB_RUNS, ("probe", "gone", "error")) == 1)
        for headers in ({}, om):
            bodies = await asyncio.gather(*(d.get("/metrics", headers=headers) for _ in range(10)))
            parts = {tuple(_store_part(body)) for _, body in bodies}
            assert len(parts) == 1
            assert sample(bodies[0][1], "dbwatch_probe_failures_total", {"target": "gone", "reason": "refused"}) == 1
        d.store.inc(m.PROBE_FAILURES, ("gone", "refused"))
        d.store.replace(("extra", "gone"), [])
        text = await d.metrics()
        assert sample(text, "dbwatch_probe_failures_total", {"target": "gone", "reason": "refused"}) == 2
        _, om_text = await d.get("/metrics", headers=om)
        assert om_text.endswith("# EOF\n")
        assert om_text.count("# EOF") == 1
        assert sample(om_text, "dbwatch_probe_failures_total", {"target": "gone", "reason": "refused"}) == 2


async def test_cached_exposition_equals_a_full_render_and_renders_only_what_changed(pg: PG) -> None:
    """After real probes and collections the cached body parses to the same samples as a full render; one target's
    new snapshot re-renders that target's fragments only; dropped series disappear."""
    from prometheus_client import CollectorRegistry, generate_latest

    from dbwatch.server import Scrape
    from dbwatch.store import Sample, StoreCollector

    def full(store: object) -> str:
        reg = CollectorRegistry(auto_describe=True)
        reg.register(StoreCollector(store))  # type: ignore[arg-type]
        return generate_latest(reg).decode()

    # Two targets on one database: `always`, as `auto` would collect its database-wide work for one of them only.
    both = {"collect": {"mode": "always"}}
    async with running({"targets": [t("a", pg.dsn, **both), t("b", pg.dsn, **both)]}) as d:
        await eventually(lambda: d.store.gauge_value(m.PG_CONNECTIONS_USED_RATIO, ("b",)) is not None, timeout=10)
        d.stop.set()  # freeze the store: the daemon stops, its store stays
    store = d.store
    scrape = Scrape(store)
    expo = scrape.exposition()
    assert _samples(expo.render().decode()) == _samples(full(store))
    before = expo.fragments_rendered
    assert expo.render() is expo.render()  # nothing changed: the same body object, nothing re-rendered
    assert expo.fragments_rendered == before
    store.replace(("pg_activity", "a"), [Sample(m.PG_CONNECTIONS_USED_RATIO, ("a",), 0.5)])
    text = expo.render().decode()
    assert _samples(text) == _samples(full(store))
    assert sample(text, "dbwatch_pg_connections_used_ratio", {"target": "a"}) == 0.5
    assert sample(text, "dbwatch_pg_sessions", {"target": "a"}) is None  # gone with a's old snapshot
    assert sample(text, "dbwatch_pg_sessions", {"target": "b"}) is not None
    # a's families that went are dropped, the one that stays is the only fragment re-rendered; b's are reused
    assert expo.fragments_rendered - before == 1
    store.drop(("pg_activity", "b"))
    assert sample(expo.render().decode(), "dbwatch_pg_connections_used_ratio", {"target": "b"}) is None


async def test_metrics_are_gzipped_when_the_scraper_asks(pg: PG) -> None:
    """`Accept-Encoding: gzip` gets a gzip body with the same samples; `gzip;q=0` or no header gets plain text."""
    async with running({"targets": [t("main", pg.dsn)]}) as d:
        await eventually(lambda: _up(d, "main", 1.0), timeout=10)
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.get(d.base + "/metrics", headers={"Accept-Encoding": "gzip"}) as r:
                assert (r.headers.get("Content-Encoding"), r.headers.get("Vary")) == ("gzip", "Accept-Encoding")
                packed = await r.read()
            async with s.get(d.base + "/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"}) as r:
                assert "Content-Encoding" not in r.headers
                plain = await r.read()
    unpacked = gzip.decompress(packed).decode()
    assert sample(unpacked, "dbwatch_probe_up", {"target": "main"}) == 1
    assert {s[0] for s in _samples(unpacked)} == {s[0] for s in _samples(plain.decode())}
    assert len(packed) * 4 < len(plain)
