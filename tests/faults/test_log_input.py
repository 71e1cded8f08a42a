"""Hostile log input: bounded memory (stated per test), counted as truncated/parse errors, nothing crashes.

The bounds: a line keeps at most logs.max_line_bytes (1 MiB by default) and the rest is skipped; a traceback is
assembled from at most logs.max_record_bytes (1 MiB); so one file costs about one read (<= 1 MiB) plus those two,
whatever it holds. The tests check peak RSS of a separate process (or tracemalloc's peak) against 64 MiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.source import SourceTailer
from dbwatch.store import Store
from tests.helpers import REPO

TB = (
    "2026-01-02 03:04:05,678 ERROR [app.auth] Login failed\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/app/auth.py", line 42, in login\n'
    "    return user.updated_at.isoformat()\n"
    "sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called; can't call await_only() here.\n"
    "2026-01-02 03:04:06,000 INFO [app] next\n"
)
MIB = 1 << 20
BOUND = 64 * MIB


# Peak RSS of the scan itself: VmHWM read inside the child (a forked child's wait4 ru_maxrss includes the parent's).
_CHILD = (
    "import sys; from dbwatch import cli; rc = cli.main(sys.argv[1:]); "
    "sys.stderr.write(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))); sys.exit(rc)"
)


def _write(pipe: IO[bytes], data: bytes) -> None:
    pipe.write(data)


def _scan_stdin(write: Callable[[IO[bytes]], None], fmt: str = "plain") -> tuple[dict[str, Any], int]:
    """`dbwatch scan --json -` in its own process fed by `write`; (report, peak RSS bytes of the scan)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "scan", "--json", "--format", fmt, "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None
    stdin = proc.stdin

    def run() -> None:
        try:
            write(stdin)
        finally:
            stdin.close()

    t = threading.Thread(target=run)
    t.start()
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    t.join()
    assert proc.returncode == 0, err.decode()[-2000:]
    hwm = int(err.decode().rsplit("VmHWM:", 1)[1].split()[0]) * 1024
    return json.loads(out), hwm


def test_one_gib_line_without_newline_is_truncated_in_bounded_memory() -> None:
    """1 GiB of text without a newline, streamed through a pipe (never on disk), then a traceback: found, < 64 MiB."""

    def write(pipe: IO[bytes]) -> None:
        piece = b"x" * MIB
        for _ in range(1024):
            pipe.write(piece)
        pipe.write(b"\n" + TB.encode())

    report, rss = _scan_stdin(write)
    f = report["files"]["-"]
    assert f["lines"] == 7
    assert [e["category"] for e in f["events"]] == ["missing_greenlet"]
    assert f["events"][0]["first_line"] == 2
    assert rss < BOUND, f"peak RSS {rss / MIB:.1f} MiB"


def test_binary_garbage_and_invalid_utf8_do_not_break_assembly() -> None:
    """Random bytes, then a traceback with invalid UTF-8 in its message: one event, the garbage skipped."""
    garbage = os.urandom(4 * MIB)
    bad = TB.replace("can't call", "can't \udcff call").encode("utf-8", "surrogateescape")
    report, rss = _scan_stdin(lambda pipe: _write(pipe, garbage + b"\n" + bad))
    f = report["files"]["-"]
    assert [e["category"] for e in f["events"]] == ["missing_greenlet"]
    assert rss < BOUND
    # the same garbage in a JSON log: counted as unmatched / parse errors, the JSON record after it still read
    rec = json.dumps({"event": "x", "exception": TB.split("\n", 1)[1]}).encode()
    events: list[Event] = []
    stats = Stats()
    sp = Splitter("json", events.append, stats)
    sp.feed(garbage + b"\n{not json\n" + rec + b"\n")
    sp.flush()
    assert len(events) == 1
    assert stats.parse_errors >= 1
    assert stats.unmatched >= 1


def test_json_nested_ten_thousand_deep_is_a_parse_error() -> None:
    deep = b"{" + b'"a":[' * 10_000 + b"1" + b"]" * 10_000 + b"}\n"
    events: list[Event] = []
    stats = Stats()
    sp = Splitter("json", events.append, stats)
    rec = json.dumps({"event": "x", "exception": TB.split("\n", 1)[1]}).encode()
    sp.feed(deep + rec + b"\n")
    sp.flush()
    assert stats.parse_errors == 1
    assert len(events) == 1


def test_traceback_that_never_ends_is_cut_at_the_record_cap() -> None:
    """A header followed by 8 MiB of frames: one truncated record, memory within the cap (tracemalloc)."""
    frame = b'  File "/srv/app/x.py", line 1, in f\n    f()\n'
    events: list[Event] = []
    stats = Stats()
    sp = Splitter("plain", events.append, stats, max_record_bytes=MIB)
    tracemalloc.start()
    try:
        sp.feed(b"2026-01-02 03:04:05 ERROR [a] boom\nTraceback (most recent call last):\n")
        chunk = frame * (MIB // len(frame))
        for _ in range(8):
            sp.feed(chunk)
        sp.feed(TB.encode())
        sp.flush()
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.truncated == 1
    assert peak < 16 * MIB  # a few copies of the 1 MiB record cap and one read
    assert [e.chain.final.cls for e in events][-1:] == ["sqlalchemy.exc.MissingGreenlet"]


async def test_file_deleted_while_read_and_a_thousand_rotating_files(tmp_path: Path) -> None:
    """1,000 files rotated by rename+create, one deleted in the middle of a read: every traceback once, < 64 MiB."""
    d = tmp_path / "logs"
    d.mkdir()
    for i in range(1000):
        (d / f"w{i}.log").write_text(TB)
    big = d / "big.log"
    big.write_text(TB * 20_000)  # ~6 MB: read in many slices
    config = from_mapping({"logs": {"sources": [{"name": "many", "path": str(d / "*.log"), "format": "plain"}]}})
    store = Store()
    tailer = SourceTailer(config.logs.sources[0], config.logs, store)
    os.utime(big, (1, 1))  # the oldest file: read first
    tracemalloc.start()
    try:
        task = asyncio.create_task(tailer.cycle())
        while not any(f.path == str(big) and f.offset > 0 for f in tailer.follower.files.values()):  # noqa: ASYNC110
            await asyncio.sleep(0)  # one loop turn at a time: the point is to delete it between two reads
        big.unlink()  # deleted while being read: the open descriptor still reads it to the end
        await task
        for i in range(1000):
            os.rename(d / f"w{i}.log", d / f"w{i}.log.1")
            (d / f"w{i}.log").write_text(TB)
        await tailer.cycle()
        await asyncio.sleep(0.02)
        await tailer.cycle()  # quiet files: their last records are final
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(v for k, v in store._counters[m.LOG_EXCEPTIONS].items() if k[1] == "missing_greenlet")
    assert total == 2000 + 20_000
    assert peak < BOUND, f"peak {peak / MIB:.1f} MiB"
    assert store.counter_value(m.LOG_FILE_ERRORS, ("many",)) == 0
