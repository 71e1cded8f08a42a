"""DbwatchASGIMiddleware in front of a real Starlette app served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import sqlalchemy
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Match, Route

from dbwatch import metrics as m
from dbwatch.hook import DbwatchASGIMiddleware
from dbwatch.hook.asgi import category
from dbwatch.logs.classify import AppRules, classify_event
from dbwatch.logs.traceback import parse
from dbwatch.pgcluster import free_port
from tests.helpers import eventually
from tests.hook.conftest import Sink


class TemplateRoute(Route):
    """What FastAPI's APIRoute does: put itself in the scope, so middleware can read the template."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


@asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_latency_by_route_template_and_exceptions_by_category(sink: Sink, sa_url: URL) -> None:
    """Starlette path params and FastAPI-style scope routes give templates; scanners land in `unmatched`;
    a real MissingGreenlet (sync use of an async engine) is counted by class and category and still a 500."""
    engine = create_async_engine(sa_url)

    async def user(request: Request) -> PlainTextResponse:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return PlainTextResponse(f"user {request.path_params['user_id']}")

    async def order(request: Request) -> PlainTextResponse:
        raise HTTPException(status_code=404)

    async def greenlet(request: Request) -> PlainTextResponse:
        with engine.sync_engine.connect() as conn:  # the seed outage's error: I/O outside the greenlet
            conn.execute(text("SELECT 1"))
        return PlainTextResponse("unreachable")

    starlette_app = Starlette(
        routes=[
            Route("/users/{user_id}", user),
            TemplateRoute("/orders/{order_id:int}", order),
            Route("/greenlet", greenlet),
        ]
    )
    app = DbwatchASGIMiddleware(starlette_app, app_name="web", sidecar=sink.addr, interval=0.05, max_routes=3)
    async with _serve(app) as base, aiohttp.ClientSession() as http:
        for path in ("/users/1", "/users/2", "/users/abc", "/orders/7", "/greenlet", "/wp-login.php", "/.env"):
            async with http.get(base + path) as r:
                await r.read()
        async with http.post(base + "/users/3") as r:
            assert r.status == 405
    await engine.dispose()

    def hist(route: str, method: str, sc: str) -> int:
        return int(sink.counter(m.HTTP_REQUESTS, "web", route, method, sc))

    await eventually(lambda: hist("/users/{id}", "GET", "2xx") == 3)
    assert hist("/orders/{id}", "GET", "4xx") == 1  # path_format: the convertor dropped
    assert hist("/greenlet", "GET", "5xx") == 1
    assert hist("unmatched", "GET", "4xx") == 2
    assert hist("/users/{id}", "POST", "4xx") == 1
    assert sink.counter(m.APP_EXCEPTIONS, "web", "/greenlet", "MissingGreenlet", "missing_greenlet") == 1


def _raised(fn: Any) -> Exception:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def test_live_exceptions_get_the_log_watchers_category() -> None:
    """The middleware's category of a live exception is what the log watcher says of its printed traceback."""
    engine = sqlalchemy.create_engine("sqlite://", poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.01)
    held = engine.connect()

    def wrapped() -> None:
        try:
            dict[str, int]()["missing"]
        except KeyError as exc:
            raise RuntimeError("handler failed") from exc

    def group() -> None:
        raise ExceptionGroup("tasks", [_raised(engine.connect), _raised(lambda: 1 / 0)])

    cases = {
        "pool_timeout": _raised(engine.connect),  # a real QueuePool timeout
        "other_db": _raised(lambda: held.execute(text("SELECT * FROM no_such_table"))),
        "other": _raised(wrapped),
    }
    cases["pool_timeout (group)"] = _raised(group)
    for expected, exc in cases.items():
        chain = parse("".join(traceback.format_exception(exc)).splitlines())
        assert chain is not None
        logged = classify_event(chain, AppRules()).category.value
        want = expected.split()[0]
        assert (category(exc), logged) == (want, want), expected
    held.close()
    engine.dispose()
