"""One label policy (dbwatch.labels): the same request and the same error get the same labels from every source.

The equality test serves a real Starlette app on uvicorn with the in-app hook's ASGI middleware in front, an access-log
middleware writing JSON records, and an error handler logging tracebacks; the hook's datagrams go to a real ingest,
the access log to the access-log parser and the app log to the log counter, and their label sets are compared.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dbwatch import labels
from dbwatch import metrics as m
from dbwatch.config import AccessConfig
from dbwatch.hook import DbwatchASGIMiddleware, instrument
from dbwatch.logs.classify import AppRules
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Stats
from dbwatch.logs.sinks import AccessLog, ExceptionCounter
from dbwatch.store import Store
from tests.apps.asgi_login import AccessLog as AccessLogMiddleware
from tests.helpers import eventually
from tests.hook.conftest import Sink
from tests.hook.test_asgi import TemplateRoute, _serve

UUID = "0b7e6f4c-3a2d-4c1e-9f00-1234567890ab"


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("/api/users/{uid}/orders", "/api/users/{id}/orders"),  # a configured template
        ("/api/users/{user_id}/orders", "/api/users/{id}/orders"),  # FastAPI's path_format
        ("/api/users/123/orders?page=2", "/api/users/{id}/orders"),  # a raw path
        (f"/api/users/{UUID}/orders", "/api/users/{id}/orders"),
        ("/api/users/deadbeef1234abcd/orders", "/api/users/{id}/orders"),
        ("/reset/aZ3kq9Lm2Pq8Rt5Vx7Yz1B", "/reset/{id}"),
        ("/static/{p:path}", "/static/{path}"),
        ("/static/**", "/static/{path}"),
        ("http://example.com/a/1", "/a/{id}"),
        ("/health", "/health"),
        ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
        ("*", labels.OTHER),
    ],
)
def test_route_gives_templates_and_paths_one_form(given: str, want: str) -> None:
    """Framework templates, configured templates and raw paths meet in one form; it is idempotent and bounded."""
    assert labels.route(given) == want
    assert labels.route(want) == want
    assert len(labels.route("/" + "z" * 500)) <= labels.MAX_ROUTE_LEN
    assert len(labels.route("/" + "/".join(["abcdefgh"] * 100))) <= labels.MAX_ROUTE_LEN


def test_exception_method_status_and_the_capper() -> None:
    """Bare class names, closed method and status sets, and one overflow value for every cap."""
    assert labels.exception("sqlalchemy.exc.MissingGreenlet") == "MissingGreenlet"
    assert labels.exception("MissingGreenlet") == "MissingGreenlet"
    assert labels.exception("not a class") == labels.OTHER
    assert labels.exception("X" * 81) == labels.OTHER
    assert (labels.method("get"), labels.method("PROPFIND")) == ("GET", labels.OTHER)
    assert [labels.status_class(s) for s in (99, 200, 404, 599, 600)] == ["unknown", "2xx", "4xx", "5xx", "unknown"]
    cap = labels.Capper(2)
    assert [cap(v) for v in ("a", "b", "c", "a", "")] == ["a", "b", labels.OTHER, "a", ""]
    gauge = labels.Capper(1)
    assert gauge.fold({"x": 1, "y": 5}) == ({"x": labels.OTHER, "y": "y"}, 1)
    assert gauge.fold({"x": 9, "y": 1}) == ({"x": labels.OTHER, "y": "y"}, 1)  # a present value keeps its slot


def _series(store: Store, spec: m.MetricSpec, first: int = 1) -> set[tuple[str, ...]]:
    """Label values (from the `first` label on) of the series of a family that counted something."""
    out: set[tuple[str, ...]] = set()
    for fam in store.families():
        if fam.name != spec.name:
            continue
        for s in fam.samples:
            if s.name.endswith(("_count", "_total")) and s.value > 0:
                out.add(tuple(s.labels[k] for k in spec.labels[first:]))
    return out


@pytest.fixture
def app_logs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The app's traceback log and access log files, written through stdlib logging."""
    made: list[tuple[logging.Logger, logging.Handler]] = []
    paths = (tmp_path / "app.log", tmp_path / "access.log")
    fmts = ("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%(message)s")
    for name, path, fmt in zip(("loginapp", "loginapp.access"), paths, fmts, strict=True):
        logger = logging.getLogger(name)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        made.append((logger, handler))
    yield paths
    for logger, made_handler in made:
        logger.removeHandler(made_handler)
        made_handler.close()


