"""PostgreSQL faults against a real `dbwatch run`: it stays up, /metrics stays fast, each change shows within one
interval and recovers within one after.

One daemon watches four targets: `db` (a private cluster this module stops, kills and restarts), `steady` (the
session cluster, never touched), `hang` (a loopback port that accepts and never answers) and `dns` (a name under
`.invalid`, resolved in a namespace whose resolver is 127.0.0.1). Bounds are one interval plus the probe timeout
plus SLACK for scheduling on a loaded 2-core machine; bench/soak.py prints the real figures.
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from dbwatch.pgcluster import Cluster
from tests.faults.harness import UNRESOLVABLE_HOST, Blackhole, DaemonProcess, resolver_isolation
from tests.helpers import SENTINEL, eventually, sample

INTERVAL = 1.0
TIMEOUT = 0.5
SLACK = 0.5  # scheduling on a loaded 2-core machine
# Timings come from the daemon's own log timestamps (job_failed / job_recovered), not from polling /metrics, so a
# slow scrape on a busy machine does not count against dbwatch.
DETECT = INTERVAL + TIMEOUT + SLACK  # a probe starts within one interval of the fault and ends within its timeout
RECOVER = INTERVAL + SLACK  # the first probe after recovery succeeds within one interval
# Collectors share one monitoring connection reopened with backoff (dbwatch/monconn.py), capped so that the next
# collection always tries again: they are back within one interval too.
RECOVER_COLLECTORS = INTERVAL + SLACK
SCRAPE_P50 = 0.25  # /metrics normally answers in a few ms; a scrape that waited on a probe would take its timeout
SCRAPE_MAX = 2.0


@dataclass
class Faults:
    """The daemon, the cluster it can break, and every /metrics latency seen while faults were on."""

    daemon: DaemonProcess
    cluster: Cluster
    latencies: list[float] = field(default_factory=list)

    def metrics(self) -> str:
        t0 = time.perf_counter()
        status, body = self.daemon.get("/metrics")
        self.latencies.append(time.perf_counter() - t0)
        assert status == 200
        return body

    def up(self, target: str) -> float | None:
        return sample(self.metrics(), "dbwatch_probe_up", {"target": target})

    def failures(self, target: str, reason: str) -> float:
        return sample(self.metrics(), "dbwatch_probe_failures_total", {"target": target, "reason": reason}) or 0.0

    def jobs_ok(self, target: str) -> bool:
        """Every scheduled job of the target (probe, and collectors where they exist) succeeded last time."""
        text = self.metrics()
        from prometheus_client.parser import text_string_to_metric_families

        values = [
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "dbwatch_job_success" and s.labels.get("target") == target
        ]
        return bool(values) and all(v == 1.0 for v in values)

    def events(self, event: str, target: str, after: float) -> dict[str, float]:
        """Wall time of the first `event` per job for a target after `after`, from the daemon's JSON log."""
        found: dict[str, float] = {}
        for line in self.daemon.output().splitlines():
            if not line.startswith("{"):
                continue
            e = json.loads(line)
            if e.get("event") == event and e.get("target") == target and "job" in e:
                ts = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                if ts > after and e["job"] not in found:
                    found[e["job"]] = ts
        return found

    def stays_up(self) -> None:
        assert self.daemon.alive(), self.daemon.output()[-2000:]
        assert self.daemon.get("/healthz")[0] == 200


def _app_role(cluster: Cluster, database: str) -> str:
    escaped = SENTINEL.replace("'", "''")
    cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{escaped}'")
    cluster.psql(f"CREATE DATABASE {database} OWNER app")
    return cluster.dsn("app", SENTINEL, database)


@pytest.fixture(scope="module")
def faults(pg: object) -> Iterator[Faults]:
    prefix = resolver_isolation()
    if prefix is None:
        pytest.skip(
            "cannot give dbwatch a loopback-only resolver (needs root and unshare); no DNS query leaves the box"
        )
    with Cluster(version="15") as cluster, Blackhole() as hole:
        dsn = _app_role(cluster, "faultdb")
        target = {"interval": INTERVAL, "timeout": TIMEOUT}
        config = {
            "log": {"level": "info"},
            "targets": [
                {"name": "db", "dsn": dsn, **target},
                {"name": "steady", "dsn": pg.dsn, **target},  # type: ignore[attr-defined]
                {"name": "hang", "dsn": f"postgresql://app:x@127.0.0.1:{hole.port}/x", "critical": False, **target},
                {"name": "dns", "dsn": f"postgresql://app:x@{UNRESOLVABLE_HOST}:5432/x", "critical": False, **target},
            ],
        }
        daemon = DaemonProcess(config, prefix=prefix).start()
        f = Faults(daemon, cluster)
        try:
            yield f
            assert hole.accepted >= 1
        finally:
            code = daemon.stop()
            sys.stdout.write(daemon.output())  # through the suite's sentinel-password check
            daemon.cleanup()
            lat = sorted(f.latencies) or [0.0]
            sys.stdout.write(
                f"faults: {len(lat)} scrapes, p50 {statistics.median(lat) * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms\n"
            )
        assert code == 0
        assert statistics.median(lat) < SCRAPE_P50
        assert lat[-1] < SCRAPE_MAX


