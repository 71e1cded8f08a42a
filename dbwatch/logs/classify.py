"""The closed set of exception categories, the rule that assigns each, and the app-frame rule for locations.

A chain is categorised by its root cause first: walking from the innermost exception outwards, the first one that
matches a specific rule decides (so a `DBAPIError` whose root is asyncpg's `DeadlockDetectedError` is a deadlock).
With no specific match, any database-library exception makes it `other_db`, else `other`.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dbwatch.logs.traceback import Chain, Exc, Frame

__all__ = [
    "RULES",
    "AppRules",
    "Category",
    "Classified",
    "Classifier",
    "Rule",
    "Verdict",
    "classify_chain",
    "classify_event",
    "qualify",
]


class Category(StrEnum):
    """Categories of logged exceptions (closed set; each member is created at zero)."""

    MISSING_GREENLET = "missing_greenlet"
    GREENLET_NOT_INSTALLED = "greenlet_not_installed"
    LAZY_LOAD = "lazy_load"
    POOL_TIMEOUT = "pool_timeout"
    CONCURRENT_OPERATION = "concurrent_operation"
    CONNECTION_REFUSED = "connection_refused"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    CONNECTION_CLOSED = "connection_closed"
    STATEMENT_TIMEOUT = "statement_timeout"
    DEADLOCK = "deadlock"
    IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_timeout"
    POOLER_PREPARED_STATEMENT = "pooler_prepared_statement"
    TERMINATE_CANCELLED = "terminate_cancelled"
    LEAKED_CONNECTION = "leaked_connection"
    OTHER_DB = "other_db"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Rule:
    """One category's rule: a class or a message matches (and, where `frames` is set, one of those functions ran).

    Classes are named without a trailing `Error` and compared case-insensitively, so one name covers asyncpg's
    `DeadlockDetectedError` and psycopg's `DeadlockDetected` (both named from the SQLSTATE condition).
    """

    category: Category
    classes: tuple[str, ...] = ()
    message: str | None = None
    frames: tuple[str, ...] = ()


# The first rule that matches an exception wins (so a ConnectionDoesNotExistError saying "idle-in-transaction
# timeout" is that, not a plain closed connection). Messages are the server's, libpq's (psycopg) and the drivers'.
RULES: Final[tuple[Rule, ...]] = (
    Rule(
        Category.GREENLET_NOT_INSTALLED,
        (),
        r"greenlet library is required|requires that the Python 'greenlet' library|No module named '?greenlet'?",
    ),
    Rule(Category.MISSING_GREENLET, ("MissingGreenlet",), r"greenlet_spawn has not been called"),
    Rule(
        Category.LAZY_LOAD,
        ("DetachedInstance",),
        r"is not bound to a Session|lazy load operation|due to lazy='raise'|lazy loading .* not permitted",
    ),
    Rule(
        Category.POOL_TIMEOUT, (), r"QueuePool limit of size \d+ overflow -?\d+ reached|connection timed out, timeout"
    ),
    Rule(
        Category.CONCURRENT_OPERATION,
        ("IllegalStateChange",),
        r"another operation is in progress|concurrent operations are not permitted|Session is already flushing"
        r"|another command is already in progress",
    ),
    Rule(
        Category.POOLER_PREPARED_STATEMENT,
        ("DuplicatePreparedStatement", "InvalidSQLStatementName"),
        r"prepared statement \S+ (?:already exists|does not exist)",
    ),
    Rule(
        Category.TOO_MANY_CONNECTIONS,
        ("TooManyConnections",),
        r"too many clients already|remaining connection slots are reserved|too many connections"
        r"|no more connections allowed",
    ),
    Rule(
        Category.IDLE_IN_TRANSACTION_TIMEOUT,
        ("IdleInTransactionSessionTimeout",),
        r"idle-in-transaction timeout|idle_in_transaction_session_timeout",
    ),
    Rule(Category.STATEMENT_TIMEOUT, (), r"canceling statement due to statement timeout"),
    Rule(Category.DEADLOCK, ("DeadlockDetected",), r"deadlock detected"),
    Rule(
        Category.CONNECTION_REFUSED,
        ("ConnectionRefused", "CannotConnectNow"),
        r"Connect call failed|Connection refused|\[Errno 111\]"
        r"|the database system is (?:starting up|shutting down|in recovery mode|not yet accepting connections)",
    ),
    Rule(
        Category.CONNECTION_CLOSED,
        ("ConnectionDoesNotExist", "ConnectionReset", "AdminShutdown", "ConnectionFailure"),
        r"connection was closed in the middle of operation|server closed the connection unexpectedly"
        r"|connection is closed|connection is lost|terminating connection due to administrator command"
        r"|Connection reset by peer|SSL SYSCALL error: EOF detected|SSL connection has been closed unexpectedly",
    ),
    Rule(
        Category.TERMINATE_CANCELLED,
        ("CancelledError",),
        None,
        ("do_terminate", "do_close", "_close_connection", "_terminate_graceful_close", "_terminate_force_close"),
    ),
    Rule(Category.LEAKED_CONNECTION, (), r"The garbage collector is trying to clean up non-checked-in connection"),
)


def _stem(cls: str) -> str:
    return cls.rsplit(".", 1)[-1].removesuffix("Error").lower()


_COMPILED: Final = tuple(
    (r.category, frozenset(_stem(c) for c in r.classes), re.compile(r.message) if r.message else None, r.frames)
    for r in RULES
)
_DB_MODULES: Final = ("sqlalchemy.", "asyncpg.", "psycopg.", "psycopg2.", "aiopg.", "databases.", "sqlmodel.")

# structlog's dict_tracebacks give only `__name__`; the classes we know get their module back. A driver's class
# is also found in the chain's own messages: SQLAlchemy names the DBAPI error it wraps, `(psycopg.errors.X) ...`
# or `<class 'asyncpg.exceptions.X'>: ...`.
_SA_EXC: Final = (
    "MissingGreenlet IllegalStateChangeError DBAPIError InterfaceError OperationalError InvalidRequestError "
    "StatementError IntegrityError ProgrammingError DataError InternalError NotSupportedError DatabaseError "
    "PendingRollbackError ResourceClosedError NoResultFound MultipleResultsFound NoSuchColumnError ArgumentError "
    "CompileError SAWarning"
)
_QUALIFIED: Final = {
    **{name: f"sqlalchemy.exc.{name}" for name in _SA_EXC.split()},
    "DetachedInstanceError": "sqlalchemy.orm.exc.DetachedInstanceError",
    "StaleDataError": "sqlalchemy.orm.exc.StaleDataError",
    "ObjectDeletedError": "sqlalchemy.orm.exc.ObjectDeletedError",
    "TooManyConnectionsError": "asyncpg.exceptions.TooManyConnectionsError",
    "DeadlockDetectedError": "asyncpg.exceptions.DeadlockDetectedError",
    "QueryCanceledError": "asyncpg.exceptions.QueryCanceledError",
    "IdleInTransactionSessionTimeoutError": "asyncpg.exceptions.IdleInTransactionSessionTimeoutError",
    "ConnectionDoesNotExistError": "asyncpg.exceptions.ConnectionDoesNotExistError",
    "AdminShutdownError": "asyncpg.exceptions.AdminShutdownError",
    "CannotConnectNowError": "asyncpg.exceptions.CannotConnectNowError",
    "CancelledError": "asyncio.exceptions.CancelledError",
}
_ASYNCPG_ADAPTER: Final = "sqlalchemy.dialects.postgresql.asyncpg."
_NAMED_RE: Final = re.compile(r"^\(([A-Za-z_][\w.]*\.\w+)\)|<class '([A-Za-z_][\w.]*\.\w+)'>")


def qualify(name: str, known: Mapping[str, str] | None = None) -> str:
    """A bare class name from dict_tracebacks made fully qualified where we know the module."""
    if "." in name:
        return name
    if known and name in known:
        return known[name]
    return _QUALIFIED.get(name, name)


def _qualified(chain: Chain) -> list[str]:
    """Each exception's class, qualified: a bare name (structlog's dict form) from the class that an outer
    exception's message names (SQLAlchemy names the DBAPI error it wraps: `(psycopg.errors.X) ...`,
    `<class 'asyncpg.exceptions.X'>`), else from the table. Only outer messages count: SQLAlchemy's own
    `OperationalError` says `(psycopg.OperationalError) ...` of the one inside it."""
    known: dict[str, str] = {}
    names: list[str] = []
    for exc in chain.excs:  # outermost first
        names.append(qualify(exc.cls, known))
        for m in _NAMED_RE.finditer(exc.message[:500]):
            if m.group(2):  # <class 'asyncpg.exceptions.X'>: the driver's own class, over its adapter's
                known[m.group(2).rsplit(".", 1)[-1]] = m.group(2)
            else:
                known.setdefault(m.group(1).rsplit(".", 1)[-1], m.group(1))
    # SQLAlchemy's asyncpg adapter re-raises the driver's error under the same name: the inner one is asyncpg's.
    for k in range(1, len(names)):
        if names[k] == names[k - 1] and names[k].startswith(_ASYNCPG_ADAPTER) and "." not in chain.excs[k].cls:
            names[k] = "asyncpg.exceptions." + chain.excs[k].cls
    return names


def _category(exc: Exc) -> Category | None:
    stem = _stem(exc.cls)
    for cat, stems, rx, frames in _COMPILED:
        if (stem in stems or (rx is not None and rx.search(exc.message))) and (
            not frames or any(f.function in frames for f in exc.frames)
        ):
            return cat
    if exc.cls == "sqlalchemy.exc.TimeoutError":
        return Category.POOL_TIMEOUT
    return None


def _is_db(cls: str) -> bool:
    return cls.startswith(_DB_MODULES) or cls in ("DBAPIError", "PostgresError")


_SITE_RE: Final = re.compile(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)")
_STDLIB_RE: Final = re.compile(r"[/\\]lib(?:64)?[/\\]python\d(?:\.\d+)?[/\\]")


@dataclass(frozen=True, slots=True)
class AppRules:
    """Which frames are application code: under an app root, or in a top-level app package (even in site-packages).

    With neither configured, any absolute `.py` path outside site-packages and the standard library counts. A frame's
    location label is the path from the package (or relative to the root) that matched, so it is the same whatever
    folder the code is deployed in (`/srv/myapp/myapp/routes.py` and `/tmp/x/routes.py` under root `/tmp/x` alike).
    """

    roots: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()

    def is_app(self, path: str) -> bool:
        if path.startswith("<") or not path.endswith(".py"):
            return False  # <frozen ...>, <string>, compiled frames (.pyx) are never the app's
        path = path.replace("\\", "/")
        site = _SITE_RE.search(path)
        if site:  # an installed distribution: the app's only when it is one of the app packages
            return site.group(1).removesuffix(".py") in self.packages
        if _STDLIB_RE.search(path):
            return False
        if self.packages and self._in_package(path) >= 0:
            return True
        if self.roots:
            return self._under_root(path) >= 0
        if self.packages:
            return False
        return os.path.isabs(path)

    def _in_package(self, path: str) -> int:
        """Where the package part of the path starts, or -1.

        The last `/<pkg>/` is the package: whatever comes before it is the deployment folder, which may itself be
        named after the package (`git clone` makes `myapp/myapp/...`).
        """
        best = -1
        for p in self.packages:
            k = path.rfind(f"/{p}/")
            if k >= 0:
                best = max(best, k + 1)
            elif path.startswith(f"{p}/"):
                best = max(best, 0)
        return best

    def _under_root(self, path: str) -> int:
        """The length of the longest app root the path is under, or -1."""
        best = -1
        for r in self.roots:
            base = r.replace("\\", "/").rstrip("/") + "/"
            if path.startswith(base):
                best = max(best, len(base))
        return best

    def short(self, path: str) -> str:
        """The path as a label: from its package (installed or not), else relative to its app root."""
        path = path.replace("\\", "/")
        site = _SITE_RE.search(path)
        if site:
            return path[site.start(1) :]
        k = self._in_package(path)
        if k >= 0:
            return path[k:]
        k = self._under_root(path)
        if k >= 0:
            return path[k:]
        return path

    def label(self, frame: Frame | None) -> str:
        """The `location` label of a frame, `path:line` as `short` gives the path; empty for no frame."""
        return "" if frame is None else f"{self.short(frame.path)}:{frame.line}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one counted exception (a chain, or one leaf of a group) is classified and located."""

    category: Category
    exception: str  # the class that decided the category, fully qualified
    location: Frame | None  # the deepest application frame


