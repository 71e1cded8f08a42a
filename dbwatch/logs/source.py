"""A log source: joins its follower (bytes, rotation), one splitter per file (records) and its sinks (the store).

Partial lines and unfinished records are carried across reads; the persisted position is where the held data
starts, so a restart neither re-counts nor skips. Reading is sliced: each read is parsed in FEED_BYTES pieces and the
task yields once its slice is used, with the read size adapted so one slice takes a few milliseconds, so probes and
scrapes on the same loop stay on time while a backlog is read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from dbwatch import metrics as m
from dbwatch.config import LogsConfig, LogSource
from dbwatch.logs.classify import AppRules
from dbwatch.logs.follower import (
    SETTLE_SECONDS,
    Data,
    FileError,
    FollowedFile,
    Follower,
    Opened,
    Resume,
    Rotated,
    Settled,
    Truncated,
)
from dbwatch.logs.formats import ParseCache, Splitter
from dbwatch.logs.positions import Positions
from dbwatch.logs.record import RecordHook, Stats
from dbwatch.logs.sinks import AccessLog, ExceptionCounter
from dbwatch.store import Store

__all__ = ["FEED_BYTES", "LogWatcher", "SourceTailer"]

log = structlog.get_logger("dbwatch.logs")

SLICE_SECONDS: Final = 0.004  # aim for parse slices this long between yields to the loop
# A read goes to the parser in pieces of at most this much: the longest a piece of the densest traceback text can
# take to parse is what bounds the loop's hold (bench/log_hold.py), not the read size.
FEED_BYTES: Final = 16 * 1024
SAVE_SECONDS: Final = 1.0

_STAT_SPECS: Final = {
    "lines": m.LOG_LINES,
    "bytes": m.LOG_BYTES,
    "unmatched": m.LOG_UNMATCHED,
    "parse_errors": m.LOG_PARSE_ERRORS,
    "truncated": m.LOG_TRUNCATED,
}


@dataclass(slots=True)
class _Parse:
    """One followed file's parse: its splitter, its counts, and the part of them already in the store."""

    splitter: Splitter
    stats: Stats
    published: Stats = field(default_factory=Stats)


