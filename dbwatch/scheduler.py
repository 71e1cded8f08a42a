"""One task per (job, target): fixed-rate interval, startup jitter, no overlap, hard timeout."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol, runtime_checkable

import structlog

from dbwatch import metrics as m
from dbwatch.coordination import Standby
from dbwatch.errors import Reason, classify
from dbwatch.store import Store
from dbwatch.tasks import Tasks

__all__ = ["Abandonable", "Job", "Scheduler"]

log = structlog.get_logger("dbwatch.scheduler")

# A job that ignores its own timeout is cancelled this long after it.
HARD_TIMEOUT_GRACE = 1.0


class Job(Protocol):
    """A unit of scheduled work. `run()` raises on failure; the scheduler classifies and records it."""

    @property
    def job(self) -> str: ...  # the `job` label: probe, pg_activity, …

    @property
    def target(self) -> str: ...

    @property
    def interval(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    async def run(self) -> None: ...


@runtime_checkable
class Abandonable(Protocol):
    """A job that records its own outcome; told when the scheduler cut a run short so it can record a timeout."""

    def abandoned(self) -> None: ...


class Scheduler:
    """Runs one task per job (owned by a `Tasks`); started and stopped by the composition root (dbwatch.app)."""

    def __init__(self, store: Store, jobs: Sequence[Job], *, jitter: float = 1.0) -> None:
        self._store = store
        self._jobs = list(jobs)
        self._jitter = jitter
        self._tasks = Tasks()
        self._first_run: dict[tuple[str, str], asyncio.Event] = {}

    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def start(self) -> None:
        """Start one task per job; each is cancelled in `stop()`."""
        for job in self._jobs:
            key = (job.job, job.target)
            self._first_run[key] = asyncio.Event()
            for result in ("ok", "error", "timeout", "standby"):
                self._store.inc(m.JOB_RUNS, (*key, result), 0)
            self._store.inc(m.JOB_SKIPPED, key, 0)
            self._tasks.start(self._loop(job), name=f"job:{job.job}:{job.target}")

    async def stop(self) -> None:
        """Cancel every job task (in-flight work included) and wait for them."""
        await self._tasks.stop()

    def dead(self) -> list[str]:
        """Names of job tasks that are no longer running; empty when healthy."""
        return self._tasks.dead()

    def first_cycle_done(self) -> bool:
        """Whether every job has finished one run, successful or not (part of dbwatch's own readiness)."""
        return all(e.is_set() for e in self._first_run.values()) and len(self._first_run) == len(self._jobs)

    async def wait_first_runs(self) -> None:
        """Wait until every job has finished one run (used by the demo and tests)."""
        await asyncio.gather(*(e.wait() for e in self._first_run.values()))

    async def _loop(self, job: Job) -> None:
        key = (job.job, job.target)
        await asyncio.sleep(random.uniform(0, min(self._jitter, job.interval / 2)))
        next_at = time.monotonic()
        # A job may bring its own closed reason set (a probe kind's); the default is errors.classify.
        classify_exc: Callable[[BaseException], StrEnum] = getattr(job, "classify", classify)
        failing: StrEnum | None = None
        while True:
            started = time.monotonic()
            result = "ok"
            reason: StrEnum | None = None
            deadline = asyncio.timeout(job.timeout + HARD_TIMEOUT_GRACE)
            try:
                async with deadline:
                    await job.run()
            except Standby:
                # Database-wide work another instance does: not a failure, and nothing of this run to show.
                self._store.inc(m.JOB_RUNS, (*key, "standby"))
                self._first_run[key].set()
                next_at = await self._sleep(job, next_at)
                continue
            except TimeoutError:
                result, reason = "timeout", Reason.TIMEOUT
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every job failure is classified, counted and logged
                result, reason = "error", classify_exc(exc)
                if reason == Reason.OTHER and failing is None:
                    log.warning("job_error_unclassified", job=job.job, target=job.target, error=type(exc).__name__)
            if deadline.expired() and isinstance(job, Abandonable):
                # The run was cancelled inside the job (e.g. a close waiting on a frozen server): the job never got
                # to record an outcome, so it records the timeout now (once; it knows whether it already had).
                job.abandoned()
            elapsed = time.monotonic() - started
            self._store.set(("scheduler", job.target), m.JOB_DURATION, key, elapsed)
            self._store.set(("scheduler", job.target), m.JOB_SUCCESS, key, 1.0 if reason is None else 0.0)
            self._store.inc(m.JOB_RUNS, (*key, result))
            if reason != failing:
                if reason is None:
                    log.info("job_recovered", job=job.job, target=job.target, previous_reason=str(failing))
                else:
                    log.warning("job_failed", job=job.job, target=job.target, reason=str(reason))
                failing = reason
            self._first_run[key].set()
            next_at = await self._sleep(job, next_at)

    async def _sleep(self, job: Job, next_at: float) -> float:
        """Wait for the job's next tick (or its wake event, then run at once); return the tick after this one."""
        next_at += job.interval
        now = time.monotonic()
        if now > next_at:  # overran: skip the missed ticks rather than run back to back
            missed = int((now - next_at) // job.interval) + 1
            self._store.inc(m.JOB_SKIPPED, (job.job, job.target), missed)
            next_at += missed * job.interval
        wake: asyncio.Event | None = getattr(job, "wake", None)
        if wake is None:
            await asyncio.sleep(next_at - now)
            return next_at
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(next_at - now):
                await wake.wait()
                wake.clear()
                return time.monotonic()  # woken: this run starts the job's new schedule
        return next_at
