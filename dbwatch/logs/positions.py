"""A log source's read positions, persisted in the state directory so a restart neither re-counts nor skips."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = ["Positions"]

log = structlog.get_logger("dbwatch.logs")

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
