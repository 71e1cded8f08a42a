"""The demo's app: a small async SQLAlchemy workload that reproduces the seed outage's bugs now and then.

Run as its own process (`python -m dbwatch.demo_workload`), like a real app beside the sidecar. The DSN comes from the
environment (never argv, which `ps` shows). Every cycle it "logs in" a user; some cycles take the buggy path:
`expire_on_commit=True` then `user.updated_at` read after commit → a real MissingGreenlet, or an attribute read on a
detached instance → a real DetachedInstanceError. Failures are logged with their traceback through stdlib logging
(plain text file) and structlog (JSON lines file), as a FastAPI app would log them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import sys
from pathlib import Path

import structlog
from sqlalchemy import DateTime, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


async def run(dsn: str, log_dir: Path, cycles: int, period: float, bug_rate: float) -> None:
    """Run the workload; `cycles` 0 means until cancelled."""
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
    good = async_sessionmaker(engine, expire_on_commit=False)
    bad = async_sessionmaker(engine, expire_on_commit=True)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with good() as session:
        if not (await session.execute(select(User).limit(1))).first():
            session.add_all([User(email=f"user{i}@example.com") for i in range(5)])
            await session.commit()
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
        await engine.dispose()
        json_file.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m dbwatch.demo_workload --log-dir DIR` with DEMO_DATABASE_URL in the environment."""
    p = argparse.ArgumentParser(prog="python -m dbwatch.demo_workload", description=__doc__.splitlines()[0])
    p.add_argument("--log-dir", required=True, type=Path, help="where app.log and app.json.log are written")
    p.add_argument("--cycles", type=int, default=0, help="stop after N cycles (0: run until killed)")
    p.add_argument("--period", type=float, default=0.5, help="seconds between cycles")
    p.add_argument("--bug-rate", type=float, default=0.2, help="fraction of cycles that take a buggy path")
    args = p.parse_args(argv)
    dsn = os.environ.get("DEMO_DATABASE_URL")
    if not dsn:
        sys.stderr.write("DEMO_DATABASE_URL is not set\n")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(dsn, args.log_dir, args.cycles, args.period, args.bug_rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
