"""A plain ASGI app with an async engine, instrumented at import: run by gunicorn with uvicorn workers in tests.

Environment: DBWATCH_TEST_URL (SQLAlchemy URL), DBWATCH_HOOK_ADDR / _APP / _INTERVAL (read by the hook).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dbwatch.hook import DbwatchASGIMiddleware, instrument

engine = create_async_engine(os.environ["DBWATCH_TEST_URL"], pool_size=2, max_overflow=0)
instrument(engine, "primary")  # before the fork with --preload: each worker must still count only its own


async def _app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path.startswith("/users/"):
        async with engine.connect() as conn:
            value = await conn.scalar(text("SELECT 1"))
        body = f"pid={os.getpid()} value={value}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/boom":
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1 / 0"))  # a real DBAPI error, unhandled
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"not found"})


app = DbwatchASGIMiddleware(_app)
