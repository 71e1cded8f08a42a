"""The scheduler with real jobs: fixed rate, no overlap, skipped ticks counted, hard timeout, failures classified."""

from __future__ import annotations

import asyncio

from dbwatch import metrics as m
from dbwatch.scheduler import Scheduler
from dbwatch.store import Store
from tests.helpers import eventually


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
    import dbwatch.scheduler as sched

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
