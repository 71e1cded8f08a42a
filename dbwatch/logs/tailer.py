"""Follow the files of one log source: offsets, rotation by identity, copytruncate, persisted positions.

Habits from mtail's `internal/tailer/logstream/filestream.go`: rotation is looked for when a file is at its end; a
new identity (device, inode) at the path means rename+create (the old descriptor is read to its end first), a
file shorter than the read offset or with a different first line means copytruncate. Unlike mtail we also catch a
truncate followed at once by a write longer than the old file (the first line changed), and we recover the lines
appended just before the truncate from the rotated copy (found by its first line). Partial lines and unfinished
records are carried across reads; the persisted position is where the held data starts, so a restart neither
re-counts nor skips.

Reading is sliced: each read is parsed and then the task yields, with the read size adapted so one slice takes a
few milliseconds, so probes and scrapes on the same loop stay on time while a backlog is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from dbwatch import metrics as m
from dbwatch.config import LogsConfig, LogSource
from dbwatch.logs.classify import AppRules
from dbwatch.logs.counter import ExceptionCounter
from dbwatch.logs.formats import ParseCache, Splitter
from dbwatch.logs.inotify import Inotify
from dbwatch.logs.record import RecordHook, Stats
from dbwatch.store import Store

__all__ = ["LogWatcher", "Positions", "SourceTailer"]

log = structlog.get_logger("dbwatch.logs")

FP_BYTES: Final = 256  # a file's identity beside its inode: its first line, up to this many bytes
MIN_READ: Final = 64 * 1024
MAX_READ: Final = 1 << 20
SLICE_SECONDS: Final = 0.004  # aim for parse slices this long between yields to the loop
# A read goes to the parser in pieces of at most this much: the longest a piece of the densest traceback text can
# take to parse is what bounds the loop's hold (bench/log_hold.py), not the read size.
FEED_BYTES: Final = 16 * 1024
SETTLE_SECONDS: Final = 0.005  # a file quiet this long after a read ends its pending record
SAVE_SECONDS: Final = 1.0


def _fingerprint(fd: int) -> bytes | None:
    """The file's first line (up to FP_BYTES), or None while it has none complete."""
    try:
        head = os.pread(fd, FP_BYTES, 0)
    except OSError:
        return None
    nl = head.find(b"\n")
    if nl >= 0:
        return head[: nl + 1]
    return head if len(head) >= FP_BYTES else None


@dataclass(slots=True)
class _File:
    path: str
    fd: int
    ident: tuple[int, int]
    splitter: Splitter
    stats: Stats
    base: int  # offset the splitter started at
    offset: int  # bytes read so far (absolute)
    fp: bytes | None
    published: Stats = field(default_factory=Stats)
    seen: tuple[int, int] = (-1, -1)  # (size, mtime_ns) at the last look
    pending_since: float | None = None


MAX_POSITIONS_BYTES: Final = 16 << 20  # a larger positions file is not ours (max_files entries take well under this)


