"""Each format gives the same events for the same real logged tracebacks, with the right lines and locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbwatch.logs.classify import AppRules, classify_event
from dbwatch.logs.formats import Splitter, sniff
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.scan import scan_file
from tests.logs import corpus

SAMPLE = str(Path(str(corpus.sampleapp.__file__)))


def _events(path: Path, fmt: str = "auto", piece: int = 0) -> tuple[list[Event], Stats, str]:
    events: list[Event] = []
    stats = Stats()
    sp = Splitter(fmt, events.append, stats)
    data = path.read_bytes()
    step = piece or len(data) or 1
    for k in range(0, len(data), step):
        sp.feed(data[k : k + step])
    sp.flush()
    return events, stats, sp.format


@pytest.mark.parametrize("name", ["plain", "json", "dict", "cri", "docker"])
def test_every_traceback_found_once_with_its_classes_and_app_line(log_corpus: dict[str, Path], name: str) -> None:
    """Six logged tracebacks (chains, nested TaskGroup groups, a 40 KB message) in, six events out, in order."""
    events, stats, fmt = _events(log_corpus[name])
    assert fmt == {"dict": "json"}.get(name, name)
    want = corpus.expected()
    assert len(events) == len(want)
    assert stats.parse_errors == 0
    assert stats.unmatched == 0
    for ev, exp in zip(events, want, strict=True):
        c = classify_event(ev.chain, AppRules())
        assert c.final_class == exp.final
        if name != "dict":  # dict_tracebacks keep the group as the root of its own chain too
            assert c.root_class == exp.root
        assert c.location is not None
        assert (c.location.path, c.location.line) == (SAMPLE, exp.line)
        assert len(c.leaves) == exp.leaves
        assert ev.logger == "app.auth"
        assert ev.timestamp


@pytest.mark.parametrize("piece", [1, 7, 4096])
@pytest.mark.parametrize("name", ["plain", "cri", "docker", "json"])
def test_any_read_size_gives_the_same_events(log_corpus: dict[str, Path], name: str, piece: int) -> None:
    """Partial lines and records split across reads are carried over: same events as one big read."""
    if piece == 1 and name != "plain":
        piece = 3
    whole, _, _ = _events(log_corpus[name])
    pieces, stats, _ = _events(log_corpus[name], piece=piece)
    assert [(e.first_line, e.last_line, e.chain) for e in pieces] == [
        (e.first_line, e.last_line, e.chain) for e in whole
    ]
    assert stats.bytes == log_corpus[name].stat().st_size


def test_plain_event_spans_message_line_to_exception_line(log_corpus: dict[str, Path]) -> None:
    """first_line is the record's message line, last_line its last line (the exception line, or a group's box)."""
    lines = log_corpus["plain"].read_text().splitlines()
    events, stats, _ = _events(log_corpus["plain"])
    assert stats.lines == len(lines)
    for ev in events:
        assert " ERROR [app.auth] Login failed for request" in lines[ev.first_line - 1]
        last = lines[ev.last_line - 1]
        assert last.startswith(("ValueError", "RuntimeError", "      +-----"))
        assert ev.last_line + 1 > len(lines) or " INFO " in lines[ev.last_line]


def test_container_lines_map_back_to_physical_lines(log_corpus: dict[str, Path]) -> None:
    """CRI and docker events name the physical lines of the container file (P/F parts and 16 KiB splits)."""
    for name in ("cri", "docker"):
        lines = log_corpus[name].read_text().splitlines()
        events, stats, _ = _events(log_corpus[name])
        assert stats.lines == len(lines)
        for ev in events:
            assert "Login failed for request" in lines[ev.first_line - 1]
            assert ev.last_line >= ev.first_line
        long_event = events[3]
        assert long_event.chain.final.message == "x" * 40_000
        # the 40 KB exception line is three records (P P F / three docker parts)
        assert "xxxx" in lines[long_event.last_line - 1]
        assert "xxxx" in lines[long_event.last_line - 3]


def test_sniff_tells_the_formats_apart(log_corpus: dict[str, Path]) -> None:
    for name, fmt in {"plain": "plain", "json": "json", "dict": "json", "cri": "cri", "docker": "docker"}.items():
        assert sniff(log_corpus[name].read_bytes()[:65536]) == fmt


@pytest.mark.parametrize("name", ["plain", "json", "dict", "cri", "docker"])
def test_sniffed_format_read_with_the_prefilter_finds_what_the_full_parse_finds(
    log_corpus: dict[str, Path], name: str
) -> None:
    """`scan` with `--format auto` (sniffed from the first lines, then read through its prefilter) gives the events
    and line count of the named format's full parse."""
    fmt = "json" if name == "dict" else name
    full, stats, _ = _events(log_corpus[name], fmt)
    rep = scan_file(log_corpus[name])
    assert rep.format == fmt
    assert [(e.first_line, e.last_line, e.timestamp, e.logger) for e, _c in rep.events] == [
        (e.first_line, e.last_line, e.timestamp, e.logger) for e in full
    ]
    assert rep.stats.lines == stats.lines


def test_scan_file_reports_the_format_and_counts(log_corpus: dict[str, Path]) -> None:
    rep = scan_file(log_corpus["cri"])
    assert rep.format == "cri"
    assert len(rep.events) == len(corpus.ORDER)
