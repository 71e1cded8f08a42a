"""A small real ASGI login app for the end-to-end test: Starlette on uvicorn, async SQLAlchemy 2 on asyncpg.

Run as its own process: `python -m uvicorn tests.apps.asgi_login:app`. The environment gives the DSN
(`LOGIN_APP_DATABASE_URL`, never argv), the probe user's password (`LOGIN_APP_PASSWORD`) and where the logs go
(`LOGIN_APP_LOG_DIR`): `app.log` (stdlib logging, plain text, tracebacks) and `access.log` (one JSON record per
request, with its duration, as an access-log middleware writes them). The pool is reported to dbwatch through the
in-app hook (`DBWATCH_HOOK_*`).

Routes: `POST /api/login` (the correct path), `POST /api/login/remember` (the seed's bug: a session with
`expire_on_commit=True`, then an expired attribute read after commit, a real `sqlalchemy.exc.MissingGreenlet`
logged with its traceback and answered 500), `GET /healthz`.

`LOGIN_APP_BROKEN=1` replays the outage: the engine has a `StaticPool` (the hook's `static_pool_async` finding) and
`POST /api/login` takes the seed's buggy path, so every login fails with a real MissingGreenlet and HTTP 500.
Restarting without it is the fix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, String, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbwatch.hook import instrument

USER = "probe@example.com"
BROKEN = os.environ.get("LOGIN_APP_BROKEN") == "1"
log = logging.getLogger("loginapp")
access = logging.getLogger("loginapp.access")


class Base(DeclarativeBase):
    """Declarative base of the app's schema."""


class User(Base):
    """A login user; `last_login_at` is server-generated, so a commit expires it."""

    __tablename__ = "e2e_login_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    password: Mapped[str] = mapped_column(String(200))
    last_login_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class State:
    """The engine and the two session factories, made at start-up."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    expiring: async_sessionmaker[AsyncSession]


state = State()


def _file_logger(logger: logging.Logger, path: Path, fmt: str) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    log_dir = Path(os.environ["LOGIN_APP_LOG_DIR"])
    _file_logger(log, log_dir / "app.log", "%(asctime)s %(levelname)s [%(name)s] %(message)s")
    _file_logger(access, log_dir / "access.log", "%(message)s")
    if BROKEN:
        state.engine = create_async_engine(os.environ["LOGIN_APP_DATABASE_URL"], poolclass=StaticPool)
    else:
        state.engine = create_async_engine(os.environ["LOGIN_APP_DATABASE_URL"], pool_size=3, max_overflow=2)
    instrument(state.engine, name="main", app="loginapp")
    state.sessions = async_sessionmaker(state.engine, expire_on_commit=False)
    state.expiring = async_sessionmaker(state.engine, expire_on_commit=True)
    async with state.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        stmt = insert(User).values(email=USER, password=os.environ["LOGIN_APP_PASSWORD"])
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=[User.email], set_={"password": stmt.excluded.password})
        )
    yield
    await state.engine.dispose()


async def _credentials(request: Request) -> tuple[str, str]:
    try:
        body: Any = await request.json()
        return str(body["username"]), str(body["password"])
    except (ValueError, KeyError, TypeError):
        return "", ""


async def login(request: Request) -> Response:
    """The correct path: check the password, stamp the login, refresh before reading the stamp."""
    if BROKEN:
        return await login_remember(request)
    email, password = await _credentials(request)
    async with state.sessions() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
        if user is None or not hmac.compare_digest(user.password, password):
            return JSONResponse({"error": "bad credentials"}, status_code=401)
        user.last_login_at = func.now()
        await session.commit()
        await session.refresh(user)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "at": user.last_login_at.isoformat()})


async def login_remember(request: Request) -> Response:
    """The seed's bug: expire_on_commit=True, then the expired `last_login_at` read after commit."""
    email, _ = await _credentials(request)
    async with state.expiring() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        user.last_login_at = func.now()
        await session.commit()
        return JSONResponse({"remembered_since": user.last_login_at.isoformat()})  # MissingGreenlet


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def server_error(request: Request, exc: Exception) -> Response:
    """What a FastAPI/Starlette app's error handler does: log the traceback, answer 500."""
    log.error("request failed: %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal"}, status_code=500)


class AccessLog:
    """Writes one JSON access record per request, with its duration in milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record = {
                "event": "request",
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
            }
            access.info(json.dumps(record))


app = AccessLog(
    Starlette(
        routes=[
            Route("/api/login", login, methods=["POST"]),
            Route("/api/login/remember", login_remember, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        exception_handlers={Exception: server_error},
        lifespan=lifespan,
    )
)
