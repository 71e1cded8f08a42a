"""The scheduled job that runs one collector on its target's monitoring connection within a time budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import asyncpg
import psycopg

from dbwatch.collectors import COLLECTORS, Collector, Scope
from dbwatch.config import Target
from dbwatch.metrics import MetricType
from dbwatch.monconn import MonitorConnection, Monitors
from dbwatch.store import Labels, Sample, Store

__all__ = ["CollectorJob", "collector_jobs"]

# SQLSTATEs of a statement the server cut short on dbwatch's behalf (statement_timeout, lock_timeout).
_SERVER_TIMEOUTS = frozenset({"57014", "55P03"})


class CollectorJob:
    """Runs a collector every collection interval; a run over budget is abandoned (counted as a timeout).

    The scheduler never overlaps runs of one job, and all jobs of a target queue on its one connection, so a slow
    server gets at most one dbwatch statement at a time. Gauges replace the job's last snapshot; counters follow
    the server's cumulative values (a server-side reset continues from the new value, never goes down).
    """

    def __init__(self, target: Target, collector: Collector, monitor: MonitorConnection, store: Store) -> None:
        self._collector = collector
        self._monitor = monitor
        self._store = store
        self.job = collector.name
        self.target = target.name
        self.interval = target.collect.interval
        self.timeout = target.collect.budget
        self._stale_after = target.stale_after
        self._last_ok: float | None = None
        self._last_counts: dict[tuple[str, Labels], float] = {}

    async def run(self) -> None:
        """Collect once within the budget; keep the last snapshot on failure until it goes stale."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._monitor.use() as conn:
                    samples = await self._collector.collect(conn, self.timeout)
        except BaseException as exc:
            if self._last_ok is not None and time.monotonic() - self._last_ok > self._stale_after:
                self._store.drop((self.job, self.target))
            if isinstance(exc, asyncpg.PostgresError | psycopg.Error) and exc.sqlstate in _SERVER_TIMEOUTS:
                raise TimeoutError("collection cut short by the server's statement/lock timeout") from exc
            raise
        self._record(samples)
        self._last_ok = time.monotonic()

    def _record(self, samples: Iterable[Sample]) -> None:
        gauges: list[Sample] = []
        for s in samples:
            if s.metric.type is MetricType.GAUGE:
                gauges.append(s)
                continue
            key = (s.metric.name, s.labels)
            prev = self._last_counts.get(key)
            self._store.inc(s.metric, s.labels, s.value if prev is None or s.value < prev else s.value - prev)
            self._last_counts[key] = s.value
        self._store.replace((self.job, self.target), gauges)


def collector_jobs(targets: Iterable[Target], store: Store, monitors: Monitors) -> list[CollectorJob]:
    """One job per (target, collector) the config enables; a target's jobs share its monitoring connection."""
    jobs: list[CollectorJob] = []
    for t in targets:
        scope = Scope(target=t.name, max_label_values=t.collect.max_label_values)
        jobs += [CollectorJob(t, COLLECTORS[name](scope), monitors.get(t), store) for name in t.collect.collectors]
    return jobs
