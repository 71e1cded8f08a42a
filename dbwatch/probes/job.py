"""The scheduled job that runs a target's probe and records the metrics every kind shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum

from dbwatch import metrics as m
from dbwatch.config import Target
from dbwatch.probes import PROBES
from dbwatch.probes.base import Rider
from dbwatch.probes.http_login import HttpLoginProbe  # its module loads aiohttp only when a login probe runs
from dbwatch.store import Store, TargetStatus

__all__ = ["ProbeJob"]


class ProbeJob:
    """Scheduled job that runs a target's probe and records up, phases, failures, last success."""

    job = "probe"

    def __init__(
        self,
        target: Target,
        store: Store,
        clock: Callable[[], float] = time.time,
        rider: Rider | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        kind = PROBES[target.kind]
        self._probe = kind(target, rider)
        self._timeout_reason = kind.reasons("timeout")  # every kind's closed set has one
        self.target = target.name
        self.interval = target.interval
        self.timeout = target.timeout
        self._pending = False  # a run started and has not recorded its outcome yet
        store.status[target.name] = TargetStatus(gates_readiness=target.gate_readiness, stale_after=target.stale_after)
        source = ("probe", target.name)
        store.set(source, m.PROBE_UP, (target.name,), 0.0)
        store.set(("info", target.name), m.TARGET_INFO, (target.name, target.kind, str(target.critical).lower()), 1)
        for reason in kind.reasons:
            store.inc(m.PROBE_FAILURES, (target.name, reason.value), 0)
        for phase in kind.phases:
            store.touch_histogram(m.PROBE_DURATION, (target.name, phase))
        if isinstance(self._probe, HttpLoginProbe):
            store.set(source, m.PROBE_HTTP_STATUS, (target.name,), 0.0)
        store.set(("info", target.name), m.JOB_INFO, (self.job, target.name, "pod"), 1)

    def classify(self, exc: BaseException) -> StrEnum:
        """This kind's reason for a failure; the scheduler logs with it."""
        return self._probe.classify(exc)

    async def run(self) -> None:
        """Probe once; record the outcome, then re-raise a failure for the scheduler."""
        self._pending = True
        try:
            async with asyncio.timeout(self.timeout):
                phases = await self._probe.probe(self.timeout)
        except asyncio.CancelledError:
            raise  # shutdown, or the scheduler's hard timeout (which then calls abandoned())
        except BaseException as exc:
            self._record_http_status()
            self._failed(self.classify(exc))
            raise
        self._record_http_status()
        self._pending = False
        for phase, seconds in phases.items():
            self._store.observe(m.PROBE_DURATION, (self.target, phase), seconds)
        status = self._store.status[self.target]
        self._store.set(("probe", self.target), m.PROBE_UP, (self.target,), 1.0)
        self._store.set(("probe", self.target), m.PROBE_LAST_SUCCESS, (self.target,), self._clock())
        status.up = True
        status.last_reason = None
        status.last_success = time.monotonic()

    def _record_http_status(self) -> None:
        """The login probe's last HTTP status, so an alert can say `HTTP 500` beside the reason `status`."""
        if isinstance(self._probe, HttpLoginProbe):
            self._store.set(("probe", self.target), m.PROBE_HTTP_STATUS, (self.target,), float(self._probe.last_status))

    def abandoned(self) -> None:
        """The scheduler cancelled this run at its hard timeout: count it as a timeout unless already counted."""
        if self._pending:
            self._record_http_status()
            self._failed(self._timeout_reason)

    def _failed(self, reason: StrEnum) -> None:
        self._pending = False
        status = self._store.status[self.target]
        self._store.inc(m.PROBE_FAILURES, (self.target, reason.value))
        self._store.set(("probe", self.target), m.PROBE_UP, (self.target,), 0.0)
        status.up = False
        status.last_reason = reason.value
