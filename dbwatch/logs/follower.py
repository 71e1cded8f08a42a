"""Follow the files of one path or glob through rotation: bytes and rotation events out, nothing of metrics.

Habits from mtail's `internal/tailer/logstream/filestream.go`: rotation is looked for when a file is at its end; a
new identity (device, inode) at the path means rename+create (the old descriptor is read to its end first), a
file shorter than the read offset or with a different first line means copytruncate. Unlike mtail we also catch a
truncate followed at once by a write longer than the old file (the first line changed), and we recover the lines
appended just before the truncate from the rotated copy (found by its first line).

`Follower.cycle()` is a plain generator of events: it reads without blocking (`pread` on descriptors opened
non-blocking) and the consumer does the awaiting between events, so one read is handed on before the next is made.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from dbwatch.logs.inotify import Inotify

__all__ = [
    "Data",
    "Event",
    "FileError",
    "FollowedFile",
    "Follower",
    "Opened",
    "Resume",
    "Rotated",
    "Settled",
    "Truncated",
]

log = structlog.get_logger("dbwatch.logs")

FP_BYTES: Final = 256  # a file's identity beside its inode: its first line, up to this many bytes
MIN_READ: Final = 64 * 1024
MAX_READ: Final = 1 << 20
SETTLE_SECONDS: Final = 0.005  # a file quiet this long after a read ends its pending record

Ident = tuple[int, int]  # (device, inode)


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
class FollowedFile:
    """One file being followed. `holding` is the consumer's: set it while it holds an unfinished record of this
    file, and the follower reports `Settled` once the file has been quiet for SETTLE_SECONDS."""

    path: str
    fd: int
    ident: Ident
    offset: int  # bytes handed on so far (absolute)
    fp: bytes | None
    seen: tuple[int, int] = (-1, -1)  # (size, mtime_ns) at the last look
    pending_since: float | None = None
    holding: bool = False


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a file was left (from saved positions): its first line, the offset and line to resume at, its format."""

    fp: bytes
    offset: int
    line: int
    format: str | None


@dataclass(frozen=True, slots=True)
class Opened:
    """A file is followed from `file.offset`, at line `line` (0: not known), in `format` (None: the source's)."""

    file: FollowedFile
    line: int
    format: str | None


@dataclass(frozen=True, slots=True)
class Data:
    """Bytes read from a file, which end at `file.offset`."""

    file: FollowedFile
    data: bytes


@dataclass(frozen=True, slots=True)
class Settled:
    """A file with held data has been quiet: what was read of it is whole."""

    file: FollowedFile


@dataclass(frozen=True, slots=True)
class Truncated:
    """Copytruncate: the old content has been handed on (from `copy` when found); the file starts over at 0."""

    file: FollowedFile
    copy: str | None


@dataclass(frozen=True, slots=True)
class Rotated:
    """A file gone from the path (rename+create, deletion), read to its end; it is no longer followed."""

    file: FollowedFile


@dataclass(frozen=True, slots=True)
class FileError:
    """A file that could not be opened or read (the event names it, without its content)."""

    path: str


Event = Opened | Data | Settled | Truncated | Rotated | FileError


