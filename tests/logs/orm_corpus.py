"""Real SQLAlchemy 2 async errors (asyncpg and psycopg 3) against the test PostgreSQL, logged through logging and
structlog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dbwatch.pgcluster import Cluster, free_port
from tests.logs import ormapp, wrap

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


@dataclass(frozen=True)
class Case:
    """One scenario: its category, the marker of the app line it must point at (None: a log line, no traceback),
    the leaves of a group."""

    name: str
    category: str
    marker: str | None
    leaves: tuple[str, ...] = ()


DRIVERS = ("asyncpg", "psycopg")
_COMMON = (
    Case("missing_greenlet", "missing_greenlet", "missing_greenlet"),
    Case("detached", "lazy_load", "lazy_load"),
    Case("pool_timeout", "pool_timeout", "pool_timeout"),
    Case("concurrent_session", "concurrent_operation", "concurrent_session"),
    Case("too_many", "too_many_connections", "too_many_connections"),
    Case("statement_timeout", "statement_timeout", "statement_timeout"),
    Case("deadlock", "deadlock", "deadlock"),
    Case("idle_in_transaction", "idle_in_transaction_timeout", "idle_in_transaction_timeout"),
    Case("terminated", "connection_closed", "connection_closed"),
    Case("refused", "connection_refused", "connection_refused"),
    Case("unique", "other_db", "unique"),
    Case("leak", "leaked_connection", None),
)
_GROUP = Case("group", "missing_greenlet", "missing_greenlet", ("missing_greenlet",))
# asyncpg only: its connection refuses a second coroutine (psycopg's waits on a lock), and its graceful close waits
# for the server, so a cancel can land in it (psycopg's close does not wait).
CASES: dict[str, tuple[Case, ...]] = {
    "asyncpg": (
        Case("concurrent", "concurrent_operation", "concurrent_operation"),
        *_COMMON,
        Case("terminate_cancelled", "terminate_cancelled", "terminate_cancelled"),
        _GROUP,
    ),
    "psycopg": (*_COMMON, _GROUP),
}

# A logged record that is not an exception (the pool's leak report, and the same text as a captured warning).
Logged = list[logging.LogRecord]


def _url(dsn: str, driver: str) -> str:
    return f"postgresql+{driver}://" + dsn.split("://", 1)[1]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: Logged = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured() -> Iterator[Logged]:
    """SQLAlchemy's pool log and warnings (as logging.captureWarnings routes them) while a scenario runs."""
    handler = _Records()
    loggers = [logging.getLogger("sqlalchemy.pool"), logging.getLogger("py.warnings")]
    for lg in loggers:
        lg.addHandler(handler)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(True)  # catch_warnings restored showwarning; route it to logging again
            yield handler.records
    finally:
        logging.captureWarnings(False)
        for lg in loggers:
            lg.removeHandler(handler)


