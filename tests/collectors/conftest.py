"""Helpers for collector tests: a target on a real cluster, a collection run, held client sessions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from dbwatch.collectors.job import CollectorJob, collector_jobs
from dbwatch.config import Target, from_mapping
from dbwatch.monconn import Monitors
from dbwatch.store import Store


def make_target(dsn: str, *, name: str = "db", kind: str = "postgres", **collect: Any) -> Target:
    """A validated Target, as the config loader builds it."""
    raw: dict[str, Any] = {"name": name, "kind": kind, "dsn": dsn, "interval": 10, "timeout": 5}
    if collect:
        raw["collect"] = collect
    return from_mapping({"targets": [raw]}).targets[0]


class Harness:
    """A target's collector jobs over one Monitors, writing to a private Store."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.store = Store()
        self.monitors = Monitors(self.store)
        self.jobs: dict[str, CollectorJob] = {j.job: j for j in collector_jobs([target], self.store, self.monitors)}

    async def collect(self, *names: str) -> None:
        for name in names or tuple(self.jobs):
            await self.jobs[name].run()

    def gauge(self, spec: Any, *labels: str) -> float | None:
        return self.store.gauge_value(spec, (self.target.name, *labels))


@contextlib.asynccontextmanager
async def harness(dsn: str, **collect: Any) -> AsyncIterator[Harness]:
    h = Harness(make_target(dsn, **collect))
    try:
        yield h
    finally:
        await h.monitors.close()


@contextlib.asynccontextmanager
async def sessions(dsn: str, n: int, app: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """Hold n client sessions with the given application_name."""
    conns = [await asyncpg.connect(dsn, server_settings={"application_name": app}) for _ in range(n)]
    try:
        yield conns
    finally:
        for c in conns:
            c.terminate()