class Positions:
    """One source's read positions in the state directory: written whole and fsynced (file, then folder) before an
    atomic rename; validated on load. A file that fails validation is set aside (`.corrupt`) and `corrupt` is set,
    so the caller resumes at the end of each file: a damaged file never makes old lines count again."""

    def __init__(self, state_dir: str | None, source: str) -> None:
        self.path = Path(state_dir) / f"{source}.positions.json" if state_dir else None
        self.corrupt = False

    def load(self) -> list[dict[str, Any]]:
        """The saved entries; [] on a first start or when the file was corrupt (then `corrupt` is True)."""
        if self.path is None:
            return []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as exc:
            return self._set_aside(type(exc).__name__)
        try:
            raw = _read_all(fd, MAX_POSITIONS_BYTES + 1)
        except OSError as exc:
            return self._set_aside(type(exc).__name__)
        finally:
            os.close(fd)
        try:
            entries = _valid(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            return self._set_aside(type(exc).__name__)
        return entries

    def _set_aside(self, error: str) -> list[dict[str, Any]]:
        assert self.path is not None
        aside = self.path.with_name(self.path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        self.corrupt = True
        log.warning("log_positions_corrupt", path=str(self.path), set_aside=str(aside), error=error)
        return []

    def save(self, entries: list[dict[str, Any]]) -> None:
        """Write the entries whole (a short write is continued, a failed one leaves the old file), then rename."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"version": 1, "files": entries}, sort_keys=True).encode()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a crash, or a planted symlink: unlink never follows it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _write_all(fd: int, body: bytes) -> None:
    """os.write until all of body is written: a short write (a full disk, a file-size limit) is continued."""
    view = memoryview(body)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing positions")
        view = view[n:]


def _read_all(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size >= limit:
        raise ValueError("positions file too large")
    return b"".join(parts)


def _valid(data: Any) -> list[dict[str, Any]]:
    """The entries of a positions document; raises ValueError/TypeError/KeyError when anything is off."""
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("files"), list):
        raise ValueError("not a positions document")
    for e in data["files"]:
        ints = (e["dev"], e["ino"], e["offset"], e["line"])
        if not all(type(v) is int and v >= 0 for v in ints):
            raise ValueError("bad number in an entry")
        bytes.fromhex(e["fp"])
        if not isinstance(e["path"], str) or not isinstance(e["format"], str | None):
            raise TypeError("bad entry")
    return list(data["files"])


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
        self._files: dict[tuple[int, int], _File] = {}
        self._cache = ParseCache()  # known tracebacks, shared by the source's files: bounded in bytes
        self._positions = Positions(config.state_dir, source.name)
        self._saved: dict[tuple[int, int], dict[str, Any]] = {}
        for e in self._positions.load():
            self._saved[(e["dev"], e["ino"])] = e
        # a damaged positions file: resume at the end of every file rather than count old lines again
        self._start_at_end = config.start_at == "end" or self._positions.corrupt
        # first line -> (path, bytes read) of files rotated away or truncated, to recognise their copies
        self._consumed: dict[bytes, tuple[str, int]] = {}
        self._first_cycle = True
        self._read_size = MIN_READ
        self._last_save = 0.0
        self._dirty = False
        self._inotify: Inotify | None = None
        self._warned: set[str] = set()
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
        self._inotify = Inotify.open()
        try:
            while True:
                await self.cycle()
                await self._wait()
        finally:
            self.save(force=True)
            for f in list(self._files.values()):
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self._files.clear()
            if self._inotify is not None:
                self._inotify.close()

    async def _wait(self) -> None:
        timeout = self._cfg.poll_interval
        if any(f.pending_since is not None for f in self._files.values()):
            timeout = min(timeout, SETTLE_SECONDS)
        ino = self._inotify
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
        """One pass: find the files, handle rotation, read what is new, publish counts, save positions."""
        self.cycles += 1
        found = self._glob()
        for ident in [i for i in self._files if i not in found]:
            await self._retire(self._files[ident])  # renamed away or deleted: read it to its end first
        for ident, (path, st) in sorted(found.items(), key=lambda kv: (kv[1][1].st_mtime, kv[1][0])):
            f = self._files.get(ident)
            if f is None:
                f = self._open(path, ident, st)
                if f is None:
                    continue
            f.path = path
            await self._read(f)
        self._first_cycle = False
        self._store.set(("logs", self.source.name), m.LOG_FILES, (self.source.name,), float(len(self._files)))
        backlog = 0
        for f in self._files.values():
            with contextlib.suppress(OSError):
                backlog += max(os.fstat(f.fd).st_size - f.offset, 0)
        self._store.set(("logs", self.source.name), m.LOG_BACKLOG, (self.source.name,), float(backlog))
        self.save()

    def _glob(self) -> dict[tuple[int, int], tuple[str, os.stat_result]]:
        found: dict[tuple[int, int], tuple[str, os.stat_result]] = {}
        paths = sorted(glob.glob(self.source.path))
        dirs = {os.path.dirname(p) or "." for p in paths} | {os.path.dirname(self.source.path) or "."}
        if self._inotify is not None:
            for d in dirs:
                if not glob.has_magic(d) and os.path.isdir(d):
                    self._inotify.watch(d)
        for p in paths:
            st = self._stat(p)
            if st is None:
                continue
            found.setdefault((st.st_dev, st.st_ino), (p, st))
            if len(found) >= self._cfg.max_files:
                self._warn_once("log_files_capped", path=self.source.path, max_files=self._cfg.max_files)
                break
        return found

    def _stat(self, path: str) -> os.stat_result | None:
        """A regular file's stat; a symlink counts only where the source follows them (`follow_symlinks`)."""
        try:
            st = os.stat(path) if self.source.follow_symlinks else os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            self._warn_once("log_symlink_skipped", path=path)  # e.g. app.log -> /etc/shadow in a shared folder
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _open_fd(self, path: str) -> int:
        """Open for reading: never through a symlink unless followed, never blocking (a FIFO swapped in)."""
        nofollow = 0 if self.source.follow_symlinks else os.O_NOFOLLOW
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | nofollow)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        return fd

    def _warn_once(self, event: str, **kw: Any) -> None:
        key = event + str(kw.get("path", ""))
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, source=self.source.name, **kw)

    # --- files --------------------------------------------------------------------------------
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

    def _open(self, path: str, ident: tuple[int, int], st: os.stat_result) -> _File | None:
        try:
            fd = self._open_fd(path)
        except OSError as exc:
            self._store.inc(m.LOG_FILE_ERRORS, (self.source.name,))
            self._warn_once("log_file_unreadable", path=path, error=exc.strerror or type(exc).__name__)
            return None
        fp = _fingerprint(fd)
        offset, line, fmt = 0, 1, None
        saved = self._saved.pop(ident, None)
        if saved is not None and fp is not None and saved.get("fp") == fp.hex() and st.st_size >= saved["offset"]:
            offset, line, fmt = int(saved["offset"]), int(saved.get("line", 1)), saved.get("format")
        elif fp is not None and self._copy_of_open(path, ident, fp):
            offset = st.st_size  # a rotated copy of a file we follow: its content is read through the original
        elif fp is not None and self._is_copy(path, fp):
            offset = self._consumed.pop(fp)[1]  # a rotated copy whose content we already read under another name
            line = 0  # line numbers of a copy's remainder are not known
        elif self._first_cycle and self._start_at_end:
            offset = st.st_size
        if fmt == "auto":
            fmt = None
        stats = Stats()
        f = _File(path, fd, ident, self._splitter(stats, offset, line, fmt), stats, offset, offset, fp)
        self._files[ident] = f
        self._dirty = True
        log.info("log_file_opened", source=self.source.name, path=path, offset=offset)
        return f

    def _is_copy(self, path: str, fp: bytes) -> bool:
        """True for a new file named like a rotated copy (`app.log.1`) of a file we read, with its first line."""
        seen = self._consumed.get(fp)
        return seen is not None and path != seen[0] and os.path.basename(path).startswith(os.path.basename(seen[0]))

    def _copy_of_open(self, path: str, ident: tuple[int, int], fp: bytes) -> bool:
        """True for `app.log.1` (or `app.log-2026…`) that starts like `app.log`, a file we already follow."""
        name = os.path.basename(path)
        for f in self._files.values():
            if f.ident != ident and f.fp == fp and name.startswith(os.path.basename(f.path)):
                return True
        return False

    async def _read(self, f: _File) -> None:
        """Read to the end of the file (after checking for copytruncate), parse in slices, publish counts."""
        try:
            st = os.fstat(f.fd)
        except OSError:
            return
        if (st.st_size, st.st_mtime_ns) == f.seen and f.pending_since is None:
            return  # nothing changed since the last look
        f.seen = (st.st_size, st.st_mtime_ns)
        if f.fp is None:
            f.fp = _fingerprint(f.fd)
        elif st.st_size < f.offset or _fingerprint(f.fd) != f.fp:
            await self._truncated(f)
        got = False
        while True:
            try:
                data = os.pread(f.fd, self._read_size, f.offset)
            except OSError as exc:
                self._store.inc(m.LOG_FILE_ERRORS, (self.source.name,))
                self._warn_once("log_read_failed", path=f.path, error=exc.strerror or type(exc).__name__)
                break
            if not data:
                break
            got = True
            self._adapt(await self._feed(f, data), len(data))
            self._publish(f)
            await asyncio.sleep(0)  # let probes and scrapes run between slices
        now = time.monotonic()
        if got:
            f.pending_since = now if f.splitter.pending else None
        elif f.pending_since is not None and now - f.pending_since >= SETTLE_SECONDS:
            f.splitter.flush(eof=False)  # quiet at its end: what was read is whole
            f.pending_since = None
        self._publish(f)
        self._dirty = self._dirty or got

    async def _feed(self, f: _File, data: bytes) -> float:
        """Parse one read in FEED_BYTES pieces, yielding to the loop whenever a slice's time is used up; returns
        the time spent parsing."""
        busy = 0.0
        since = time.perf_counter()
        for k in range(0, len(data), FEED_BYTES):
            piece = data[k : k + FEED_BYTES]
            t0 = time.perf_counter()
            f.offset += len(piece)
            f.splitter.feed(piece)
            t1 = time.perf_counter()
            busy += t1 - t0
            if t1 - since >= SLICE_SECONDS:
                self._publish(f)
                await asyncio.sleep(0)
                since = time.perf_counter()
        return busy

    def _adapt(self, elapsed: float, size: int) -> None:
        if elapsed > SLICE_SECONDS and self._read_size > MIN_READ:
            self._read_size //= 2
        elif elapsed < SLICE_SECONDS / 2 and size == self._read_size and self._read_size < MAX_READ:
            self._read_size *= 2

    async def _truncated(self, f: _File) -> None:
        """Copytruncate: finish the old content (from the rotated copy when there is one), then start over at 0."""
        copy = self._find_copy(f)
        if copy is not None:
            path, size = copy
            try:
                fd = self._open_fd(path)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    while f.offset < size:
                        data = os.pread(fd, min(self._read_size, size - f.offset), f.offset)
                        if not data:
                            break
                        await self._feed(f, data)
                        self._publish(f)
                        await asyncio.sleep(0)
                finally:
                    os.close(fd)
                if f.fp is not None:
                    self._consumed[f.fp] = (f.path, f.offset)
        f.splitter.flush()
        self._publish(f)
        self._store.inc(m.LOG_ROTATIONS, (self.source.name, "truncate"))
        log.info("log_truncated", source=self.source.name, path=f.path, copy=copy[0] if copy else None)
        f.stats, f.published = Stats(), Stats()
        f.splitter = self._splitter(f.stats, 0, 1)
        f.base = f.offset = 0
        f.fp = _fingerprint(f.fd)
        f.pending_since = None
        self._dirty = True

    def _find_copy(self, f: _File) -> tuple[str, int] | None:
        """The rotated copy of a truncated file: same first line, another inode, at least as long as what we read;
        of several (a first line every period shares, like a start-up banner) the newest, by modification time."""
        if f.fp is None:
            return None
        directory = os.path.dirname(f.path) or "."
        base = os.path.basename(f.path)
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        best: tuple[int, str, int] | None = None  # (mtime, path, size)
        for name in sorted(names):
            if name == base or not name.startswith(base.split(".")[0]):
                continue
            path = os.path.join(directory, name)
            st = self._stat(path)
            if st is None or (st.st_dev, st.st_ino) == f.ident or st.st_size < f.offset:
                continue
            try:
                fd = self._open_fd(path)
            except OSError:
                continue
            try:
                head = os.pread(fd, FP_BYTES, 0)
            except OSError:
                continue
            finally:
                os.close(fd)
            if head.startswith(f.fp) and (best is None or st.st_mtime_ns > best[0]):
                best = (st.st_mtime_ns, path, st.st_size)
        return (best[1], best[2]) if best else None

    async def _retire(self, f: _File) -> None:
        """A file gone from the source (rename+create, deletion): read the rest through our descriptor, close it."""
        await self._read(f)
        f.splitter.flush()
        self._publish(f)
        if f.fp is not None:
            self._consumed[f.fp] = (f.path, f.offset)
            if len(self._consumed) > 4 * self._cfg.max_files:
                self._consumed.pop(next(iter(self._consumed)))
        with contextlib.suppress(OSError):
            os.close(f.fd)
        del self._files[f.ident]
        self._dirty = True
        self._store.inc(m.LOG_ROTATIONS, (self.source.name, "rename"))
        log.info("log_rotated", source=self.source.name, path=f.path)

    def _publish(self, f: _File) -> None:
        s, p = f.stats, f.published
        for name in ("lines", "bytes", "unmatched", "parse_errors", "truncated"):
            delta = getattr(s, name) - getattr(p, name)
            if delta > 0:
                self._store.inc(_STAT_SPECS[name], (self.source.name,), delta)
                setattr(p, name, getattr(s, name))

    # --- positions ----------------------------------------------------------------------------
    def save(self, *, force: bool = False) -> None:
        """Persist where each file's unfinished data starts (at most once a second unless forced)."""
        now = time.monotonic()
        if not (self._dirty or force) or (not force and now - self._last_save < SAVE_SECONDS):
            return
        entries = []
        for f in self._files.values():
            if f.fp is None:
                continue
            offset, line = f.splitter.hold()
            entries.append(
                {
                    "path": f.path,
                    "dev": f.ident[0],
                    "ino": f.ident[1],
                    "offset": offset,
                    "line": line,
                    "fp": f.fp.hex(),
                    "format": f.splitter.format,
                }
            )
        try:
            self._positions.save(entries)
        except OSError as exc:
            self._warn_once("log_positions_not_saved", path=str(self._positions.path), error=exc.strerror)
            return
        self._last_save = now
        self._dirty = False


_STAT_SPECS: Final = {
    "lines": m.LOG_LINES,
    "bytes": m.LOG_BYTES,
    "unmatched": m.LOG_UNMATCHED,
    "parse_errors": m.LOG_PARSE_ERRORS,
    "truncated": m.LOG_TRUNCATED,
}


class LogWatcher:
    """One tailer per configured source; dbwatch.app runs each `tailer.run()` under its task owner."""

    def __init__(self, config: LogsConfig, store: Store) -> None:
        self.tailers: list[SourceTailer] = []
        for source in config.sources:
            hook: RecordHook | None = None
            if source.access is not None:
                from dbwatch.logs.access import AccessLog  # noqa: PLC0415 - only sources with `access:` need it

                hook = AccessLog(source.name, source.access, store).feed
            self.tailers.append(SourceTailer(source, config, store, on_record=hook))
