"""Hook fixtures: a live ingest on a private Unix datagram socket, and SQLAlchemy URLs for the test cluster."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.ingest import Ingest, running_ingest
from dbwatch.store import Store


@dataclass
class Sink:
    """A running sidecar ingest: where hooks send (`addr`), what it counted (`store`)."""

    ingest: Ingest
    store: Store
    addr: str
    labels: dict[str, Any] = field(default_factory=dict)

    def counter(self, spec: Any, *labels: str) -> float:
        return self.store.counter_value(spec, labels)

    def gauge(self, spec: Any, *labels: str) -> float | None:
        return self.store.gauge_value(spec, labels)

    def hist(self, spec: Any, *labels: str) -> tuple[int, float]:
        return self.store.histogram_value(spec, labels)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """An ingest listening on a fresh Unix datagram socket (short path: sun_path is 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="dbwh-"))
    store = Store()
    config = HookConfig(listen=wire.Address(path=str(d / "hook.sock")), worker_expiry=30.0)
    try:
        async with running_ingest(config, store) as (ingest, bound):
            yield Sink(ingest, store, str(bound))
    finally:
        shutil.rmtree(d, ignore_errors=True)


DRIVERS = ("asyncpg", "psycopg")  # SQLAlchemy 2.1's default driver is psycopg 3; apps use either


def url_for(pg: Any, driver: str) -> URL:
    """A SQLAlchemy URL of the app role (the sentinel password travels only inside the URL object)."""
    return URL.create(
        f"postgresql+{driver}",
        username=pg.user,
        password=pg.password,
        host=pg.cluster.host,
        port=pg.port,
        database=pg.database,
    )


@pytest.fixture(params=DRIVERS)
def sa_url(pg: Any, request: pytest.FixtureRequest) -> URL:
    """The app role's URL on each async driver: every test that takes it runs on asyncpg and on psycopg."""
    return url_for(pg, request.param)