def classify_chain(chain: Chain, rules: AppRules, outer_frames: Sequence[Frame] = ()) -> Verdict:
    """Category by root cause first, the deciding class, and the deepest app frame (falling back outwards)."""
    names = _qualified(chain)
    k = len(chain.excs) - 1
    category: Category | None = None
    while k >= 0 and category is None:
        category = _category(chain.excs[k])
        k -= 1
    if category is not None:
        k += 1
    else:
        k = next((i for i in reversed(range(len(names))) if _is_db(names[i])), -1)
        category = Category.OTHER_DB if k >= 0 else Category.OTHER
        k = max(k, 0)
    decider = chain.excs[k]
    location = _deepest_app(decider.frames, rules)
    if location is None:
        for exc in chain.excs:
            location = _deepest_app(exc.frames, rules)
            if location is not None:
                break
    if location is None:
        location = _deepest_app(outer_frames, rules)
    return Verdict(category, names[k], location)


def _deepest_app(frames: Sequence[Frame], rules: AppRules) -> Frame | None:
    for f in reversed(frames):
        if rules.is_app(f.path):
            return f
    return None


@dataclass(frozen=True, slots=True)
class Classified:
    """A whole event classified: its category, classes, chain, location, and the units it counts."""

    category: Category
    final_class: str
    root_class: str
    chain: tuple[str, ...]  # outermost first
    location: Frame | None
    leaves: tuple[Verdict, ...]  # for a group: one per leaf exception; else empty
    counted: tuple[Verdict, ...]  # what the metrics count: the leaves of a group, else the event itself
    message: str  # the final exception's message, secrets redacted


