"""The prefiltered JSON reader (`dbwatch scan`) finds exactly what the full parse finds, for any input in any pieces."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbwatch.logs.formats import Splitter
from dbwatch.logs.prefilter import json_candidates
from dbwatch.logs.record import Event, Stats
from tests.faults.test_fuzz_logs import _TB

_TEXT = "\n".join(_TB[1:7])
_RECORDS = [
    json.dumps({"event": "Login failed", "exception": _TEXT}),
    json.dumps({"event": 'query="Traceback (most recent call last):"'}),  # a decoy: not parsed, no event
    json.dumps({"event": "x", "exception": "ValueError: a\n\n" + _TB[8] + "\n\n" + _TB[1]}),  # header ends the string
    json.dumps({"event": "x", "exception": _TEXT.replace("\n", "\u2028")}),  # another line end
    json.dumps({"event": "x", "exception": _TEXT.replace(":\n", ":  \t\r\n", 1)}),  # blanks before the line end
    json.dumps({"event": "x", "exception": _TEXT.replace("\n", "\u0085")}, ensure_ascii=False),  # raw, as UTF-8
    json.dumps({"event": "failed", "exception": [{"exc_type": "MissingGreenlet", "exc_value": "x", "frames": []}]}),
    json.dumps({"event": _TB[13]}),  # a one-line event
    json.dumps({"event": "ok", "level": "info"}),
    '{"event": "bad json, no marker"',
    '{"event": "bad json", "exception": "Traceback (most recent call last):\\n',
    *_TB,  # raw text lines between records: read by the text scanner
    "",
]
lines = st.one_of(
    st.sampled_from(_RECORDS).map(lambda s: s.encode() + b"\n"),
    st.text(max_size=30).map(lambda s: json.dumps({"event": s}).encode() + b"\n"),
    st.binary(max_size=64),  # garbage, invalid UTF-8, no newline
)
documents = st.lists(lines, max_size=40).map(b"".join)


def _parse_fmt(fmt: str, data: bytes, cuts: list[int], *, prefilter: bool) -> tuple[list[Event], Stats]:
    events: list[Event] = []
    stats = Stats()
    sp = Splitter(fmt, events.append, stats, prefilter=prefilter)
    prev = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        sp.feed(data[prev:cut])
        prev = cut
    sp.flush()
    return events, stats


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.lists(st.integers(0, 1 << 12), max_size=6))
def test_prefiltered_json_finds_what_the_full_parse_finds(data: bytes, cuts: list[int]) -> None:
    """Same events (lines, metadata, chains) and counts; bad JSON is counted only where a traceback could be."""
    full, s1 = _parse_fmt("json", data, cuts, prefilter=False)
    fast, s2 = _parse_fmt("json", data, cuts, prefilter=True)
    assert fast == full
    assert (s2.lines, s2.bytes, s2.unmatched, s2.truncated, s2.events) == (
        s1.lines,
        s1.bytes,
        s1.unmatched,
        s1.truncated,
        s1.events,
    )
    assert s2.parse_errors <= s1.parse_errors


def test_candidates_are_marker_lines_and_text_lines() -> None:
    """Lines holding a marker (a header's words before a line end, `exc_type`, the leak sentence) or not starting
    with `{` are parsed; a plain object, even bad JSON or one mentioning the header's words in a line, is not."""
    lines = [
        (b'{"a": 1}', False),
        (b"", True),
        (b"", True),
        (b'{"e": "most recent call last"}', False),
        (b'{"e": "Traceback (most recent call last):\\n  File"}', True),
        (b'{"e": "x=\\"Traceback (most recent call last):\\" y"}', False),
        (b'{"e": "Traceback (most recent call last):"}', True),
        (b"text", True),
        (b'{"bad"', False),
        (b'{"x": [{"exc_type": "E"}]}', True),
        (b'{"leak": "The garbage collector is trying to clean up non-checked-in connection"}', True),
        (b'{"leak": "non-checked-in connection"}', False),
        (b' {"indented": 1}', True),
    ]
    data = b"".join(line + b"\n" for line, _ in lines)
    starts, pos = [], 0
    for line, parsed in lines:
        if parsed:
            starts.append(pos)
        pos += len(line) + 1
    assert json_candidates(data) == starts


_CRI_TEXT = [*_TB, "2026-01-02 03:04:05,000 INFO [app] ok", 'query="Traceback (most recent call last):"', "", "x" * 40]
_CRI_JSON = [_RECORDS[0], _RECORDS[2], _RECORDS[4]]  # inner JSON records: a text traceback, a dict one, none


def _cri_line(stream: str, text: str, cut: int) -> bytes:
    """A CRI record of `text`; `cut` > 0 splits it there into a P record and its F record."""
    raw = text.encode()
    stamp = "2026-01-02T03:04:05.123456789Z"
    if 0 < cut < len(raw):
        return f"{stamp} {stream} P ".encode() + raw[:cut] + f"\n{stamp} {stream} F ".encode() + raw[cut:] + b"\n"
    return f"{stamp} {stream} F ".encode() + raw + b"\n"


cri_lines = st.one_of(
    st.builds(
        _cri_line,
        st.sampled_from(["stdout", "stderr"]),
        st.sampled_from(_CRI_TEXT + _CRI_JSON) | st.text(max_size=20),
        st.integers(0, 40),
    ),
    st.sampled_from(
        [b"not a cri line\n", b"\n", b"2026-01-02T03:04:05Z stdout P\n", b"2026-01-02T03:04:05Z stderr F\n"]
    ),
)
cri_documents = st.lists(cri_lines, max_size=60).map(b"".join)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cri_documents, st.lists(st.integers(0, 1 << 12), max_size=6))
def test_prefiltered_cri_finds_what_the_full_parse_finds(data: bytes, cuts: list[int]) -> None:
    """CRI read through the prefilter (stdout and stderr interleaved, split P records, tracebacks, inner JSON,
    lines that are not records): same events and counts as the full parse; lines that are not records are counted as
    unmatched only among the lines parsed."""
    full, s1 = _parse_fmt("cri", data, cuts, prefilter=False)
    fast, s2 = _parse_fmt("cri", data, cuts, prefilter=True)
    assert fast == full
    assert (s2.lines, s2.bytes, s2.truncated, s2.events) == (s1.lines, s1.bytes, s1.truncated, s1.events)
    assert s2.unmatched <= s1.unmatched
    assert s2.parse_errors <= s1.parse_errors


