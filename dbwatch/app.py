"""The composition root: builds every component the config asks for, runs them, and is the health view of them.

Only this module knows all the parts (probes, collectors, monitoring connections, scheduler, hook ingest, log
tailers). The HTTP side (dbwatch.server) gets the store and this as a `dbwatch.health.Health`, nothing else;
dbwatch.daemon joins the two and owns the process (signals, sockets).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from dbwatch import metrics as m
from dbwatch.collectors.job import collector_jobs
from dbwatch.config import Config, Target
from dbwatch.ingest import running_ingest
from dbwatch.logs.source import LogWatcher
from dbwatch.monconn import Monitors
from dbwatch.probes.base import Riders
from dbwatch.probes.job import ProbeJob
from dbwatch.probes.own_sessions import OwnSessions
from dbwatch.scheduler import Job, Scheduler
from dbwatch.store import Store
from dbwatch.tasks import Tasks

__all__ = ["Components", "build", "build_jobs"]


def build_jobs(config: Config, store: Store, monitors: Monitors) -> list[Job]:
    """Every scheduled job the config asks for; collectors share one monitoring connection per target."""
    # Each probe carries its target's lock check, so instances without the lock need no session of their own.
    jobs: list[Job] = [ProbeJob(t, store, rider=_riders(t, store, monitors)) for t in config.targets]
    jobs += collector_jobs(config.targets, store, monitors)
    return jobs


def _riders(target: Target, store: Store, monitors: Monitors) -> Riders | None:
    """What a postgres probe reads besides `SELECT 1`: the database-wide lock check, this pod's own sessions."""
    if target.kind != "postgres":
        return None
    return Riders(monitors.coordinator(target), OwnSessions(target, store) if target.own_sessions else None)


class Components:
    """Everything one config runs, built and not yet started; `running()` starts it and stops it in reverse."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.monitors = Monitors(store)
        self.scheduler = Scheduler(store, build_jobs(config, store, self.monitors))
        for src in config.logs.sources:
            store.set(("log_source", src.name), m.LOG_SOURCE_INFO, (src.name, src.target or ""), 1)
        self.logs = LogWatcher(config.logs, store) if config.logs.sources else None
        self._tasks = Tasks()  # the log tailers
        self._started = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the scheduler, the hook listener and the log tailers; on exit stop them in reverse order."""
        async with contextlib.AsyncExitStack() as stack:
            self.scheduler.start()
            stack.push_async_callback(self.monitors.close)
            stack.push_async_callback(self.scheduler.stop)
            if self.config.hook is not None:
                await stack.enter_async_context(running_ingest(self.config.hook, self.store))
            if self.logs is not None:
                for tailer in self.logs.tailers:
                    self._tasks.start(tailer.run(), name=f"logs:{tailer.source.name}")
                stack.push_async_callback(self._tasks.stop)
            self._started = True
            try:
                yield
            finally:
                self._started = False

    def dead(self) -> list[str]:
        """Names of job and tailer tasks that have ended; empty when healthy."""
        return self.scheduler.dead() + self._tasks.dead()

    def task_count(self) -> int:
        """How many scheduled jobs run."""
        return len(self.scheduler.jobs)

    def started(self) -> bool:
        """Whether `running()` has finished starting everything (and not begun stopping)."""
        return self._started

    def first_cycle_done(self) -> bool:
        """Whether every job has finished one run."""
        return self.scheduler.first_cycle_done()


def build(config: Config, store: Store | None = None) -> Components:
    """The components a config asks for, built on `store` (a new one bounded by `max_series` when not given)."""
    return Components(config, store or Store(max_series=config.max_series))