async def test_hook_access_log_and_log_counter_label_the_same_request_and_error(
    sink: Sink, sa_url: Any, app_logs: tuple[Path, Path]
) -> None:
    """Route, method and status class of every request, and class and category of a real MissingGreenlet, are equal
    in dbwatch_http_requests_total (from the hook and from the access log) and in dbwatch_app_exceptions_total /
    dbwatch_log_exceptions_total."""
    app_log, access_log = app_logs
    engine = create_async_engine(sa_url)

    async def orders(request: Request) -> Response:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return PlainTextResponse("orders")

    async def item(request: Request) -> Response:
        return PlainTextResponse("item")

    async def login(request: Request) -> Response:
        with engine.sync_engine.connect() as conn:  # the seed outage's error: I/O outside the greenlet
            conn.execute(text("SELECT 1"))
        return PlainTextResponse("unreachable")

    async def server_error(request: Request, exc: Exception) -> Response:
        logging.getLogger("loginapp").error("request failed", exc_info=exc)
        return JSONResponse({"error": "internal"}, status_code=500)

    starlette_app = Starlette(
        routes=[
            TemplateRoute("/api/users/{uid}/orders", orders),  # FastAPI-style: the route in the scope
            Route("/api/items/{item_id}", item),  # Starlette: path_params only
            Route("/api/login", login, methods=["POST"]),
        ],
        exception_handlers={Exception: server_error},
    )
    app = DbwatchASGIMiddleware(AccessLogMiddleware(starlette_app), app_name="web", sidecar=sink.addr, interval=0.05)
    requests = [
        ("GET", "/api/users/123/orders"),
        ("GET", f"/api/users/{UUID}/orders"),
        ("GET", "/api/items/deadbeef1234abcd"),
        ("GET", "/api/items/42?full=1"),
        ("POST", "/api/login"),
        ("GET", "/wp-login.php"),
        ("PUT", "/api/items/7"),  # 405
    ]
    async with _serve(app) as base, aiohttp.ClientSession() as http:
        for method, path in requests:
            async with http.request(method, base + path) as r:
                await r.read()
    await engine.dispose()
    want = {
        ("/api/users/{id}/orders", "GET", "2xx"),
        ("/api/items/{id}", "GET", "2xx"),
        ("/api/login", "POST", "5xx"),
        (labels.UNMATCHED, "GET", "4xx"),
        ("/api/items/{id}", "PUT", "4xx"),
    }
    await eventually(lambda: _series(sink.store, m.HTTP_REQUESTS) == want)

    access_store = Store()
    parser = AccessLog("access", AccessConfig(), access_store)
    for line in access_log.read_text().splitlines():
        assert parser.feed(line, json.loads(line))
    assert _series(access_store, m.HTTP_REQUESTS) == want
    assert _series(access_store, m.HTTP_REQUEST_DURATION) == _series(sink.store, m.HTTP_REQUEST_DURATION)

    log_store = Store()
    counter = ExceptionCounter("app", AppRules(), log_store, max_locations=50, max_exceptions=50)
    splitter = Splitter("auto", counter, Stats())
    splitter.feed(app_log.read_bytes())
    splitter.flush()
    hook_errors = {(exc, cat) for _route, exc, cat in _series(sink.store, m.APP_EXCEPTIONS)}
    logged_errors = {(exc, cat) for cat, exc, _loc in _series(log_store, m.LOG_EXCEPTIONS)}
    assert hook_errors == logged_errors == {("MissingGreenlet", "missing_greenlet")}


@pytest.mark.parametrize("engine_first", [True, False])
async def test_instrument_app_name_and_a_bare_middleware_are_one_app(
    sink: Sink, sa_url: Any, engine_first: bool
) -> None:
    """`instrument(engine, app="myapp")` and `DbwatchASGIMiddleware(app)` without a name report one app, `myapp`,
    whichever is set up first."""
    engine = create_async_engine(sa_url)

    async def ok(request: Request) -> Response:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return PlainTextResponse("ok")

    starlette_app = Starlette(routes=[Route("/ok", ok)])
    name = f"myapp{int(engine_first)}"
    if engine_first:
        assert instrument(engine, name="main", app=name, sidecar=sink.addr, interval=0.05)
    app = DbwatchASGIMiddleware(starlette_app, sidecar=sink.addr, interval=0.05)
    if not engine_first:
        assert instrument(engine, name="main", app=name, sidecar=sink.addr, interval=0.05)
    async with _serve(app) as base, aiohttp.ClientSession() as http, http.get(base + "/ok") as r:
        assert r.status == 200
    await eventually(lambda: sink.hist(m.HTTP_REQUEST_DURATION, name, "/ok", "GET")[0] == 1)
    await eventually(lambda: sink.counter(m.APP_POOL_CHECKOUTS, name, "main") >= 1)
    await engine.dispose()
    apps = {s.labels["app"] for fam in sink.store.families() for s in fam.samples if "app" in s.labels}
    assert apps == {name}