def _docker_line(stream: str, text: str, cut: int) -> bytes:
    """A docker json-file record of `text` as docker writes it; `cut` > 0 splits it there (the first part has no
    newline at its end)."""

    def rec(log: str) -> bytes:
        return json.dumps(
            {"log": log, "stream": stream, "time": "2026-01-02T03:04:05.1Z"}, separators=(",", ":")
        ).encode()

    if 0 < cut < len(text):
        return rec(text[:cut]) + b"\n" + rec(text[cut:] + "\n") + b"\n"
    return rec(text + "\n") + b"\n"


_docker_whole = st.builds(
    _docker_line,
    st.sampled_from(["stdout", "stderr"]),
    st.sampled_from(_CRI_TEXT + _CRI_JSON) | st.text(max_size=20),
    st.just(0),
)
docker_documents = st.one_of(
    st.lists(_docker_whole, max_size=60).map(b"".join),  # what the prefilter vouches for
    st.lists(
        _docker_whole
        | st.builds(
            _docker_line, st.sampled_from(["stdout", "stderr", "x"]), st.sampled_from(_CRI_TEXT), st.integers(1, 40)
        )
        | st.sampled_from(
            [b"not docker\n", b"\n", b'{"log": 5}\n', b'{"log":"a\\\\n","stream":"stdout","time":"t"}\n']
        ),
        max_size=60,
    ).map(b"".join),
)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(docker_documents, st.lists(st.integers(0, 1 << 12), max_size=6))
def test_prefiltered_docker_finds_what_the_full_parse_finds(data: bytes, cuts: list[int]) -> None:
    """docker json-file read through the prefilter (streams interleaved, tracebacks, inner JSON; split records,
    other streams and lines that are not records make a read be parsed whole): same events and counts as the full
    parse."""
    full, s1 = _parse_fmt("docker", data, cuts, prefilter=False)
    fast, s2 = _parse_fmt("docker", data, cuts, prefilter=True)
    assert fast == full
    assert (s2.lines, s2.bytes, s2.truncated, s2.events) == (s1.lines, s1.bytes, s1.truncated, s1.events)
    assert s2.unmatched <= s1.unmatched
    assert s2.parse_errors <= s1.parse_errors
