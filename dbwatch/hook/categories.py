"""Map an exception to the closed log category set (CONTRACT.md, issue 8) from class names; stdlib only.

The app's process may lack asyncpg or dbwatch's log classifier, so this looks at the class names along the
exception's cause/context chain and at a few well-known message fragments. Replace with dbwatch.logs.classify
once that module is importable without the daemon's dependencies (see /work/coord/NOTES.md).
"""

from __future__ import annotations

from typing import Final

__all__ = ["CATEGORIES", "category", "exception_name"]

CATEGORIES: Final = (
    "missing_greenlet",
    "lazy_load",
    "pool_timeout",
    "concurrent_operation",
    "connection_refused",
    "too_many_connections",
    "connection_closed",
    "statement_timeout",
    "deadlock",
    "idle_in_transaction_timeout",
    "other_db",
    "other",
)

# Class name -> category, checked along the chain from the outermost exception inwards.
_BY_CLASS: Final = {
    "MissingGreenlet": "missing_greenlet",
    "DetachedInstanceError": "lazy_load",
    "TimeoutError@sqlalchemy.exc": "pool_timeout",
    "ConnectionRefusedError": "connection_refused",
    "TooManyConnectionsError": "too_many_connections",
    "ConnectionDoesNotExistError": "connection_closed",
    "ConnectionResetError": "connection_closed",
    "QueryCanceledError": "statement_timeout",
    "DeadlockDetectedError": "deadlock",
    "IdleInTransactionSessionTimeoutError": "idle_in_transaction_timeout",
}
_BY_TEXT: Final = (
    ("another operation is in progress", "concurrent_operation"),
    ("greenlet_spawn has not been called", "missing_greenlet"),
    ("is not bound to a session", "lazy_load"),
    ("too many connections", "too_many_connections"),
    ("remaining connection slots are reserved", "too_many_connections"),
    ("connection was closed", "connection_closed"),
    ("server closed the connection", "connection_closed"),
    ("canceling statement due to statement timeout", "statement_timeout"),
    ("deadlock detected", "deadlock"),
    ("idle-in-transaction timeout", "idle_in_transaction_timeout"),
    ("connect call failed", "connection_refused"),
    ("connection refused", "connection_refused"),
)
_DB_MODULES: Final = ("sqlalchemy", "asyncpg", "psycopg", "psycopg2", "pg8000", "aiosqlite", "sqlite3")
_MAX_CHAIN: Final = 8


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < _MAX_CHAIN and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def category(exc: BaseException) -> str:
    """The category of an exception: first match by class along the chain, then by message, else other(_db)."""
    chain = _chain(exc)
    for e in chain:
        cls = type(e)
        hit = _BY_CLASS.get(f"{cls.__name__}@{cls.__module__}") or _BY_CLASS.get(cls.__name__)
        if hit:
            return hit
    for e in chain:
        text = str(e)[:2000].lower()
        for fragment, cat in _BY_TEXT:
            if fragment in text:
                return cat
    if any(type(e).__module__.split(".", 1)[0] in _DB_MODULES for e in chain):
        return "other_db"
    return "other"


def exception_name(exc: BaseException) -> str:
    """A bounded, label-safe class name (`module.Class` is too long and too many; the class name says enough)."""
    name = type(exc).__name__
    return name[:80] if name.isidentifier() else "other"