async def _frozen_then_cancelled(engine: AsyncEngine) -> None:
    """terminate_cancelled with its backend stopped (SIGSTOP) and its task cancelled 0.3 s later."""
    stopped: list[int] = []
    task: asyncio.Future[None]

    async def stop(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        asyncio.get_running_loop().call_later(0.3, task.cancel)

    task = asyncio.ensure_future(ormapp.terminate_cancelled(engine, stop))
    try:
        await task
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


async def produce(dsn: str, small: Cluster, driver: str) -> list[tuple[Case, ExcInfo | Logged]]:
    """Run every scenario of the driver once; each must raise (or log). Returns what each left, in CASES order."""
    url = _url(dsn, driver)
    small_url = _url(small.dsn("app", "small-pw", "appdb"), driver)
    engine = create_async_engine(url, pool_size=5)
    killer = create_async_engine(url, pool_size=1)
    await ormapp.setup(engine)
    runs: dict[str, Callable[[], Awaitable[object]]] = {
        "missing_greenlet": lambda: ormapp.missing_greenlet(engine),
        "detached": lambda: ormapp.detached(engine),
        "pool_timeout": lambda: ormapp.pool_timeout(url),
        "concurrent": lambda: ormapp.concurrent(url),
        "concurrent_session": lambda: ormapp.concurrent_session(engine),
        "too_many": lambda: ormapp.too_many(small_url, small.max_connections + 1),
        "statement_timeout": lambda: ormapp.statement_timeout(engine),
        "deadlock": lambda: ormapp.deadlock(engine),
        "idle_in_transaction": lambda: ormapp.idle_in_transaction(engine),
        "terminated": lambda: ormapp.terminated(engine, killer),
        "refused": lambda: ormapp.refused(f"postgresql+{driver}://app:x@127.0.0.1:{free_port()}/appdb"),
        "unique": lambda: ormapp.unique(engine),
        "leak": lambda: ormapp.leak(engine),
        "terminate_cancelled": lambda: _frozen_then_cancelled(engine),
        "group": lambda: ormapp.group_missing_greenlet(engine),
    }
    out: list[tuple[Case, ExcInfo | Logged]] = []
    try:
        for case in CASES[driver]:
            with _captured() as records:
                try:
                    await runs[case.name]()
                except BaseException:
                    t, v, tb = sys.exc_info()
                    assert t is not None
                    assert v is not None
                    out.append((case, (t, v, tb)))
                    continue
            if case.marker is not None:
                raise AssertionError(f"scenario {case.name} did not fail")
            # the pool's log line, its warning (and psycopg's own ResourceWarning for the dropped connection)
            assert [r.levelno for r in records[:2]] == [logging.ERROR, logging.WARNING], records
            out.append((case, records))
    finally:
        await engine.dispose()
        await killer.dispose()
    return out


# What a uvicorn or gunicorn server logs after the app's traceback: its access line (the two servers' formats).
ACCESS_LINES = (
    'INFO:     127.0.0.1:51234 - "GET /orders/7 HTTP/1.1" 500 Internal Server Error',
    '127.0.0.1 - - [02/Jan/2026:03:04:05 +0000] "GET /orders/7 HTTP/1.1" 500 21 "-" "curl/8.5.0"',
)


def write_all(cases: list[tuple[Case, ExcInfo | Logged]], d: Path) -> dict[str, Path]:
    """The same logged errors in every format: plain, json, dict, cri, docker (wrapping plain and json lines).

    In the plain file each error is followed by a server's access line, as uvicorn and gunicorn write them."""
    files = {k: d / f"orm.{k}.log" for k in ("plain", "json", "dict", "cri", "docker", "cri-json")}
    logger = logging.Logger("app.orm")
    handler = logging.FileHandler(files["plain"])
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
    for k, (case, info) in enumerate(cases):
        logger.info("handling %s", case.name)
        if isinstance(info, list):
            for record in info:
                handler.handle(record)
        else:
            logger.error("Request failed: %s", case.name, exc_info=info)
        with files["plain"].open("a") as f:
            f.write(ACCESS_LINES[k % 2] + "\n")
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
                if isinstance(info, list):
                    for record in info:  # a foreign (stdlib) record, as structlog's ProcessorFormatter renders it
                        slog.log(record.levelno, record.getMessage(), logger=record.name)
                else:
                    slog.error("request_failed", case=case.name, logger="app.orm", exc_info=info)
    plain = [("stdout" if " INFO " in ln else "stderr", ln) for ln in files["plain"].read_text().splitlines()]
    files["cri"].write_text(wrap.cri(plain))
    files["docker"].write_text(wrap.docker(plain))
    js = [("stdout", ln) for ln in files["json"].read_text().splitlines()]
    files["cri-json"].write_text(wrap.cri(js, chunk=4096))  # JSON records split into P parts too
    return files


def make(tmp: Path, dsn: str, driver: str) -> dict[str, Path]:
    """Start a small cluster (max_connections 3, none reserved), run the driver's scenarios, write the files."""
    with Cluster(version="15", max_connections=3, settings={"superuser_reserved_connections": "0"}) as small:
        small.psql("CREATE ROLE app LOGIN PASSWORD 'small-pw'")
        small.psql("CREATE DATABASE appdb OWNER app")
        cases = asyncio.run(produce(dsn, small, driver))
    return write_all(cases, tmp)