async def test_hanging_port_and_unresolvable_name_fail_with_their_reasons(faults: Faults) -> None:
    """A port that never answers is a `timeout`, a `.invalid` name is `dns`; the healthy target stays up."""
    await eventually(lambda: faults.up("steady") == 1.0 and faults.up("db") == 1.0, timeout=10)
    await eventually(lambda: faults.failures("hang", "timeout") >= 2, timeout=2 * INTERVAL + 2 * DETECT)
    await eventually(lambda: faults.failures("dns", "dns") >= 2, timeout=2 * INTERVAL + 2 * DETECT)
    text = faults.metrics()
    assert sample(text, "dbwatch_probe_up", {"target": "hang"}) == 0.0
    assert sample(text, "dbwatch_probe_up", {"target": "dns"}) == 0.0
    assert sample(text, "dbwatch_probe_failures_total", {"target": "hang", "reason": "other"}) == 0.0
    assert sample(text, "dbwatch_probe_failures_total", {"target": "dns", "reason": "other"}) == 0.0
    assert sample(text, "dbwatch_probe_up", {"target": "steady"}) == 1.0
    assert faults.daemon.get("/readyz")[0] == 200  # both are non-critical
    faults.stays_up()


async def _down_then_up(faults: Faults, break_it: object, reasons: tuple[str, ...]) -> None:
    """Break the cluster, see `db` fail within DETECT, repair it, see it back within RECOVER (log timestamps)."""
    before = {r: faults.failures("db", r) for r in reasons}
    t0 = time.time()
    break_it()  # type: ignore[operator]
    broken = time.time()  # the server is down for sure once the stop/kill returned
    await eventually(lambda: faults.up("db") == 0.0, timeout=DETECT + 10)
    failed = await eventually(lambda: faults.events("job_failed", "db", t0).get("probe"), timeout=5)
    assert failed - broken <= DETECT, f"failure logged {failed - broken:.2f}s after the server went down"
    assert any(faults.failures("db", r) > before[r] for r in reasons)
    assert faults.up("steady") == 1.0
    faults.stays_up()
    _start(faults.cluster)
    started = time.time()
    await eventually(lambda: faults.up("db") == 1.0 and faults.jobs_ok("db"), timeout=RECOVER_COLLECTORS + 10)
    recovered = faults.events("job_recovered", "db", started - INTERVAL)
    assert recovered.get("probe", started) - started <= RECOVER, f"probe back {recovered['probe'] - started:.2f}s"
    for job, ts in recovered.items():
        assert ts - started <= RECOVER_COLLECTORS, f"{job} back {ts - started:.2f}s after the server accepted"
    faults.stays_up()


def _start(cluster: Cluster) -> None:
    """Start the cluster; after a SIGKILL the orphaned backends may hold shared memory for a moment."""
    deadline = time.monotonic() + 20
    while True:
        try:
            cluster.start()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_stopped_server(faults: Faults) -> None:
    await eventually(lambda: faults.up("db") == 1.0, timeout=10)
    await _down_then_up(faults, lambda: faults.cluster.stop("fast"), ("refused",))


async def test_server_killed_with_sigkill(faults: Faults) -> None:
    await eventually(lambda: faults.up("db") == 1.0, timeout=10)
    await _down_then_up(faults, faults.cluster.kill9, ("refused", "other", "shutting_down"))


async def test_restarted_server(faults: Faults) -> None:
    """An immediate-mode restart (crash recovery on start): dbwatch is back within an interval of it accepting."""
    await eventually(lambda: faults.up("db") == 1.0, timeout=10)
    await _down_then_up(faults, lambda: faults.cluster.stop("immediate"), ("refused", "starting_up"))


async def test_own_sessions_terminated(faults: Faults) -> None:
    """Terminate every dbwatch backend as it appears (bounded): dbwatch stays up and every job recovers."""
    await eventually(lambda: faults.jobs_ok("db"), timeout=10)
    su = await asyncpg.connect(**faults.cluster.superuser_kwargs())
    terminated = 0
    try:
        stmt = await su.prepare(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'dbwatch%' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 20  # bounded: stop after 20 s or once enough sessions were hit
        last_scrape = 0.0
        while time.monotonic() < deadline and terminated < 3:
            terminated += await stmt.fetchval()
            if time.monotonic() - last_scrape > 0.5:
                faults.stays_up()
                faults.metrics()
                last_scrape = time.monotonic()
    finally:
        await su.close()
    sys.stdout.write(f"faults: terminated {terminated} dbwatch sessions\n")
    assert terminated >= 1
    ended = time.time()
    await eventually(lambda: faults.up("db") == 1.0 and faults.jobs_ok("db"), timeout=RECOVER_COLLECTORS + 10)
    for job, ts in faults.events("job_recovered", "db", ended - INTERVAL).items():
        assert ts - ended <= RECOVER_COLLECTORS, f"{job} back {ts - ended:.2f}s after the terminations stopped"
    faults.stays_up()
