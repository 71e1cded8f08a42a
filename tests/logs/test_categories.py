"""The categories added for psycopg-era apps, from real output: greenlet not installed (a real SQLAlchemy 2.x in a
process where greenlet cannot be imported), pgbouncer's prepared-statement errors (a real pgbouncer in transaction
mode), and exception groups whose sub-exceptions a log lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import structlog

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules, Category, classify_event
from dbwatch.logs.formats import Splitter
from dbwatch.logs.formats.structlog_json import chain_of
from dbwatch.logs.record import Stats
from dbwatch.logs.scan import scan_file
from dbwatch.logs.sinks import ExceptionCounter
from dbwatch.logs.traceback import parse
from dbwatch.pgcluster import free_port
from dbwatch.store import Store
from tests.collectors.bouncer import Bouncer
from tests.helpers import PG
from tests.logs import orm_corpus, ormapp, wrap

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


PGBOUNCER_CASES = (
    ("asyncpg", orm_corpus.Case("prepared_missing", "pooler_prepared_statement", "prepared_missing")),
    ("psycopg", orm_corpus.Case("prepared_missing", "pooler_prepared_statement", "prepared_missing")),
    # asyncpg names statements from a process-wide counter, so only psycopg's per-connection names collide
    ("psycopg", orm_corpus.Case("prepared_twice", "pooler_prepared_statement", "prepared_twice")),
)


@pytest.fixture(scope="module")
def pgbouncer_logs(pg: PG, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real errors through Debian's pgbouncer 1.18 in transaction mode (no prepared-statement support), logged in
    every format."""
    pg.cluster.psql("CREATE ROLE pgbapp LOGIN PASSWORD 'pgb-pw'")
    runs = {"prepared_missing": ormapp.prepared_missing, "prepared_twice": ormapp.prepared_twice}
    cases: list[tuple[orm_corpus.Case, Any]] = []
    with Bouncer(pg.cluster.host, pg.cluster.port, [pg.database], "pgbapp", "pgb-pw") as bouncer:
        for driver, case in PGBOUNCER_CASES:
            url = bouncer.dsn(pg.database).replace("postgresql://", f"postgresql+{driver}://", 1)
            try:
                asyncio.run(runs[case.name](url))
            except Exception:
                cases.append((case, sys.exc_info()))
            else:
                raise AssertionError(f"{driver} {case.name} did not fail")
    return orm_corpus.write_all(cases, tmp_path_factory.mktemp("pgbouncer"))


@pytest.mark.parametrize("fmt", ["plain", "json", "dict", "cri", "docker"])
def test_pgbouncer_prepared_statements(pgbouncer_logs: dict[str, Path], fmt: str) -> None:
    """asyncpg's InvalidSQLStatementNameError (with its multi-line pgbouncer hint), psycopg's InvalidSqlStatementName
    and DuplicatePreparedStatement: one event each, one category, the app line."""
    events = scan_file(pgbouncer_logs[fmt]).events
    got = [(c.category.value, c.location.line if c.location else None) for _e, c in events]
    assert got == [(case.category, ormapp.marker_line(case.marker or "")) for _d, case in PGBOUNCER_CASES]
    assert [c.counted[0].exception.rsplit(".", 1)[-1] for _e, c in events] == [
        "InvalidSQLStatementNameError",
        "InvalidSqlStatementName",
        "DuplicatePreparedStatement",
    ]


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
        return info
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
