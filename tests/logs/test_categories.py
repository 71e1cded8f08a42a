"""The categories added for psycopg-era apps, from real output where it can be produced: greenlet not installed
(a real SQLAlchemy 2.x in a process where greenlet cannot be imported), pgbouncer's prepared-statement errors
(hand-written: they need a transaction-mode pooler), and exception groups whose sub-exceptions a log lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
import structlog

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules, Category, classify_event
from dbwatch.logs.counter import ExceptionCounter
from dbwatch.logs.formats import Splitter
from dbwatch.logs.formats.structlog_json import chain_of
from dbwatch.logs.record import Stats
from dbwatch.logs.scan import scan_file
from dbwatch.logs.traceback import parse
from dbwatch.pgcluster import free_port
from dbwatch.store import Store
from tests.logs import ormapp, wrap

ROOT = Path(__file__).resolve().parents[2]
NOGREENLET = str(Path(__file__).with_name("nogreenlet.py"))  # not imported here: it blocks greenlet for good


@pytest.fixture(scope="module")
def nogreenlet_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The app's error where greenlet is missing, logged by the real script in plain, json and dict form."""
    d = tmp_path_factory.mktemp("nogreenlet")
    url = f"postgresql+psycopg://app:x@127.0.0.1:{free_port()}/appdb"
    subprocess.run([sys.executable, "-m", "tests.logs.nogreenlet", str(d), url], cwd=ROOT, check=True, timeout=60)
    files = {k: d / f"{k}.log" for k in ("plain", "json", "dict")}
    plain = [("stderr", ln) for ln in files["plain"].read_text().splitlines()]
    files["cri"] = d / "cri.log"
    files["cri"].write_text(wrap.cri(plain))
    files["docker"] = d / "docker.log"
    files["docker"].write_text(wrap.docker(plain))
    return files


@pytest.mark.parametrize("fmt", ["plain", "json", "dict", "cri", "docker"])
def test_greenlet_not_installed(nogreenlet_logs: dict[str, Path], fmt: str) -> None:
    """SQLAlchemy 2.1 refuses at `import sqlalchemy.ext.asyncio`, 2.0 at the first connect: one category, located
    at the app line that did it."""
    (_event, c), *rest = scan_file(nogreenlet_logs[fmt]).events
    assert rest == []
    marker = "greenlet_import" if sqlalchemy.__version__ >= "2.1" else "greenlet_connect"
    assert c.category is Category.GREENLET_NOT_INSTALLED
    assert c.location is not None
    assert (c.location.path, c.location.line) == (NOGREENLET, ormapp.marker_line(marker, NOGREENLET))


# pgbouncer in transaction mode hands a client's next transaction to another server session: the prepared
# statements a driver made on the first are missing there, or a name it reuses exists already. Hand-written: the
# shapes asyncpg (with its pgbouncer hint) and psycopg print through SQLAlchemy.
PGBOUNCER = """\
2026-01-02 03:04:05,678 ERROR [app] Request failed
Traceback (most recent call last):
  File "/srv/app/orders.py", line 40, in list_orders
    rows = (await session.execute(select(Order))).all()
  File "/usr/lib/python3/site-packages/sqlalchemy/dialects/postgresql/asyncpg.py", line 520, in _prepare_and_execute
    prepared_stmt, attributes = await adapt_connection._prepare(operation, self._invalidate_schema_cache_asof)
asyncpg.exceptions.DuplicatePreparedStatementError: prepared statement "__asyncpg_stmt_1a__" already exists
HINT:
NOTE: pgbouncer with pool_mode set to "transaction" or "statement" does not support prepared statements properly.\
    You have two options:    * if you are using pgbouncer for connection pooling to a single server, switch to the\
 connection pool functionality provided by asyncpg, it is a much better option for this purpose;    * if you have no\
 option of avoiding the use of pgbouncer, then you can set statement_cache_size to 0 when creating the asyncpg\
 connection object.
127.0.0.1 - - [02/Jan/2026:03:04:05 +0000] "GET /orders HTTP/1.1" 500 21 "-" "curl/8.5.0"
2026-01-02 03:04:06,001 ERROR [app] Request failed
Traceback (most recent call last):
  File "/srv/app/orders.py", line 52, in get_order
    return await session.get(Order, order_id)
  File "/usr/lib/python3/site-packages/psycopg/cursor_async.py", line 117, in execute
    raise ex.with_traceback(None)
psycopg.errors.InvalidSqlStatementName: prepared statement "_pg3_4" does not exist

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/srv/app/orders.py", line 52, in get_order
    return await session.get(Order, order_id)
sqlalchemy.exc.ProgrammingError: (psycopg.errors.InvalidSqlStatementName) prepared statement "_pg3_4" does not exist
[SQL: SELECT orders.id FROM orders WHERE orders.id = %(pk_1)s::INTEGER]
(Background on this error at: https://sqlalche.me/e/21/f405)
"""


