"""The scheduled job that runs one collector on its target's monitoring connection within a time budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from dbwatch import metrics as m
from dbwatch.collectors import COLLECTORS, Collector, Scope
from dbwatch.config import Target
from dbwatch.coordination import Share
from dbwatch.errors import server_errors
from dbwatch.metrics import MetricSpec, MetricType
from dbwatch.monconn import MonitorConnection, Monitors
from dbwatch.store import Labels, Sample, Store

__all__ = ["CollectorJob", "collector_jobs"]

# SQLSTATEs of a statement the server cut short on dbwatch's behalf (statement_timeout, lock_timeout).
_SERVER_TIMEOUTS = frozenset({"57014", "55P03"})


class CollectorJob:
    """Runs a collector every collection interval; a run over budget is abandoned (counted as a timeout).

    The budget bounds each of a run's two waits: its turn on the target's connection (or a connect), then its
    statement, timed from when it is sent.

    The scheduler never overlaps runs of one job, and all jobs of a target queue on its one connection, so a slow
    server gets at most one dbwatch statement at a time. Gauges replace the job's last snapshot; counters follow
    the server's cumulative values (a server-side reset continues from the new value, never goes down).

    The work is database-wide: with a coordinator, only the instance holding the lock collects; the others raise
    Standby and expose none of the job's series, so each appears once across all instances.
    """

    def __init__(
        self,
        target: Target,
        collector: Collector,
        monitor: MonitorConnection,
        store: Store,
        coordinator: Share | None = None,
    ) -> None:
        self._collector = collector
        self._coordinator = coordinator
        # Set by the coordinator when a probe saw the lock free: the scheduler runs the job at once.
        self.wake = coordinator.waker() if coordinator is not None else None
        self._monitor = monitor
        self._store = store
        self.job = collector.name
        self.target = target.name
        self.interval = target.collect.interval
        self._budget = target.collect.budget
        self.timeout = 2 * self._budget  # the scheduler's bound: a turn on the connection, then a statement
        self._stale_after = target.stale_after
        self._last_ok: float | None = None
        self._last_counts: dict[tuple[MetricSpec, Labels], float] = {}

    async def run(self) -> None:
        """Collect once within the budget; keep the last snapshot on failure until it goes stale."""
        try:
            async with asyncio.timeout(self._budget) as budget:  # a turn on the shared connection, or a connect
                async with self._monitor.use() as conn:
                    # The statement's own budget starts when it is sent, as the session's lock_timeout and
                    # statement_timeout do: a job that queued behind another must not be cut off by the client
                    # before the server's own timeout answers (that would drop a healthy session).
                    budget.reschedule(asyncio.get_running_loop().time() + self._budget)
                    samples = await self._collector.collect(conn, self._budget)
        except BaseException as exc:
            if self._coordinator is not None and not self._coordinator.holder:
                self._forget()  # another instance collects now (or will): its series, not ours
            elif self._last_ok is not None and time.monotonic() - self._last_ok > self._stale_after:
                self._store.drop((self.job, self.target))
            if isinstance(exc, server_errors()) and getattr(exc, "sqlstate", None) in _SERVER_TIMEOUTS:
                raise TimeoutError("collection cut short by the server's statement/lock timeout") from exc
            raise
        self._record(samples)
        self._last_ok = time.monotonic()

    def _forget(self) -> None:
        self._store.drop((self.job, self.target))
        for spec, labels in self._last_counts:
            self._store.forget(spec, labels)
        self._last_counts.clear()
        self._last_ok = None

    def _record(self, samples: Iterable[Sample]) -> None:
        gauges: list[Sample] = []
        for s in samples:
            if s.metric.type is MetricType.GAUGE:
                gauges.append(s)
                continue
            key = (s.metric, s.labels)
            prev = self._last_counts.get(key)
            self._store.inc(s.metric, s.labels, s.value if prev is None or s.value < prev else s.value - prev)
            self._last_counts[key] = s.value
        self._store.replace((self.job, self.target), gauges)


def collector_jobs(targets: Iterable[Target], store: Store, monitors: Monitors) -> list[CollectorJob]:
    """One job per (target, collector) the config enables; a target's jobs share its monitoring connection.

    `collect.mode: never` runs none (a central dbwatch collects that database).
    """
    jobs: list[CollectorJob] = []
    targets = list(targets)
    monitors.register(targets)
    for t in targets:
        if t.collect.mode == "never":
            continue
        scope = Scope(target=t.name, max_label_values=t.collect.max_label_values)
        coordinator = monitors.share(t)
        for name in t.collect.collectors:
            store.set(("info", t.name), m.JOB_INFO, (name, t.name, "database"), 1)
            jobs.append(CollectorJob(t, COLLECTORS[name](scope), monitors.get(t), store, coordinator))
    return jobs
