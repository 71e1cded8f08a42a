"""The hook ingest's listener: a UDP or Unix datagram socket whose datagrams go to an `Ingest`, and worker expiry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator
from typing import Any

import structlog

from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.ingest.aggregate import Ingest
from dbwatch.store import Store
from dbwatch.tasks import Tasks

__all__ = ["running_ingest"]

log = structlog.get_logger("dbwatch.ingest")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._ingest.receive(data)

    def error_received(self, exc: Exception) -> None:
        log.warning("hook_receive_error", error=type(exc).__name__)


def _bind_unix(path: str) -> socket.socket:
    """A Unix datagram socket at `path`, created with mode 0666 (the app's container runs as another user).

    The mode comes from the umask in force during bind(), so the file never exists with another mode and no
    chmod() ever runs on a path (which would follow a symlink swapped in, in a shared volume). bind() itself does
    not follow a symlink: anything but a stale socket at `path` makes it fail. The umask is process-wide, so it is
    changed only for the bind() call, which creates nothing else.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run; anything else makes bind() fail
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o111)  # rw for everyone; the token, when set, guards what is written
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


@contextlib.asynccontextmanager
async def running_ingest(config: HookConfig, store: Store) -> AsyncIterator[tuple[Ingest, wire.Address]]:
    """Listen where hook.listen says (UDP or a Unix datagram socket) and expire workers, until the block exits."""
    ingest = Ingest(config, store)
    loop = asyncio.get_running_loop()
    addr = config.listen
    if addr.is_unix:
        sock = _bind_unix(addr.path)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(ingest), sock=sock)
        bound = addr
    else:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(ingest), local_addr=(addr.host, addr.port))
        host, port = transport.get_extra_info("sockname")[:2]
        bound = wire.Address(host=host, port=port)
    log.info("hook_listening", listen=str(bound))

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(min(5.0, config.worker_expiry / 4))
            ingest.expire()

    tasks = Tasks()
    tasks.start(expire_loop(), name="hook:expire")
    try:
        yield ingest, bound
    finally:
        await tasks.stop()
        transport.close()
        if addr.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(addr.path)