def test_pgbouncer_prepared_statements(tmp_path: Path) -> None:
    """asyncpg's DuplicatePreparedStatementError and psycopg's InvalidSqlStatementName: one category, the app line,
    and the access line after the first is not part of it."""
    path = tmp_path / "app.log"
    path.write_text(PGBOUNCER)
    events = scan_file(path).events
    got = [(c.category, c.location.line if c.location else None, c.counted[0].exception) for _e, c in events]
    assert got == [
        (Category.POOLER_PREPARED_STATEMENT, 40, "asyncpg.exceptions.DuplicatePreparedStatementError"),
        (Category.POOLER_PREPARED_STATEMENT, 52, "psycopg.errors.InvalidSqlStatementName"),
    ]
    assert events[0][0].last_line == 9


async def _two_failures() -> None:
    async def fail(n: int) -> None:
        raise ValueError(n)

    async with asyncio.TaskGroup() as tg:
        for n in range(2):
            tg.create_task(fail(n))


def _group_info() -> tuple[type[BaseException], BaseException, object]:
    try:
        asyncio.run(_two_failures())
    except BaseException:
        info = sys.exc_info()
        assert info[0] is not None
        return info  # type: ignore[return-value]
    raise AssertionError("no group")


def _old_dict_form(stacks: list[dict[str, object]]) -> list[dict[str, object]]:
    """structlog's dict_tracebacks as it was before 25.4 (issue 676): a group without is_group and exceptions."""
    return [{k: v for k, v in st.items() if k not in ("is_group", "exceptions")} for st in stacks]


def test_the_complete_form_of_a_group_is_used_and_what_is_lost_is_counted(tmp_path: Path) -> None:
    """A record with the group in text (format_exc_info) and in a lossy dict form counts both leaves from the text;
    a record with only the lossy dict counts the group once and its two sub-exceptions as lost."""
    info = _group_info()
    text = structlog.processors.format_exc_info(None, "error", {"exc_info": info})["exception"]
    dicts = _old_dict_form(structlog.processors.dict_tracebacks(None, "error", {"exc_info": info})["exception"])
    both = {"event": "request_failed", "exception": dicts, "exc_text": text}
    only_dict = {"event": "request_failed", "exception": dicts}
    chain = chain_of(both)
    assert chain is not None
    assert (len(chain.leaves()), chain.lost) == (2, 0)
    path = tmp_path / "app.json.log"
    path.write_text(json.dumps(both) + "\n" + json.dumps(only_dict) + "\n")
    store = Store()
    counter = ExceptionCounter("app", AppRules(), store, max_locations=5, max_exceptions=50)
    sp = Splitter("auto", counter, Stats())
    sp.feed(path.read_bytes())
    sp.flush()
    counted = sorted((k[2], v) for k, v in store._counters[m.LOG_EXCEPTIONS].items() if v)
    assert counted == [("ExceptionGroup", 1), ("ValueError", 2)]  # two leaves, then the group as one event
    assert store.counter_value(m.LOG_LOST_EXCEPTIONS, ("app",)) == 2


def test_python_and_more_exceptions_are_counted_as_lost() -> None:
    """Python prints at most 15 sub-exceptions of a group; the rest ("and N more exceptions") are lost."""
    import traceback

    try:
        raise ExceptionGroup("many", [ValueError(i) for i in range(20)])
    except ExceptionGroup as eg:
        lines = traceback.format_exception(eg)
    chain = parse("".join(lines).splitlines())
    assert chain is not None
    assert (len(chain.leaves()), chain.lost) == (15, 5)
    assert classify_event(chain, AppRules()).category is Category.OTHER
