"""Real SQLAlchemy 2 async + asyncpg errors against the test PostgreSQL, logged through logging and structlog."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog
from sqlalchemy.ext.asyncio import create_async_engine

from dbwatch.pgcluster import Cluster, free_port
from tests.logs import ormapp, wrap

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


@dataclass(frozen=True)
class Case:
    """One scenario: its category, the marker of the app line it must point at, the leaves of a group."""

    name: str
    category: str
    marker: str
    leaves: tuple[str, ...] = ()


CASES = (
    Case("missing_greenlet", "missing_greenlet", "missing_greenlet"),
    Case("detached", "lazy_load", "lazy_load"),
    Case("pool_timeout", "pool_timeout", "pool_timeout"),
    Case("concurrent", "concurrent_operation", "concurrent_operation"),
    Case("too_many", "too_many_connections", "too_many_connections"),
    Case("statement_timeout", "statement_timeout", "statement_timeout"),
    Case("deadlock", "deadlock", "deadlock"),
    Case("idle_in_transaction", "idle_in_transaction_timeout", "idle_in_transaction_timeout"),
    Case("terminated", "connection_closed", "connection_closed"),
    Case("refused", "connection_refused", "connection_refused"),
    Case("group", "missing_greenlet", "missing_greenlet", ("missing_greenlet",)),
)


def _async(dsn: str) -> str:
    return "postgresql+asyncpg://" + dsn.split("://", 1)[1]


async def produce(dsn: str, small: Cluster) -> list[tuple[Case, ExcInfo]]:
    """Run every scenario once; each must raise. Returns the exc_info of each, in CASES order."""
    url = _async(dsn)
    small_url = _async(small.dsn("app", "small-pw", "appdb"))
    engine = create_async_engine(url, pool_size=5)
    killer = create_async_engine(url, pool_size=1)
    await ormapp.setup(engine)
    runs: dict[str, Callable[[], Awaitable[object]]] = {
        "missing_greenlet": lambda: ormapp.missing_greenlet(engine),
        "detached": lambda: ormapp.detached(engine),
        "pool_timeout": lambda: ormapp.pool_timeout(url),
        "concurrent": lambda: ormapp.concurrent(url),
        "too_many": lambda: ormapp.too_many(small_url, small.max_connections + 1),
        "statement_timeout": lambda: ormapp.statement_timeout(engine),
        "deadlock": lambda: ormapp.deadlock(engine),
        "idle_in_transaction": lambda: ormapp.idle_in_transaction(engine),
        "terminated": lambda: ormapp.terminated(engine, killer),
        "refused": lambda: ormapp.refused(f"postgresql+asyncpg://app:x@127.0.0.1:{free_port()}/appdb"),
        "group": lambda: ormapp.group_missing_greenlet(engine),
    }
    out: list[tuple[Case, ExcInfo]] = []
    try:
        for case in CASES:
            try:
                await runs[case.name]()
            except BaseException:
                t, v, tb = sys.exc_info()
                assert t is not None
                assert v is not None
                out.append((case, (t, v, tb)))
            else:
                raise AssertionError(f"scenario {case.name} did not fail")
    finally:
        await engine.dispose()
        await killer.dispose()
    return out


def write_all(cases: list[tuple[Case, ExcInfo]], d: Path) -> dict[str, Path]:
    """The same logged errors in every format: plain, json, dict, cri, docker (wrapping plain and json lines)."""
    files = {k: d / f"orm.{k}.log" for k in ("plain", "json", "dict", "cri", "docker", "cri-json")}
    logger = logging.Logger("app.orm")
    handler = logging.FileHandler(files["plain"])
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
    for case, info in cases:
        logger.info("handling %s", case.name)
        logger.error("Request failed: %s", case.name, exc_info=info)
    handler.close()
    for key, proc in (("json", structlog.processors.format_exc_info), ("dict", structlog.processors.dict_tracebacks)):
        with files[key].open("w") as f:
            slog = structlog.wrap_logger(
                structlog.PrintLogger(f),
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    proc,
                    structlog.processors.JSONRenderer(),
                ],
            )
            for case, info in cases:
                slog.info("handling", case=case.name)
                slog.error("request_failed", case=case.name, logger="app.orm", exc_info=info)
    plain = [("stdout" if " INFO " in ln else "stderr", ln) for ln in files["plain"].read_text().splitlines()]
    files["cri"].write_text(wrap.cri(plain))
    files["docker"].write_text(wrap.docker(plain))
    js = [("stdout", ln) for ln in files["json"].read_text().splitlines()]
    files["cri-json"].write_text(wrap.cri(js, chunk=4096))  # JSON records split into P parts too
    return files


def make(tmp: Path, dsn: str) -> dict[str, Path]:
    """Start a small cluster (max_connections 3, none reserved), run the scenarios, write the files."""
    with Cluster(version="15", max_connections=3, settings={"superuser_reserved_connections": "0"}) as small:
        small.psql("CREATE ROLE app LOGIN PASSWORD 'small-pw'")
        small.psql("CREATE DATABASE appdb OWNER app")
        cases = asyncio.run(produce(dsn, small))
    files = write_all(cases, tmp)
    (tmp / "cases.json").write_text(json.dumps([c.name for c, _ in cases]))
    return files
