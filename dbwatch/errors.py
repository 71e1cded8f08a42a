"""The closed set of probe failure reasons and the one function that maps an exception to one."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import sys
from enum import StrEnum
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    import psycopg

__all__ = ["Reason", "classify", "server_errors"]


class Reason(StrEnum):
    """Why a probe or a collection failed. Closed: anything unknown is OTHER."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    DNS = "dns"
    SSL = "ssl"
    AUTH_FAILED = "auth_failed"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    DATABASE_MISSING = "database_missing"
    STARTING_UP = "starting_up"
    SHUTTING_DOWN = "shutting_down"
    OTHER = "other"


_REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EHOSTUNREACH, errno.ENETUNREACH})


def classify(exc: BaseException) -> Reason:
    """Map an exception raised while probing or collecting to a Reason."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        reason = _classify_one(cur)
        if reason is not Reason.OTHER:
            return reason
        cur = cur.__cause__ or cur.__context__
    return Reason.OTHER


def _classify_one(exc: BaseException) -> Reason:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Reason.TIMEOUT
    if isinstance(exc, socket.gaierror):
        return Reason.DNS
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Reason.SSL
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return Reason.AUTH_FAILED
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return Reason.DATABASE_MISSING
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return Reason.TOO_MANY_CONNECTIONS
    if isinstance(exc, asyncpg.CannotConnectNowError):
        msg = str(exc).lower()
        return Reason.SHUTTING_DOWN if "shutting down" in msg else Reason.STARTING_UP
    if isinstance(exc, asyncpg.AdminShutdownError):
        return Reason.SHUTTING_DOWN
    if isinstance(exc, ConnectionRefusedError):
        return Reason.REFUSED
    if isinstance(exc, OSError):
        if exc.errno in _REFUSED_ERRNOS:
            return Reason.REFUSED
        msg = str(exc)
        if "Multiple exceptions" in msg and "Connect call failed" in msg:
            return Reason.REFUSED
        if "SSL" in msg or "ssl" in msg:
            return Reason.SSL
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        if sqlstate.startswith("28"):
            return Reason.AUTH_FAILED
        if sqlstate == "53300":
            return Reason.TOO_MANY_CONNECTIONS
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        return Reason.SSL
    pg = sys.modules.get("psycopg")
    if pg is not None and isinstance(exc, pg.Error):
        return _classify_psycopg(exc)
    return Reason.OTHER


def server_errors() -> tuple[type[Exception], ...]:
    """The drivers' error classes for what the server answered: asyncpg's, and psycopg's once a target loaded it.

    psycopg is imported only by a config that uses it (pgbouncer), and none of its errors exist before that.
    """
    pg = sys.modules.get("psycopg")
    return (asyncpg.PostgresError,) if pg is None else (asyncpg.PostgresError, pg.Error)


# libpq reports connection failures as text only (no SQLSTATE); these are its stable phrases.
_LIBPQ_PHRASES = (
    ("authentication failed", Reason.AUTH_FAILED),  # password, SASL (pgbouncer), ident, peer
    ("no such user", Reason.AUTH_FAILED),
    ('role "', Reason.AUTH_FAILED),
    ("no pg_hba.conf entry", Reason.AUTH_FAILED),
    ("too many connections", Reason.TOO_MANY_CONNECTIONS),
    ("no more connections allowed", Reason.TOO_MANY_CONNECTIONS),
    ("does not exist", Reason.DATABASE_MISSING),
    ("no such database", Reason.DATABASE_MISSING),
    ("connection refused", Reason.REFUSED),
    ("could not translate host name", Reason.DNS),
    ("timeout expired", Reason.TIMEOUT),
    ("ssl", Reason.SSL),
    ("shutting down", Reason.SHUTTING_DOWN),
    ("starting up", Reason.STARTING_UP),
)


def _classify_psycopg(exc: psycopg.Error) -> Reason:
    """psycopg (pgbouncer's console): by SQLSTATE when the server sent one, else by libpq's message."""
    sqlstate = exc.sqlstate or ""
    if sqlstate.startswith("28"):
        return Reason.AUTH_FAILED
    if sqlstate == "53300":
        return Reason.TOO_MANY_CONNECTIONS
    if sqlstate == "3D000":
        return Reason.DATABASE_MISSING
    msg = str(exc).lower()
    for phrase, reason in _LIBPQ_PHRASES:
        if phrase in msg:
            return reason
    return Reason.OTHER
