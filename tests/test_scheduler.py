"""The scheduler with real jobs: fixed rate, no overlap, skipped ticks counted, hard timeout, failures classified."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import dbwatch.scheduler as sched
from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.probes.job import ProbeJob
from dbwatch.scheduler import Scheduler
from dbwatch.store import Store
from tests.helpers import PG, eventually


class SlowJob:
    """A job that takes longer than its interval and records overlap."""

    job = "slow"
    target = "t"

    def __init__(self, interval: float, work: float, timeout: float = 5.0) -> None:
        self.interval, self.work, self.timeout = interval, work, timeout
        self.running = 0
        self.max_running = 0
        self.runs = 0

    async def run(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.work)
        finally:
            self.running -= 1
            self.runs += 1


class FailingJob:
    job = "fail"
    target = "t"
    interval = 0.05
    timeout = 1.0

    async def run(self) -> None:
        raise ConnectionRefusedError(111, "Connect call failed")


async def test_no_overlap_and_skips_counted() -> None:
    store = Store()
    job = SlowJob(interval=0.05, work=0.12)
    s = Scheduler(store, [job], jitter=0)
    s.start()
    try:
        await eventually(lambda: job.runs >= 4)
    finally:
        await s.stop()
    assert job.max_running == 1
    assert store.counter_value(m.JOB_SKIPPED, ("slow", "t")) >= 4


async def test_hard_timeout_cancels_a_hung_job() -> None:
    store = Store()
    job = SlowJob(interval=0.05, work=60, timeout=0.01)
    s = Scheduler(store, [job], jitter=0)
    grace, sched.HARD_TIMEOUT_GRACE = sched.HARD_TIMEOUT_GRACE, 0.05
    s.start()
    try:
        await eventually(lambda: store.counter_value(m.JOB_RUNS, ("slow", "t", "timeout")) >= 2)
    finally:
        sched.HARD_TIMEOUT_GRACE = grace
        await s.stop()
    assert store.gauge_value(m.JOB_SUCCESS, ("slow", "t")) == 0


async def test_failures_classified_and_stop_cancels() -> None:
    store = Store()
    s = Scheduler(store, [FailingJob()], jitter=0)
    s.start()
    await eventually(lambda: store.counter_value(m.JOB_RUNS, ("fail", "t", "error")) >= 3)
    assert s.dead() == []
    await s.stop()
    assert store.counter_value(m.JOB_RUNS, ("fail", "t", "ok")) == 0


class FreezingRelay:
    """A loopback relay to a real PostgreSQL; once `freeze` is set, a session stops passing bytes at its first query.

    That is a server that froze mid-session (SIGSTOP, a partition): the probe's query timeout fires, and then its
    close waits for a Terminate that is never answered, past the scheduler's hard timeout.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.freeze = False
        self.frozen = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FreezingRelay]:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for w in list(self._writers):
                w.close()  # the pumps see EOF and end
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    async def _session(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers |= {client_w, server_w}
        frozen = False

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, from_client: bool) -> None:
            nonlocal frozen
            while data := await r.read(65536):
                if from_client and self.freeze and not frozen and data.startswith(b"Q"):  # a simple Query message
                    frozen = True
                    self.frozen += 1
                if not frozen:
                    w.write(data)
            w.close()  # one side hung up: pass the EOF on

        try:
            await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))
        except OSError:
            pass
        finally:
            for w in (client_w, server_w):
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)


async def test_hard_timeout_of_a_probe_counts_one_timeout_failure(pg: PG, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe cut short by the hard timeout: probe_up drops to 0 and the run is one `timeout` failure, counted once."""
    monkeypatch.setattr(sched, "HARD_TIMEOUT_GRACE", 0.1)  # the close after the query timeout waits 0.5 s more
    async with FreezingRelay(pg.port).running() as relay:
        dsn = pg.dsn.replace(f":{pg.port}/", f":{relay.port}/")
        raw = {"name": "db", "dsn": dsn, "interval": 1.0, "timeout": 0.5, "collect": {"collectors": []}}
        target = from_mapping({"targets": [raw]}).targets[0]
        store = Store()
        s = Scheduler(store, [ProbeJob(target, store)], jitter=0)

        def runs(result: str) -> float:
            return store.counter_value(m.JOB_RUNS, ("probe", "db", result))

        s.start()
        try:
            await eventually(lambda: runs("ok") >= 1)
            assert store.gauge_value(m.PROBE_UP, ("db",)) == 1
            relay.freeze = True
            await eventually(lambda: runs("timeout") >= 2)
        finally:
            await s.stop()
    assert relay.frozen >= 2
    failures = sum(store.counter_value(m.PROBE_FAILURES, ("db", r)) for r in ("timeout", "other", "refused"))
    assert store.counter_value(m.PROBE_FAILURES, ("db", "timeout")) == runs("timeout")
    assert failures == runs("timeout") + runs("error")
    assert store.gauge_value(m.PROBE_UP, ("db",)) == 0
    assert store.status["db"].up is False
    assert store.status["db"].last_reason == "timeout"
