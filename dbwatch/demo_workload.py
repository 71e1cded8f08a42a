"""The demo's app: a small async SQLAlchemy workload that reproduces the seed outage's bugs now and then.

Run as its own process (`python -m dbwatch.demo_workload`), like a real app beside the sidecar. The DSN and the login
password come from the environment (never argv, which `ps` shows). With `--port` it serves `POST /api/login` on
127.0.0.1 (the endpoint the demo's synthetic login probe checks) and writes one JSON access record per request, with
its duration, to `access/login.log` under the log dir. Every cycle it logs in a user through that endpoint; some
cycles take the buggy path instead: `expire_on_commit=True` then `user.updated_at` read after commit → a real
MissingGreenlet, or an attribute read on a detached instance → a real DetachedInstanceError. Failures are logged with
their traceback through stdlib logging (plain text file) and structlog (JSON lines file), as a FastAPI app would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import os
import random
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from sqlalchemy import DateTime, String, func, select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbwatch.demo import ACCESS_DIR, LOGIN_PATH
from dbwatch.hook import instrument

__all__ = ["main"]


class Base(DeclarativeBase):
    """Declarative base of the demo schema."""


class User(Base):
    """A user row whose `updated_at` is server-generated, so it is expired after commit."""

    __tablename__ = "demo_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


async def login_ok(factory: async_sessionmaker[AsyncSession], email: str) -> str:
    """The correct path: no lazy load after commit."""
    async with factory() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        user.updated_at = dt.datetime.now(dt.UTC)
        await session.commit()
        await session.refresh(user)
        return user.updated_at.isoformat()


async def login_buggy(factory: async_sessionmaker[AsyncSession], email: str) -> str:
    """The seed's bug: expire_on_commit=True, then `user.updated_at` read after commit (a lazy load, no greenlet)."""
    async with factory() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        user.updated_at = dt.datetime.now(dt.UTC)
        await session.commit()
        return user.updated_at.isoformat()  # MissingGreenlet: the attribute was expired by the commit


async def profile_detached(factory: async_sessionmaker[AsyncSession], email: str) -> str:
    """A detached instance: the session closed, then an expired attribute is read."""
    async with factory() as session:
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        session.expire(user, ["email"])
    return user.email  # DetachedInstanceError


