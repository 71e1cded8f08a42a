"""Property tests on every log format parser (issue 6): arbitrary input in arbitrary pieces never raises, memory
held between reads stays within the line cap, and a record does not depend on where the reads were cut."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Event, Stats

FORMATS = ("plain", "json", "cri", "docker", "auto")
CAP = 256  # a small line cap so hypothesis reaches it

_TB = [
    "2026-01-02 03:04:05,678 ERROR [app.login] Login failed",
    "Traceback (most recent call last):",
    '  File "/app/app/login.py", line 42, in login',
    "    return user.updated_at",
    "    ~~~~^^^^^^^^^^^",
    '  File "sqlalchemy/orm/attributes.py", line 566, in __get__',
    "sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called",
    "",
    "The above exception was the direct cause of the following exception:",
    "  + Exception Group Traceback (most recent call last):",
    "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)",
    "  +-+---------------- 1 ----------------",
    "    | asyncpg.exceptions.DeadlockDetectedError: deadlock detected",
    "2026-01-02 03:04:06,000 ERROR [sqlalchemy.pool.impl.AsyncAdaptedQueuePool] The garbage collector is trying to"
    " clean up non-checked-in connection <AdaptedConnection <c>>, which will be terminated.",  # a one-line event
    "/x/weakref.py:590: SAWarning: The garbage collector is trying to clean up non-checked-in connection <c>",
    '127.0.0.1 - - [02/Jan/2026:03:04:05 +0000] "GET / HTTP/1.1" 500 21 "-" "curl/8.5.0"',
]


def _wrap(text: str, how: int) -> bytes:
    """One line as a plain line, a structlog record, a CRI record or a docker json-file record."""
    if how == 1:
        return json.dumps({"event": "failed", "exception": text}).encode() + b"\n"
    if how == 2:
        return f"2026-01-02T03:04:05.123456789Z stderr {'PF'[len(text) % 2]} {text}\n".encode()
    if how == 3:
        return json.dumps({"log": text + "\n", "stream": "stderr", "time": "2026-01-02T03:04:05Z"}).encode() + b"\n"
    return text.encode() + b"\n"


lines = st.one_of(
    st.tuples(st.sampled_from(_TB), st.integers(0, 3)).map(lambda t: _wrap(*t)),
    st.tuples(st.text(max_size=40), st.integers(0, 3)).map(lambda t: _wrap(*t)),
    st.binary(max_size=CAP * 2),  # garbage, invalid UTF-8, lines over the cap, no newline
    st.integers(1, 60).map(lambda n: b'{"a":' * n + b"\n"),  # deep or unclosed JSON
)
documents = st.lists(lines, max_size=40).map(b"".join)


def _parse(fmt: str, data: bytes, cuts: list[int]) -> tuple[list[Event], Stats, Splitter]:
    events: list[Event] = []
    stats = Stats()
    sp = Splitter(fmt, events.append, stats, max_line_bytes=CAP, max_record_bytes=CAP * 8)
    prev = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        sp.feed(data[prev:cut])
        assert len(sp._partial) <= CAP + 1  # held between reads: at most one capped line head
        prev = cut
    sp.flush()
    return events, stats, sp


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FORMATS), documents, st.lists(st.integers(0, 1 << 16), max_size=8))
def test_any_input_in_any_pieces_parses_without_raising(fmt: str, data: bytes, cuts: list[int]) -> None:
    events, stats, sp = _parse(fmt, data, cuts)
    assert not sp.pending
    assert stats.lines <= data.count(b"\n") + 1
    assert stats.events == len(events)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FORMATS), documents, st.lists(st.integers(0, 1 << 16), min_size=1, max_size=8))
def test_where_reads_are_cut_does_not_change_what_is_counted(fmt: str, data: bytes, cuts: list[int]) -> None:
    whole, s1, _ = _parse(fmt, data, [])
    pieces, s2, _ = _parse(fmt, data, cuts)
    assert [(e.first_line, e.last_line) for e in whole] == [(e.first_line, e.last_line) for e in pieces]
    assert s1.lines == s2.lines
    # Not yet asserted: `truncated` and `parse_errors`. With format auto the sniffed format can depend on how much
    # the first read held, and a line over max_line_bytes that lies wholly inside one read reaches the parser
    # uncut and uncounted, while the same line split across reads is cut and counted (CHANGELOG, not done yet).