class SourceTailer:
    """Follows every file of one source (a path or glob) and counts what it reads into the store."""

    def __init__(
        self,
        source: LogSource,
        config: LogsConfig,
        store: Store,
        *,
        on_record: RecordHook | None = None,
    ) -> None:
        self.source = source
        self._cfg = config
        self._store = store
        self._hook = on_record
        rules = AppRules(source.app_roots or config.app_roots, source.app_packages or config.app_packages)
        self._sink = ExceptionCounter(
            source.name,
            rules,
            store,
            max_locations=config.max_locations,
            max_exceptions=config.max_exceptions,
        )
        self._parses: dict[tuple[int, int], _Parse] = {}
        self._cache = ParseCache()  # known tracebacks, shared by the source's files: bounded in bytes
        self._positions = Positions(config.state_dir, source.name)
        resume = {
            (e["dev"], e["ino"]): Resume(bytes.fromhex(e["fp"]), e["offset"], e.get("line", 1), e.get("format"))
            for e in self._positions.load()
        }
        self.follower = Follower(
            source.name,
            source.path,
            max_files=config.max_files,
            follow_symlinks=source.follow_symlinks,
            # a damaged positions file: resume at the end of every file rather than count old lines again
            start_at_end=config.start_at == "end" or self._positions.corrupt,
            resume=resume,
        )
        self._last_save = 0.0
        self._dirty = False
        self._save_warned = False
        self.cycles = 0
        for name in ("lines", "bytes", "unmatched", "parse_errors", "truncated"):
            store.inc(_STAT_SPECS[name], (source.name,), 0)
        for kind in ("rename", "truncate"):
            store.inc(m.LOG_ROTATIONS, (source.name, kind), 0)
        store.inc(m.LOG_FILE_ERRORS, (source.name,), 0)
        store.inc(m.LOG_POSITIONS_RESET, (source.name,), 1 if self._positions.corrupt else 0)

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the files until cancelled; positions are saved on the way out."""
        self.follower.open_watch()
        try:
            while True:
                await self.cycle()
                await self._wait()
        finally:
            self.save(force=True)
            self.follower.close()
            self._parses.clear()

    async def _wait(self) -> None:
        timeout = self._cfg.poll_interval
        if self.follower.settling:
            timeout = min(timeout, SETTLE_SECONDS)
        ino = self.follower.inotify
        if ino is None:
            await asyncio.sleep(timeout)
            return
        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands in the loop turn in which the inner
        # wait finishes (a write during shutdown), and the task never stops. A timer that sets the event instead
        # leaves one plain await, which a cancellation always interrupts.
        timer = asyncio.get_running_loop().call_later(timeout, ino.changed.set)
        try:
            await ino.changed.wait()
        finally:
            timer.cancel()
        ino.changed.clear()

    async def cycle(self) -> None:
        """One pass of the follower: parse what it hands on, record rotations, publish counts, save positions."""
        self.cycles += 1
        events = self.follower.cycle()
        try:
            for ev in events:
                if isinstance(ev, Data):
                    await self._feed(ev.file, ev.data)
                    continue
                self._dirty = self._dirty or not isinstance(ev, Settled | FileError)
                if isinstance(ev, Opened):
                    stats = Stats()
                    f = ev.file
                    self._parses[f.ident] = _Parse(self._splitter(stats, f.offset, ev.line, ev.format), stats)
                elif isinstance(ev, Settled):
                    p = self._parses[ev.file.ident]
                    p.splitter.flush(eof=False)
                    ev.file.holding = p.splitter.pending
                    self._publish(ev.file)
                elif isinstance(ev, Truncated):
                    self._finish(ev.file)
                    self._store.inc(m.LOG_ROTATIONS, (self.source.name, "truncate"))
                    stats = Stats()
                    self._parses[ev.file.ident] = _Parse(self._splitter(stats, 0, 1), stats)
                elif isinstance(ev, Rotated):
                    self._finish(ev.file)
                    del self._parses[ev.file.ident]
                    self._store.inc(m.LOG_ROTATIONS, (self.source.name, "rename"))
                else:
                    self._store.inc(m.LOG_FILE_ERRORS, (self.source.name,))
        finally:
            events.close()
        name = self.source.name
        self._store.set(("logs", name), m.LOG_FILES, (name,), float(len(self.follower.files)))
        self._store.set(("logs", name), m.LOG_BACKLOG, (name,), float(self.follower.backlog()))
        self.save()

    def _splitter(self, stats: Stats, offset: int, line: int, fmt: str | None = None) -> Splitter:
        return Splitter(
            fmt or self.source.format,
            self._sink,
            stats,
            max_line_bytes=self._cfg.max_line_bytes,
            max_record_bytes=self._cfg.max_record_bytes,
            on_record=self._hook,
            start_offset=offset,
            start_line=line,
            cache=self._cache,
        )

    async def _feed(self, f: FollowedFile, data: bytes) -> None:
        """Parse one read in FEED_BYTES pieces, yielding to the loop whenever a slice's time is used up; the time
        spent parsing sets the follower's next read size."""
        p = self._parses[f.ident]
        busy = 0.0
        since = time.perf_counter()
        for k in range(0, len(data), FEED_BYTES):
            piece = data[k : k + FEED_BYTES]
            t0 = time.perf_counter()
            p.splitter.feed(piece)
            t1 = time.perf_counter()
            busy += t1 - t0
            if t1 - since >= SLICE_SECONDS:
                self._publish(f)
                await asyncio.sleep(0)
                since = time.perf_counter()
        f.holding = p.splitter.pending
        self.follower.adapt(busy, len(data), SLICE_SECONDS)
        self._publish(f)
        await asyncio.sleep(0)  # let probes and scrapes run between reads
        self._dirty = True

    def _finish(self, f: FollowedFile) -> None:
        """A file's content ends here (rotated away, or truncated): its last record is final."""
        self._parses[f.ident].splitter.flush()
        self._publish(f)

    def _publish(self, f: FollowedFile) -> None:
        p = self._parses[f.ident]
        s, done = p.stats, p.published
        for name in ("lines", "bytes", "unmatched", "parse_errors", "truncated"):
            delta = getattr(s, name) - getattr(done, name)
            if delta > 0:
                self._store.inc(_STAT_SPECS[name], (self.source.name,), delta)
                setattr(done, name, getattr(s, name))

    # --- positions ----------------------------------------------------------------------------
    def save(self, *, force: bool = False) -> None:
        """Persist where each file's unfinished data starts (at most once a second unless forced)."""
        now = time.monotonic()
        if not (self._dirty or force) or (not force and now - self._last_save < SAVE_SECONDS):
            return
        entries: list[dict[str, Any]] = []
        for f in self.follower.files.values():
            p = self._parses.get(f.ident)
            if f.fp is None or p is None:
                continue
            offset, line = p.splitter.hold()
            entries.append(
                {
                    "path": f.path,
                    "dev": f.ident[0],
                    "ino": f.ident[1],
                    "offset": offset,
                    "line": line,
                    "fp": f.fp.hex(),
                    "format": p.splitter.format,
                }
            )
        try:
            self._positions.save(entries)
        except OSError as exc:
            if not self._save_warned:
                self._save_warned = True
                path = str(self._positions.path)
                log.warning("log_positions_not_saved", source=self.source.name, path=path, error=exc.strerror)
            return
        self._last_save = now
        self._dirty = False


class LogWatcher:
    """One tailer per configured source, each with its sinks: the exception counter, and the access log where the
    source has `access:`. dbwatch.app runs each `tailer.run()` under its task owner."""

    def __init__(self, config: LogsConfig, store: Store) -> None:
        self.tailers: list[SourceTailer] = []
        for source in config.sources:
            hook = AccessLog(source.name, source.access, store).feed if source.access is not None else None
            self.tailers.append(SourceTailer(source, config, store, on_record=hook))