def classify_event(chain: Chain, rules: AppRules) -> Classified:
    """Classify a logged chain; each leaf of a group on its own (a MissingGreenlet in a TaskGroup stays one)."""
    names = tuple(_qualified(chain))
    leaves = chain.leaves()
    if len(leaves) == 1 and leaves[0] is chain:
        v = classify_chain(chain, rules)
        return Classified(v.category, names[0], names[-1], names, v.location, (), (v,), redact(chain.final.message))
    group_frames = [f for e in chain.excs for f in e.frames]
    verdicts = tuple(classify_chain(leaf, rules, group_frames) for leaf in leaves)
    order = list(Category)  # a group's own category: its leaves' first in declaration order (missing_greenlet first)
    category = min((v.category for v in verdicts), key=order.index, default=Category.OTHER)
    location = next((v.location for v in verdicts if v.category is category and v.location), None)
    if location is None:
        location = _deepest_app(group_frames, rules)
    return Classified(category, names[0], names[-1], names, location, verdicts, verdicts, redact(chain.final.message))


_SECRET_RES: Final = (
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)"), r"\1***\2"),  # scheme://user:PASS@
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)(\s*[=:]\s*)['\"]?[^\s'\",;&)]+"
        ),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"\b[A-Za-z0-9_\-+/=]{32,}\b"), "***"),  # long opaque tokens and keys
)


def redact(message: str) -> str:
    """A message with values that look like secrets (URL passwords, key=value secrets, tokens) masked."""
    for rx, repl in _SECRET_RES:
        message = rx.sub(repl, message)
    return message


class Classifier:
    """classify_event with a cache by chain identity (the plain scanner hands out one Chain per distinct text).

    The cache holds weak references: an entry lives only as long as its chain does (the parse cache owns the
    chains it hands out again), so it never keeps a large chain, or its verdict, alive by itself.
    """

    __slots__ = ("_cache", "_rules")

    def __init__(self, rules: AppRules) -> None:
        self._rules = rules
        self._cache: dict[int, tuple[weakref.ref[Chain], Classified]] = {}

    def __call__(self, chain: Chain) -> Classified:
        key = id(chain)
        hit = self._cache.get(key)
        if hit is not None and hit[0]() is chain:
            return hit[1]
        result = classify_event(chain, self._rules)
        self._cache[key] = (weakref.ref(chain, lambda _r: self._cache.pop(key, None)), result)
        return result
