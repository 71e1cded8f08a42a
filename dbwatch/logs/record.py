"""What formats hand on: assembled events and per-file counts; formats never touch metrics."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from dbwatch.logs.traceback import Chain, Exc

__all__ = [
    "LINE_NEEDLE",
    "Event",
    "LineInfo",
    "RecordHook",
    "Sink",
    "Stats",
    "line_event",
    "parse_timestamp",
    "warn",
]


@dataclass(frozen=True, slots=True)
class Event:
    """One logged traceback: the record's physical lines (1-based, inclusive), its metadata and the chain."""

    first_line: int
    last_line: int
    timestamp: str | None
    logger: str | None
    chain: Chain
    truncated: bool = False


# A log line that is an event without a traceback: SQLAlchemy's pool reporting a connection the garbage collector
# found checked out (a leaked connection). Formats search for the needle (the whole sentence: a long needle is found
# fastest) and hand the line to `line_event`.
_LEAK: Final = "The garbage collector is trying to clean up non-checked-in connection"
LINE_NEEDLE: Final = _LEAK.encode()


def line_event(text: str) -> Chain | None:
    """The one-exception chain a log line stands for, or None.

    SQLAlchemy logs the leak on the pool's logger and also warns it: the warning's rendering (`SAWarning: ...`,
    e.g. through logging.captureWarnings) is not counted again.
    """
    k = text.find(_LEAK)
    if k < 0 or "SAWarning: " in text[:k]:
        return None
    return Chain((Exc("sqlalchemy.exc.SAWarning", text[k:]),))


@dataclass(frozen=True, slots=True)
class LineInfo:
    """Where an inner line of a container record came from: first and last physical line, the runtime's time."""

    first: int
    last: int
    time: str | None
    offset: int = 0  # byte offset of the first physical line, relative to where reading started


@dataclass(slots=True)
class Stats:
    """Counts of one file's parse; the source turns their growth into counter increments."""

    lines: int = 0
    bytes: int = 0
    unmatched: int = 0  # lines with no known record shape for the format
    parse_errors: int = 0  # lines with the shape that failed to parse (bad JSON, too deep, not a record)
    truncated: int = 0  # lines or records cut at a cap
    events: int = 0


class Sink(Protocol):
    """Receives assembled events."""

    def __call__(self, event: Event, /) -> None: ...


# (message text, parsed JSON fields or None) -> handled; the access-log hook.
RecordHook = Callable[[str, Mapping[str, Any] | None], bool]

_TS_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2}|UTC)?", re.IGNORECASE
)


def parse_timestamp(text: str | None) -> float | None:
    """Unix time of an ISO-8601/RFC 3339 (nanoseconds allowed) or logging `asctime` stamp; naive means UTC."""
    if not text:
        return None
    m = _TS_RE.search(text)
    if not m:
        return None
    date, time_, frac, tz = m.groups()
    iso = f"{date}T{time_}" + (f".{frac[:6]}" if frac else "")
    if tz and tz.upper() not in ("Z", "UTC"):
        iso += tz if ":" in tz else f"{tz[:3]}:{tz[3:]}"
    try:
        stamp = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def warn(event: str, **kw: Any) -> None:
    """A warning through structlog (the daemon's logs), or stdlib logging where structlog is not installed (`dbwatch
    scan` from an install with only the hook extra)."""
    try:
        import structlog  # noqa: PLC0415 - the daemon has it; the hook extra does not
    except ImportError:
        logging.getLogger("dbwatch.logs").warning("%s %s", event, kw)
        return
    structlog.get_logger("dbwatch.logs").warning(event, **kw)
