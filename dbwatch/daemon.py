"""Run the daemon: the components (dbwatch.app) plus the HTTP server, until SIGTERM/SIGINT, then a graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web

from dbwatch import metrics as m
from dbwatch.app import build
from dbwatch.config import Config
from dbwatch.server import build_app
from dbwatch.store import Store
from dbwatch.tasks import Tasks
from dbwatch.webconfig import WebConfig

__all__ = ["REJECT_REASONS", "HTTPLimits", "serve"]

log = structlog.get_logger("dbwatch")

REJECT_REASONS: Final = ("connection_limit", "header_timeout", "auth_busy")


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """Bounds on the HTTP server's connections, so idle or slow clients cannot hold it.

    header_timeout: a request head (request line and headers) must arrive whole within this many seconds of its first
    byte, or of the connection's start (also the TLS handshake's limit). idle_timeout: a keep-alive connection with
    no request in progress is closed after this long. max_connections: connections beyond are closed at once.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    max_connections: int = 512


async def serve(
    config: Config,
    *,
    store: Store | None = None,
    web_config: WebConfig | None = None,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str, int], Awaitable[None]] | None = None,
    limits: HTTPLimits | None = None,
) -> None:
    """Serve until `stop` is set or a SIGTERM/SIGINT arrives; in-flight jobs are cancelled on the way out."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    web_config = web_config or WebConfig()
    limits = limits or HTTPLimits()
    components = build(config, store)
    try:
        # The components start before the server listens and stop after it has closed (as aiohttp's cleanup
        # context did): a scrape never sees a half-started or half-stopped daemon.
        async with components.running():
            runner = web.AppRunner(
                build_app(components.store, components, web_config=web_config),
                access_log=None,
                handle_signals=False,
                shutdown_timeout=5.0,
                keepalive_timeout=limits.idle_timeout,
            )
            await runner.setup()
            ssl_context = web_config.ssl_context()
            reloader = web_config.reloader(ssl_context)
            tasks = Tasks()
            if reloader:
                tasks.start(reloader.run(web_config.reload_interval), name="tls:reload")
            try:
                host, port = config.listen
                site = _GuardedSite(runner, host, port, ssl_context, limits, components.store)
                await site.start()
                bound = port
                sockets = getattr(site._server, "sockets", None)  # the real port when asked for port 0
                if sockets:
                    bound = sockets[0].getsockname()[1]
                log.info(
                    "server_started", listen=f"{host}:{bound}", targets=len(config.targets), **web_config.describe()
                )
                if on_started:
                    await on_started(host, bound)
                await stop.wait()
                log.info("server_stopping")
            finally:
                await tasks.stop()
                await runner.cleanup()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("server_stopped")


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site, with each connection's protocol wrapped in a `_Guard` (aiohttp has no head timeout)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        limits: HTTPLimits,
        store: Store,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        self._limits = limits
        self._store = store
        self._live: set[_Guard] = set()
        self._logged: set[str] = set()
        for reason in REJECT_REASONS:
            store.inc(m.HTTP_REJECTED, (reason,), 0)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner, as TCPSite.start does before listening
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guard(server(), self),
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._limits.header_timeout if self._ssl_context else None,
            backlog=self._backlog,
            reuse_address=True,
        )

    def reject(self, reason: str) -> None:
        """Count a closed connection; the first of each reason is logged (then only counted, as a flood would be)."""
        self._store.inc(m.HTTP_REJECTED, (reason,))
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("http_connection_closed", reason=reason, first=True)


class _Guard(asyncio.Protocol):
    """One connection: refused over the connection cap, closed when a request head does not complete in time.

    Sits in front of aiohttp's protocol and forwards every call to it; it only watches the bytes for the blank line
    that ends a request head. A head's clock starts when the connection opens, and again at the first byte after a
    complete head (the next request), so a client trickling a head byte by byte is closed as surely as a silent one.
    Between requests, aiohttp's keep-alive timeout (`idle_timeout`) applies.
    """

    def __init__(self, inner: Any, site: _GuardedSite) -> None:
        self._inner: Any = inner
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        live = self._site._live
        if len(live) >= self._site._limits.max_connections:
            self._inner = None
            self._site.reject("connection_limit")
            transport.abort()
            return
        live.add(self)
        self._transport = transport
        self._inner.connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._site._limits.header_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._site.reject("header_timeout")
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is None and data:
            self._arm()  # the first byte of the next request
        buf = self._tail + data
        end = buf.rfind(b"\r\n\r\n")
        if end >= 0 and self._timer is not None:
            if end + 4 == len(buf):
                self._timer.cancel()
                self._timer = None
            else:
                self._arm()  # more follows the head: the next pipelined head (or a body, which nothing here reads)
        self._tail = buf[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._site._live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
