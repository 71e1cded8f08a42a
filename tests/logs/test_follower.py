"""The follower alone: real files renamed and truncated, its events checked; no store, no parser."""

from __future__ import annotations

import os
from pathlib import Path

from dbwatch.logs.follower import Data, Event, FileError, Follower, Opened, Truncated


def _kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def _data(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def test_bytes_then_rename_then_the_new_file(tmp_path: Path) -> None:
    """A file's bytes come once; after a rename+create the old file's rest comes, then Rotated, then the new file."""
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\n")
    follower = Follower("app", str(log), max_files=8)
    first = list(follower.cycle())
    assert _kinds(first) == ["Opened", "Data"]
    assert _data(first) == b"one\ntwo\n"
    assert list(follower.cycle()) == []  # nothing new
    with log.open("ab") as f:
        f.write(b"three\n")
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(b"fresh\n")
    events = list(follower.cycle())
    assert _kinds(events) == ["Data", "Rotated", "Opened", "Data"]
    assert _data(events) == b"three\nfresh\n"
    opened = events[2]
    assert isinstance(opened, Opened)
    assert (opened.file.path, opened.line) == (str(log), 1)
    follower.close()


def test_copytruncate_hands_on_the_copy_rest_then_starts_over(tmp_path: Path) -> None:
    """Lines written just before a copytruncate are read from the rotated copy, then the file starts at 0."""
    log = tmp_path / "app.log"
    log.write_bytes(b"banner\nold\n")
    follower = Follower("app", str(log), max_files=8)
    list(follower.cycle())
    with log.open("ab") as f:
        f.write(b"late\n")
    (tmp_path / "app.log.1").write_bytes(log.read_bytes())  # the copy ...
    log.write_bytes(b"new\n")  # ... and the truncate, at once followed by a write
    events = list(follower.cycle())
    assert _kinds(events) == ["Data", "Truncated", "Data"]
    assert _data(events) == b"late\nnew\n"
    truncated = events[1]
    assert isinstance(truncated, Truncated)
    assert truncated.copy == str(tmp_path / "app.log.1")
    follower.close()


def test_an_unreadable_file_is_an_event_not_an_error(tmp_path: Path) -> None:
    """A file that cannot be opened is reported once per cycle as FileError; the follower goes on."""
    log = tmp_path / "app.log"
    log.write_bytes(b"x\n")
    log.chmod(0)
    follower = Follower("app", str(log), max_files=8)
    try:
        events = list(follower.cycle())
        if os.geteuid() != 0:  # root reads any file
            assert events == [FileError(str(log))]
    finally:
        log.chmod(0o644)
        follower.close()
