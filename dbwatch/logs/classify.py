"""The closed set of exception categories, the rule that assigns each, and the app-frame rule for locations.

A chain is categorised by its root cause first: walking from the innermost exception outwards, the first one that
matches a specific rule decides (so a `DBAPIError` whose root is asyncpg's `DeadlockDetectedError` is a deadlock).
With no specific match, any database-library exception makes it `other_db`, else `other`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dbwatch.logs.traceback import Chain, Exc, Frame

__all__ = ["AppRules", "Category", "Classified", "Classifier", "Verdict", "classify_chain", "classify_event", "qualify"]


class Category(StrEnum):
    """Categories of logged exceptions (closed set; each member is created at zero)."""

    MISSING_GREENLET = "missing_greenlet"
    LAZY_LOAD = "lazy_load"
    POOL_TIMEOUT = "pool_timeout"
    CONCURRENT_OPERATION = "concurrent_operation"
    CONNECTION_REFUSED = "connection_refused"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    CONNECTION_CLOSED = "connection_closed"
    STATEMENT_TIMEOUT = "statement_timeout"
    DEADLOCK = "deadlock"
    IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_timeout"
    OTHER_DB = "other_db"
    OTHER = "other"


# (category, class names, message regex); the first rule whose class or message matches wins (so a
# ConnectionDoesNotExistError saying "idle-in-transaction timeout" is that, not a plain closed connection).
_RULES: Final[tuple[tuple[Category, tuple[str, ...], str | None], ...]] = (
    (Category.MISSING_GREENLET, ("MissingGreenlet",), r"greenlet_spawn has not been called"),
    (
        Category.LAZY_LOAD,
        ("DetachedInstanceError",),
        r"is not bound to a Session|lazy load operation|due to lazy='raise'|lazy loading .* not permitted",
    ),
    (Category.POOL_TIMEOUT, (), r"QueuePool limit of size \d+ overflow -?\d+ reached|connection timed out, timeout"),
    (
        Category.CONCURRENT_OPERATION,
        ("IllegalStateChangeError",),
        r"another operation is in progress|concurrent operations are not permitted",
    ),
    (
        Category.TOO_MANY_CONNECTIONS,
        ("TooManyConnectionsError",),
        r"too many clients already|remaining connection slots are reserved|too many connections",
    ),
    (
        Category.IDLE_IN_TRANSACTION_TIMEOUT,
        ("IdleInTransactionSessionTimeoutError",),
        r"idle-in-transaction timeout|idle_in_transaction_session_timeout",
    ),
    (Category.STATEMENT_TIMEOUT, (), r"canceling statement due to statement timeout"),
    (Category.DEADLOCK, ("DeadlockDetectedError",), r"deadlock detected"),
    (
        Category.CONNECTION_REFUSED,
        ("ConnectionRefusedError", "CannotConnectNowError"),
        r"Connect call failed|Connection refused|\[Errno 111\]",
    ),
    (
        Category.CONNECTION_CLOSED,
        ("ConnectionDoesNotExistError", "ConnectionResetError", "AdminShutdownError", "ConnectionFailureError"),
        r"connection was closed in the middle of operation|server closed the connection unexpectedly"
        r"|connection is closed|terminating connection due to administrator command|Connection reset by peer",
    ),
)
_COMPILED: Final = tuple((cat, names, re.compile(rx) if rx else None) for cat, names, rx in _RULES)
_DB_MODULES: Final = ("sqlalchemy.", "asyncpg.", "psycopg.", "psycopg2.", "aiopg.", "databases.", "sqlmodel.")

# structlog's dict_tracebacks give only `__name__`; the classes we categorise get their module back.
_QUALIFIED: Final = {
    "MissingGreenlet": "sqlalchemy.exc.MissingGreenlet",
    "DetachedInstanceError": "sqlalchemy.orm.exc.DetachedInstanceError",
    "IllegalStateChangeError": "sqlalchemy.exc.IllegalStateChangeError",
    "DBAPIError": "sqlalchemy.exc.DBAPIError",
    "InterfaceError": "sqlalchemy.exc.InterfaceError",
    "OperationalError": "sqlalchemy.exc.OperationalError",
    "InvalidRequestError": "sqlalchemy.exc.InvalidRequestError",
    "TooManyConnectionsError": "asyncpg.exceptions.TooManyConnectionsError",
    "DeadlockDetectedError": "asyncpg.exceptions.DeadlockDetectedError",
    "QueryCanceledError": "asyncpg.exceptions.QueryCanceledError",
    "IdleInTransactionSessionTimeoutError": "asyncpg.exceptions.IdleInTransactionSessionTimeoutError",
    "ConnectionDoesNotExistError": "asyncpg.exceptions.ConnectionDoesNotExistError",
    "AdminShutdownError": "asyncpg.exceptions.AdminShutdownError",
    "CannotConnectNowError": "asyncpg.exceptions.CannotConnectNowError",
}


def qualify(name: str) -> str:
    """A bare class name from dict_tracebacks made fully qualified where we know the module."""
    return name if "." in name else _QUALIFIED.get(name, name)


def _category(exc: Exc) -> Category | None:
    short = exc.cls.rsplit(".", 1)[-1]
    for cat, names, rx in _COMPILED:
        if short in names or (rx is not None and rx.search(exc.message)):
            return cat
    if exc.cls == "sqlalchemy.exc.TimeoutError":
        return Category.POOL_TIMEOUT
    return None


def _is_db(exc: Exc) -> bool:
    cls = qualify(exc.cls)
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
    decider: Exc | None = None
    category = Category.OTHER
    for exc in reversed(chain.excs):
        cat = _category(exc)
        if cat is not None:
            decider, category = exc, cat
            break
    if decider is None:
        db = next((e for e in reversed(chain.excs) if _is_db(e)), None)
        if db is not None:
            decider, category = db, Category.OTHER_DB
        else:
            decider = chain.final
    location = _deepest_app(decider.frames, rules)
    if location is None:
        for exc in chain.excs:
            location = _deepest_app(exc.frames, rules)
            if location is not None:
                break
    if location is None:
        location = _deepest_app(outer_frames, rules)
    return Verdict(category, qualify(decider.cls), location)


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
    names = tuple(qualify(e.cls) for e in chain.excs)
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
    """classify_event with a small cache by chain identity (the plain scanner hands out one Chain per distinct text)."""

    __slots__ = ("_cache", "_rules")

    def __init__(self, rules: AppRules, size: int = 512) -> None:
        self._rules = rules
        self._cache: dict[int, tuple[Chain, Classified]] = {}

    def __call__(self, chain: Chain) -> Classified:
        hit = self._cache.get(id(chain))
        if hit is not None and hit[0] is chain:
            return hit[1]
        result = classify_event(chain, self._rules)
        if len(self._cache) >= 512:
            self._cache.clear()
        self._cache[id(chain)] = (chain, result)
        return result
