"""Run the daemon: the components (dbwatch.app) plus the HTTP server, until SIGTERM/SIGINT, then a graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

from dbwatch.app import build
from dbwatch.config import Config
from dbwatch.httpd import HTTPLimits
from dbwatch.server import build_server
from dbwatch.store import Store
from dbwatch.tasks import Tasks
from dbwatch.webconfig import WebConfig

__all__ = ["HTTPLimits", "serve"]

log = structlog.get_logger("dbwatch")


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
    components = build(config, store)
    try:
        # The components start before the server listens and stop after it has closed: a scrape never sees a
        # half-started or half-stopped daemon.
        async with components.running():
            server = build_server(components.store, components, web_config, limits)
            ssl_context = web_config.ssl_context()
            reloader = web_config.reloader(ssl_context)
            tasks = Tasks()
            if reloader:
                tasks.start(reloader.run(web_config.reload_interval), name="tls:reload")
            try:
                host, port = config.listen
                bound = await server.start(host, port, ssl_context)
                log.info(
                    "server_started", listen=f"{host}:{bound}", targets=len(config.targets), **web_config.describe()
                )
                if on_started:
                    await on_started(host, bound)
                await stop.wait()
                log.info("server_stopping")
            finally:
                await tasks.stop()
                await server.stop(grace=5.0)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("server_stopped")