def login_app(factory: async_sessionmaker[AsyncSession], password: str, access_log: Path) -> web.Application:
    """`POST /api/login` with `{username, password}`: the correct login path; one JSON access record per request."""
    out = access_log.open("a", buffering=1, encoding="utf-8")

    @web.middleware
    async def access(request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            status = resp.status
            return resp
        finally:
            ms = round((time.perf_counter() - t0) * 1000, 3)
            record = {"method": request.method, "path": request.path, "status": status, "duration_ms": ms}
            out.write(json.dumps(record) + "\n")

    async def login(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            email, given = str(body["username"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "bad request"}, status=400)
        if not hmac.compare_digest(given.encode(), password.encode()):
            return web.json_response({"error": "bad credentials"}, status=401)
        try:
            await login_ok(factory, email)
        except NoResultFound:
            return web.json_response({"error": "bad credentials"}, status=401)
        return web.json_response({"access_token": secrets.token_urlsafe(16), "token_type": "bearer"})

    async def close_log(app: web.Application) -> None:
        out.close()

    app = web.Application(middlewares=[access])
    app.router.add_post(LOGIN_PATH, login)
    app.on_cleanup.append(close_log)
    return app


async def run(
    dsn: str,
    log_dir: Path,
    cycles: int,
    period: float,
    bug_rate: float,
    port: int = 0,
    password: str = "",
    listen_fd: int | None = None,
) -> None:
    """Run the workload; `cycles` 0 means until cancelled. With a port, serve the login endpoint and log in via it
    (on the listening socket `listen_fd` when given, already bound to that port)."""
    plain = logging.getLogger("demoapp.auth")
    handler = logging.FileHandler(log_dir / "app.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    plain.addHandler(handler)
    plain.setLevel(logging.INFO)
    plain.propagate = False
    json_file = (log_dir / "app.json.log").open("a", buffering=1)
    slog = structlog.wrap_logger(
        structlog.PrintLogger(json_file),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    engine = create_async_engine(dsn, pool_size=3, max_overflow=0)
    instrument(engine, name="primary")  # the pool hook; the demo sets DBWATCH_HOOK_ADDR and DBWATCH_HOOK_APP
    good = async_sessionmaker(engine, expire_on_commit=False)
    bad = async_sessionmaker(engine, expire_on_commit=True)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with good() as session:
        if not (await session.execute(select(User).limit(1))).first():
            session.add_all([User(email=f"user{i}@example.com") for i in range(5)])
            await session.commit()
    runner: web.AppRunner | None = None
    client: aiohttp.ClientSession | None = None
    if port:
        (log_dir / ACCESS_DIR).mkdir(exist_ok=True)
        runner = web.AppRunner(login_app(good, password, log_dir / ACCESS_DIR / "login.log"), access_log=None)
        await runner.setup()
        if listen_fd is None:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        else:
            await web.SockSite(runner, socket.socket(fileno=listen_fd)).start()
        client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    rng = random.Random(42)
    n = 0
    try:
        while cycles == 0 or n < cycles:
            n += 1
            email = f"user{rng.randrange(5)}@example.com"
            roll = rng.random()
            try:
                if roll < bug_rate / 2:
                    await login_buggy(bad, email)
                elif roll < bug_rate:
                    await profile_detached(good, email)
                elif client is not None:
                    url = f"http://127.0.0.1:{port}{LOGIN_PATH}"
                    with contextlib.suppress(aiohttp.ClientError):  # the endpoint's own errors are its log's
                        async with client.post(url, json={"username": email, "password": password}) as resp:
                            await resp.read()
                    plain.info("login ok")
                else:
                    await login_ok(good, email)
                    plain.info("login ok")
            except Exception:  # noqa: BLE001 - an app's error handler: log with traceback, keep serving
                if n % 2:
                    plain.exception("Login failed")
                else:
                    slog.exception("login_failed", path="/login")
            await asyncio.sleep(period)
    finally:
        if client is not None:
            await client.close()
        if runner is not None:
            await runner.cleanup()
        await engine.dispose()
        json_file.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m dbwatch.demo_workload --log-dir DIR` with DEMO_DATABASE_URL in the environment."""
    p = argparse.ArgumentParser(prog="python -m dbwatch.demo_workload", description=__doc__.splitlines()[0])
    p.add_argument("--log-dir", required=True, type=Path, help="where app.log and app.json.log are written")
    p.add_argument("--cycles", type=int, default=0, help="stop after N cycles (0: run until killed)")
    p.add_argument("--period", type=float, default=0.5, help="seconds between cycles")
    p.add_argument("--bug-rate", type=float, default=0.2, help="fraction of cycles that take a buggy path")
    p.add_argument(
        "--port", type=int, default=0, help="serve POST /api/login on 127.0.0.1:PORT (password: DEMO_LOGIN_PASSWORD)"
    )
    p.add_argument("--listen-fd", type=int, help="serve on this inherited listening socket (bound to --port)")
    args = p.parse_args(argv)
    dsn = os.environ.get("DEMO_DATABASE_URL")
    if not dsn:
        sys.stderr.write("DEMO_DATABASE_URL is not set\n")
        return 2
    password = os.environ.get("DEMO_LOGIN_PASSWORD", "")
    if args.port and not password:
        sys.stderr.write("--port needs DEMO_LOGIN_PASSWORD\n")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run(dsn, args.log_dir, args.cycles, args.period, args.bug_rate, args.port, password, args.listen_fd)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
