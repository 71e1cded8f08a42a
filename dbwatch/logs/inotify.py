"""Wake-ups from Linux inotify (through libc, no dependency) for the directories the tailer watches.

Where inotify is missing (not Linux, a watch limit, some network file systems) `Inotify.open()` returns None and
the tailer falls back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import struct
from typing import Final

__all__ = ["Inotify"]

IN_MODIFY: Final = 0x002
IN_CLOSE_WRITE: Final = 0x008
IN_MOVED_FROM: Final = 0x040
IN_MOVED_TO: Final = 0x080
IN_CREATE: Final = 0x100
IN_DELETE: Final = 0x200
IN_DELETE_SELF: Final = 0x400
IN_MOVE_SELF: Final = 0x800
IN_NONBLOCK: Final = 0o4000
IN_CLOEXEC: Final = 0o2000000
_MASK: Final = (
    IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)
_HEADER: Final = struct.Struct("iIII")


class Inotify:
    """One inotify descriptor on the event loop; `changed` is set whenever a watched directory sees a change."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd = fd
        self._libc = libc
        self._watches: dict[str, int] = {}
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, self._read)

    @classmethod
    def open(cls) -> Inotify | None:
        """An inotify instance, or None where the system has none."""
        name = ctypes.util.find_library("c")
        if not name:
            return None
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        return cls(fd, libc)

    def watch(self, directory: str) -> bool:
        """Watch a directory (idempotent); False when the kernel refuses (then the caller polls it)."""
        if directory in self._watches:
            return True
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            return False
        self._watches[directory] = wd
        return True

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        if data:
            self.changed.set()
            # a directory removed drops its watch: forget it so it is added again when it comes back
            off = 0
            while off + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, off)
                off += _HEADER.size + length
                if mask & 0x8000:  # IN_IGNORED
                    for d, w in list(self._watches.items()):
                        if w == wd:
                            del self._watches[d]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