class Follower:
    """Follows every file matching `path` (a path or glob), by identity, through rename and copytruncate."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        max_files: int,
        follow_symlinks: bool = False,
        start_at_end: bool = False,
        resume: Mapping[Ident, Resume] | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.max_files = max_files
        self.follow_symlinks = follow_symlinks
        self.files: dict[Ident, FollowedFile] = {}
        self.read_size = MIN_READ
        self.inotify: Inotify | None = None
        self._start_at_end = start_at_end
        self._resume = dict(resume or {})
        # first line -> (path, bytes read) of files rotated away or truncated, to recognise their copies
        self._consumed: dict[bytes, tuple[str, int]] = {}
        self._first_cycle = True
        self._warned: set[str] = set()

    def open_watch(self) -> None:
        """Wake on changes in the watched folders (inotify where there is one; polling otherwise)."""
        self.inotify = Inotify.open()

    def close(self) -> None:
        """Close every descriptor and the watch."""
        for f in list(self.files.values()):
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.files.clear()
        if self.inotify is not None:
            self.inotify.close()

    @property
    def settling(self) -> bool:
        """True while a file with held data waits to be quiet (the caller then looks again within SETTLE_SECONDS)."""
        return any(f.pending_since is not None for f in self.files.values())

    def backlog(self) -> int:
        """Bytes in the followed files not yet read."""
        total = 0
        for f in self.files.values():
            with contextlib.suppress(OSError):
                total += max(os.fstat(f.fd).st_size - f.offset, 0)
        return total

    def adapt(self, elapsed: float, size: int, target: float) -> None:
        """Halve the read size when handling a read took longer than `target`, double it when well under."""
        if elapsed > target and self.read_size > MIN_READ:
            self.read_size //= 2
        elif elapsed < target / 2 and size == self.read_size and self.read_size < MAX_READ:
            self.read_size *= 2

    # --- one pass -------------------------------------------------------------------------------
    def cycle(self) -> Generator[Event, None, None]:
        """One pass: find the files, handle rotation, hand on what is new."""
        found = self._glob()
        for ident in [i for i in self.files if i not in found]:
            yield from self._retire(self.files[ident])  # renamed away or deleted: read it to its end first
        for ident, (path, st) in sorted(found.items(), key=lambda kv: (kv[1][1].st_mtime, kv[1][0])):
            f = self.files.get(ident)
            if f is None:
                f = yield from self._open(path, ident, st)
                if f is None:
                    continue
            f.path = path
            yield from self._read(f)
        self._first_cycle = False

    def _glob(self) -> dict[Ident, tuple[str, os.stat_result]]:
        found: dict[Ident, tuple[str, os.stat_result]] = {}
        paths = sorted(glob.glob(self.path))
        dirs = {os.path.dirname(p) or "." for p in paths} | {os.path.dirname(self.path) or "."}
        if self.inotify is not None:
            for d in dirs:
                if not glob.has_magic(d) and os.path.isdir(d):
                    self.inotify.watch(d)
        for p in paths:
            st = self._stat(p)
            if st is None:
                continue
            found.setdefault((st.st_dev, st.st_ino), (p, st))
            if len(found) >= self.max_files:
                self._warn_once("log_files_capped", path=self.path, max_files=self.max_files)
                break
        return found

    def _stat(self, path: str) -> os.stat_result | None:
        """A regular file's stat; a symlink counts only where the source follows them (`follow_symlinks`)."""
        try:
            st = os.stat(path) if self.follow_symlinks else os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            self._warn_once("log_symlink_skipped", path=path)  # e.g. app.log -> /etc/shadow in a shared folder
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def _open_fd(self, path: str) -> int:
        """Open for reading: never through a symlink unless followed, never blocking (a FIFO swapped in)."""
        nofollow = 0 if self.follow_symlinks else os.O_NOFOLLOW
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | nofollow)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        return fd

    def _warn_once(self, event: str, **kw: Any) -> None:
        key = event + str(kw.get("path", ""))
        if key not in self._warned:
            self._warned.add(key)
            log.warning(event, source=self.name, **kw)

    # --- files ------------------------------------------------------------------------------------
    def _open(self, path: str, ident: Ident, st: os.stat_result) -> Generator[Event, None, FollowedFile | None]:
        """Start following a file where it was left, or where its content is not yet read under another name."""
        try:
            fd = self._open_fd(path)
        except OSError as exc:
            yield FileError(path)
            self._warn_once("log_file_unreadable", path=path, error=exc.strerror or type(exc).__name__)
            return None
        fp = _fingerprint(fd)
        offset, line, fmt = 0, 1, None
        saved = self._resume.pop(ident, None)
        if saved is not None and fp is not None and saved.fp == fp and st.st_size >= saved.offset:
            offset, line, fmt = saved.offset, saved.line, saved.format
        elif fp is not None and self._copy_of_open(path, ident, fp):
            offset = st.st_size  # a rotated copy of a file we follow: its content is read through the original
        elif fp is not None and self._is_copy(path, fp):
            offset = self._consumed.pop(fp)[1]  # a rotated copy whose content we already read under another name
            line = 0  # line numbers of a copy's remainder are not known
        elif self._first_cycle and self._start_at_end:
            offset = st.st_size
        if fmt == "auto":
            fmt = None
        f = FollowedFile(path, fd, ident, offset, fp)
        self.files[ident] = f
        log.info("log_file_opened", source=self.name, path=path, offset=offset)
        yield Opened(f, line, fmt)
        return f

    def _is_copy(self, path: str, fp: bytes) -> bool:
        """True for a new file named like a rotated copy (`app.log.1`) of a file we read, with its first line."""
        seen = self._consumed.get(fp)
        return seen is not None and path != seen[0] and os.path.basename(path).startswith(os.path.basename(seen[0]))

    def _copy_of_open(self, path: str, ident: Ident, fp: bytes) -> bool:
        """True for `app.log.1` (or `app.log-2026…`) that starts like `app.log`, a file we already follow."""
        name = os.path.basename(path)
        for f in self.files.values():
            if f.ident != ident and f.fp == fp and name.startswith(os.path.basename(f.path)):
                return True
        return False

    def _read(self, f: FollowedFile) -> Iterator[Event]:
        """Read to the end of the file (after checking for copytruncate), one `Data` per read."""
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
            yield from self._truncated(f)
        got = False
        while True:
            try:
                data = os.pread(f.fd, self.read_size, f.offset)
            except OSError as exc:
                yield FileError(f.path)
                self._warn_once("log_read_failed", path=f.path, error=exc.strerror or type(exc).__name__)
                break
            if not data:
                break
            got = True
            f.offset += len(data)
            yield Data(f, data)
        now = time.monotonic()
        if got:
            f.pending_since = now if f.holding else None
        elif f.pending_since is not None and now - f.pending_since >= SETTLE_SECONDS:
            yield Settled(f)  # quiet at its end: what was read is whole
            f.pending_since = None

    def _truncated(self, f: FollowedFile) -> Iterator[Event]:
        """Copytruncate: hand on the old content's rest (from the rotated copy when there is one), start over at 0."""
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
                        data = os.pread(fd, min(self.read_size, size - f.offset), f.offset)
                        if not data:
                            break
                        f.offset += len(data)
                        yield Data(f, data)
                finally:
                    os.close(fd)
                if f.fp is not None:
                    self._consumed[f.fp] = (f.path, f.offset)
        log.info("log_truncated", source=self.name, path=f.path, copy=copy[0] if copy else None)
        yield Truncated(f, copy[0] if copy else None)
        f.offset = 0
        f.fp = _fingerprint(f.fd)
        f.pending_since = None
        f.holding = False

    def _find_copy(self, f: FollowedFile) -> tuple[str, int] | None:
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

    def _retire(self, f: FollowedFile) -> Iterator[Event]:
        """A file gone from the path (rename+create, deletion): read the rest through our descriptor, close it."""
        yield from self._read(f)
        if f.fp is not None:
            self._consumed[f.fp] = (f.path, f.offset)
            if len(self._consumed) > 4 * self.max_files:
                self._consumed.pop(next(iter(self._consumed)))
        with contextlib.suppress(OSError):
            os.close(f.fd)
        del self.files[f.ident]
        log.info("log_rotated", source=self.name, path=f.path)
        yield Rotated(f)
