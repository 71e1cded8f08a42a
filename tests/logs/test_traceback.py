"""Traceback assembly edge cases as Python prints them (hand-written where only the text shape matters)."""

from __future__ import annotations

import traceback

from dbwatch.logs.classify import AppRules, Category, classify_event, redact
from dbwatch.logs.formats.plain import PlainScanner
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.traceback import parse

PYX = """\
2026-01-02 03:04:05,678 ERROR [app.rows] Query failed
Traceback (most recent call last):
  File "/srv/app/rows.py", line 12, in fetch
    rows = await conn.fetch(q)
           ^^^^^^^^^^^^^^^^^^^
  File "asyncpg/protocol/protocol.pyx", line 355, in fetch
  File "lib/sqlalchemy/cyextension/resultproxy.pyx", line 16, in sqlalchemy.cyextension.resultproxy.BaseRow.__init__
  File "/srv/app/rows.py", line 30, in convert
    return a[i] + b
           ~~~~~^~~
asyncpg.exceptions.DeadlockDetectedError: deadlock detected
DETAIL:  Process 1 waits for ShareLock on transaction 2; blocked by process 3.
2026-01-02 03:04:06,000 INFO [app] next
"""


def _scan(text: str) -> tuple[list[Event], Stats]:
    events: list[Event] = []
    stats = Stats()
    sc = PlainScanner(events.append, stats)
    sc.feed(text.encode())
    sc.flush()
    return events, stats


def test_frames_without_source_and_position_markers() -> None:
    """.pyx frames have no source line; `~~~^^^` marker lines are not source; the message keeps its DETAIL."""
    events, stats = _scan(PYX)
    assert len(events) == 1
    ev = events[0]
    assert (ev.first_line, ev.last_line) == (1, 12)
    exc = ev.chain.final
    assert [f.source for f in exc.frames] == ["rows = await conn.fetch(q)", None, None, "return a[i] + b"]
    assert exc.message.startswith("deadlock detected\nDETAIL:")
    c = classify_event(ev.chain, AppRules(roots=("/srv/app",)))
    assert c.category is Category.DEADLOCK
    assert c.location is not None
    assert (c.location.line, c.location.function) == (30, "convert")
    assert stats.lines == 13


def test_foreign_lines_between_frames_are_skipped() -> None:
    """Another process's record between two frames does not end the traceback."""
    text = PYX.replace(
        '  File "asyncpg/protocol',
        '2026-01-02 03:04:05,679 INFO [other] unrelated worker line\n  File "asyncpg/protocol',
    )
    events, _ = _scan(text)
    assert len(events) == 1
    assert len(events[0].chain.final.frames) == 4
    assert events[0].last_line == 13


def test_group_with_more_exceptions_and_chain_inside_a_leaf() -> None:
    """`and N more exceptions` is remembered; a leaf with its own cause is classified by that root."""
    text = """\
  + Exception Group Traceback (most recent call last):
  |   File "/srv/app/h.py", line 5, in handler
  |     async with asyncio.TaskGroup() as tg:
  | ExceptionGroup: unhandled errors in a TaskGroup (3 sub-exceptions)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/srv/app/h.py", line 9, in one
    |     await conn.execute(q)
    | asyncpg.exceptions.QueryCanceledError: canceling statement due to statement timeout
    |
    | The above exception was the direct cause of the following exception:
    |
    | Traceback (most recent call last):
    |   File "/srv/app/h.py", line 11, in one
    |     raise AppError("x")
    | app.errors.AppError: x
    +---------------- ... ----------------
    | and 2 more exceptions
    +------------------------------------
"""
    chain = parse(text.splitlines())
    assert chain is not None
    assert chain.final.is_group
    assert chain.final.more == 2
    [leaf] = chain.leaves()
    assert [e.cls for e in leaf.excs] == ["app.errors.AppError", "asyncpg.exceptions.QueryCanceledError"]
    c = classify_event(chain, AppRules())
    assert [v.category for v in c.leaves] == [Category.STATEMENT_TIMEOUT]
    assert c.leaves[0].location is not None
    assert c.leaves[0].location.line == 9


def test_real_group_in_chain_counts_each_leaf() -> None:
    """A real nested group caught and re-raised: three leaves, each classified."""

    def boom() -> None:
        try:
            raise ExceptionGroup("g", [ValueError("a"), ExceptionGroup("h", [KeyError("b"), OSError("c")])])
        except ExceptionGroup as eg:
            raise RuntimeError("wrapped") from eg

    try:
        boom()
    except RuntimeError as exc:
        text = "".join(traceback.format_exception(exc))
    chain = parse(text.splitlines())
    assert chain is not None
    assert [e.cls for e in chain.excs] == ["RuntimeError", "ExceptionGroup"]
    assert [lf.final.cls for lf in chain.leaves()] == ["ValueError", "KeyError", "OSError"]


def test_header_in_the_middle_of_a_line_is_a_decoy() -> None:
    events, stats = _scan('2026-01-02 03:04:05 INFO [x] got "Traceback (most recent call last):" in a form\n')
    assert events == []
    assert stats.parse_errors == 0


def test_header_without_frames_is_a_parse_error_not_an_event() -> None:
    events, stats = _scan("Traceback (most recent call last):\n2026-01-02 03:04:05 INFO [x] then this\n")
    assert events == []
    assert stats.parse_errors == 1


def test_secret_looking_values_are_redacted_in_messages() -> None:
    msg = "connect postgresql://app:hunter2@db/app failed; password=hunter2 token: abcdefghijklmnopqrstuvwxyz0123456789"
    out = redact(msg)
    assert "hunter2" not in out
    assert "abcdefghijklmnop" not in out
    assert "postgresql://app:***@db/app" in out


_SITE = "/usr/local/lib/python3.12/site-packages"
_APP_LOG = f"""2026-01-02 03:04:05,000 ERROR [myapp.auth] Login failed
Traceback (most recent call last):
  File "{_SITE}/starlette/routing.py", line 74, in app
    response = await func(request)
  File "{_SITE}/myapp/auth.py", line 42, in login
    return user.email
  File "{_SITE}/sqlalchemy/orm/attributes.py", line 566, in __get__
    return self.impl.get(state, dict_)
sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called; can't call await_only() here.
2026-01-02 03:04:06,000 INFO [myapp.auth] next
"""


def test_app_package_in_site_packages_is_the_location() -> None:
    """With `app_packages: [myapp]` the wheel's frame is the app line; without it no frame is app code."""
    events: list[Event] = []
    sc = PlainScanner(events.append, Stats())
    sc.feed(_APP_LOG.encode(), final=True)
    assert len(events) == 1
    c = classify_event(events[0].chain, AppRules((), ("myapp",)))
    assert c.category is Category.MISSING_GREENLET
    assert c.location is not None
    assert (c.location.path, c.location.line, c.location.function) == (f"{_SITE}/myapp/auth.py", 42, "login")
    assert classify_event(events[0].chain, AppRules()).location is None
