"""Run the daemon: HTTP server plus scheduler, until SIGTERM/SIGINT, then a graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from dbwatch.config import Config
from dbwatch.server import build_app
from dbwatch.store import Store
from dbwatch.webconfig import WebConfig

__all__ = ["serve"]

log = structlog.get_logger("dbwatch")


async def serve(
    config: Config,
    *,
    store: Store | None = None,
    web_config: WebConfig | None = None,
    stop: asyncio.Event | None = None,
    on_started: Callable[[str, int], Awaitable[None]] | None = None,
) -> None:
    """Serve until `stop` is set or a SIGTERM/SIGINT arrives; in-flight jobs are cancelled on the way out."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    web_config = web_config or WebConfig()
    app = build_app(config, store, web_config=web_config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    ssl_context = web_config.ssl_context()
    reloader = web_config.reloader(ssl_context)
    reload_task = asyncio.create_task(reloader.run(web_config.reload_interval)) if reloader else None
    try:
        host, port = config.listen
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        bound = port
        sockets = getattr(site._server, "sockets", None)  # the real port when asked for port 0
        if sockets:
            bound = sockets[0].getsockname()[1]
        log.info("server_started", listen=f"{host}:{bound}", targets=len(config.targets), **web_config.describe())
        if on_started:
            await on_started(host, bound)
        await stop.wait()
        log.info("server_stopping")
    finally:
        if reload_task:
            reload_task.cancel()
            await asyncio.gather(reload_task, return_exceptions=True)
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("server_stopped")
