"""The hook's datagram format (version 1): typed messages with `encode`/`decode`; stdlib only.

The in-app sender builds a `Report` and `encode`s it; the sidecar's ingest `decode`s each datagram, which checks
everything the ingest relies on (sizes, names, label values, bucket layouts, the token) and raises `Rejected`, and
nothing else, for anything malformed. One datagram is one UTF-8 JSON object. Counters and histogram buckets are
cumulative since the worker process started, so a lost datagram loses nothing: the next one carries the totals.
README.md documents every field.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard, TypeVar

from dbwatch import labels
from dbwatch.logs.classify import Category
from dbwatch.metrics import (
    HTTP_BUCKETS,
    POOL_AGE_BUCKETS,
    POOL_CONNECT_BUCKETS,
    POOL_HELD_BUCKETS,
    POOL_WAIT_BUCKETS,
)

__all__ = [
    "COUNTERS",
    "DEFAULT_ADDR",
    "FINDINGS",
    "GAUGES",
    "HISTS",
    "LAYOUTS",
    "NAME_RE",
    "REJECTIONS",
    "SETTINGS",
    "VERSION",
    "Address",
    "AddressError",
    "EngineReport",
    "ExceptionRow",
    "Histogram",
    "Limits",
    "Part",
    "Rejected",
    "Report",
    "RequestRow",
    "decode",
    "encode",
    "parse_address",
    "row_size",
]

VERSION: Final = 1
DEFAULT_PORT: Final = 9840
DEFAULT_ADDR: Final = f"127.0.0.1:{DEFAULT_PORT}"
# Largest datagram the hook sends; the sidecar accepts up to its hook.max_datagram_bytes.
MAX_DATAGRAM: Final = 60_000

# App, engine and worker names: label-safe, bounded length.
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
WORKER_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

GAUGES: Final = ("checked_out", "idle", "overflow", "waiting")
COUNTERS: Final = (
    "connects_ok",
    "connects_error",
    "checkouts",
    "checkins",
    "invalidations_hard",
    "invalidations_soft",
    "resets",
    "checkout_timeouts",
)
SETTINGS: Final = ("size", "max_overflow", "timeout_seconds", "recycle_seconds", "pre_ping")
FINDINGS: Final = ("static_pool_async", "expire_on_commit", "pre_ping_off_recycle", "null_pool_under_load")
DROP_REASONS: Final = ("queue_full", "send_failed")
# Method and status-class values a datagram may carry ("other" from a hook older than the shared label policy).
METHODS: Final = (*labels.METHODS, labels.OTHER, "other")
STATUS_CLASSES: Final = labels.STATUS_CLASSES
MAX_ROUTE_LEN: Final = labels.MAX_ROUTE_LEN
# Histogram name in the payload -> its bucket upper bounds (the +Inf bucket is implied: len(bounds) + 1 counts).
HISTS: Final = {
    "checkout_wait": POOL_WAIT_BUCKETS,
    "connect": POOL_CONNECT_BUCKETS,
    "held": POOL_HELD_BUCKETS,
    "age": POOL_AGE_BUCKETS,
}
LAYOUTS: Final = {**HISTS, "request": HTTP_BUCKETS}


class AddressError(ValueError):
    """A sidecar address that is neither host:port nor unix:PATH."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where the sidecar listens: a UDP host/port, or a Unix datagram socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTPORT_RE: Final = re.compile(r"^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$")


def parse_address(text: str) -> Address:
    """`host:port`, `[::1]:port` or `unix:/path/to/socket`."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/") or len(path) > 100:
            raise AddressError("unix socket path must be absolute and at most 100 characters")
        return Address(path=path)
    m = _HOSTPORT_RE.fullmatch(text)
    if not m:
        raise AddressError(f"expected host:port or unix:/path, e.g. {DEFAULT_ADDR}")
    port = int(m.group(3))
    if not 0 <= port < 65536:
        raise AddressError("port out of range")
    return Address(host=m.group(1) or m.group(2), port=port)


# Why a datagram is rejected by `decode` (the `result` label of dbwatch_hook_datagrams_total, beside the ingest's).
REJECTIONS: Final = ("too_large", "bad_json", "bad_schema", "bad_token", "bucket_mismatch")
MAX_ROWS: Final = 5000  # request/exception rows in one datagram; 64 KiB cannot hold more anyway
CLASS_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,79}$")  # pool classes and exception names
_ROUTE_RE: Final = re.compile(rf"^[\x21-\x7e]{{1,{MAX_ROUTE_LEN}}}$")
_CATEGORIES: Final = frozenset(c.value for c in Category)
_T = TypeVar("_T")


class Rejected(ValueError):
    """A datagram that does not parse, or that the ingest will not take; `result` is its
    `dbwatch_hook_datagrams_total` reason."""

    def __init__(self, result: str, why: str = "") -> None:
        super().__init__(why or result)
        self.result = result


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts per bucket of a `LAYOUTS` entry (+Inf last), and the sum of the observations."""

    counts: tuple[int, ...]
    total: float


@dataclass(frozen=True, slots=True)
class EngineReport:
    """One instrumented engine's pool: settings, gauges now, cumulative counters and histograms."""

    engine: str
    pool_class: str
    settings: Mapping[str, float]  # keys from SETTINGS
    gauges: Mapping[str, int]  # exactly GAUGES
    counters: Mapping[str, int]  # exactly COUNTERS
    hists: Mapping[str, Histogram]  # exactly HISTS
    errors: Mapping[str, int] = field(default_factory=dict)  # DBAPI error class -> count
    findings: tuple[str, ...] = ()  # from FINDINGS


@dataclass(frozen=True, slots=True)
class RequestRow:
    """Cumulative request latency of one (route, method, status class), in the `request` layout."""

    route: str
    method: str
    status_class: str
    counts: tuple[int, ...]
    total: float


@dataclass(frozen=True, slots=True)
class ExceptionRow:
    """Cumulative count of one exception class raised by one route, with its category."""

    route: str
    name: str
    category: str
    count: int


@dataclass(frozen=True, slots=True)
class Part:
    """What one source of the hook reports (an engine, a middleware); the sender joins parts into reports."""

    engines: tuple[EngineReport, ...] = ()
    requests: tuple[RequestRow, ...] = ()
    exceptions: tuple[ExceptionRow, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """One datagram. `engines` is None in a datagram that carries only rows (the rest of a split report)."""

    app: str
    worker: str
    seq: int
    interval: float | None = None
    dropped: Mapping[str, int] = field(default_factory=dict)  # keys from DROP_REASONS
    engines: tuple[EngineReport, ...] | None = None
    requests: tuple[RequestRow, ...] = ()
    exceptions: tuple[ExceptionRow, ...] = ()
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What the receiving end accepts (its `hook:` config); `token` set means a datagram must carry it."""

    max_bytes: int = 65536
    max_engines: int = 20
    max_names: int = 50  # error class names per engine (one more is allowed: the overflow value)
    token: bytes | None = None


# ----- encode ----------------------------------------------------------------------------------------------


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _hist_json(h: Histogram) -> list[float]:
    return [*h.counts, h.total]


def _engine_json(e: EngineReport) -> dict[str, Any]:
    return {
        "engine": e.engine,
        "pool_class": e.pool_class,
        "settings": dict(e.settings),
        "gauges": dict(e.gauges),
        "counters": dict(e.counters),
        "hists": {k: _hist_json(h) for k, h in e.hists.items()},
        "errors": dict(e.errors),
        "findings": list(e.findings),
    }


def _row_json(row: RequestRow | ExceptionRow) -> list[Any]:
    if isinstance(row, RequestRow):
        return [row.route, row.method, row.status_class, list(row.counts), row.total]
    return [row.route, row.name, row.category, row.count]


def _report_json(r: Report) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": VERSION, "app": r.app, "worker": r.worker, "seq": r.seq}
    if r.interval is not None:
        doc["interval"] = r.interval
    doc["dropped"] = dict(r.dropped)
    doc["layouts"] = {k: list(v) for k, v in LAYOUTS.items()}
    if r.token is not None:
        doc["token"] = r.token
    if r.engines is not None:
        doc["engines"] = [_engine_json(e) for e in r.engines]
    if r.requests:
        doc["requests"] = [_row_json(x) for x in r.requests]
    if r.exceptions:
        doc["exceptions"] = [_row_json(x) for x in r.exceptions]
    return doc


def encode(report: Report) -> bytes:
    """The datagram for a report (compact UTF-8 JSON); raises ValueError for a NaN or infinite number."""
    return _dumps(_report_json(report)).encode()


def row_size(row: RequestRow | ExceptionRow) -> int:
    """Bytes a row adds to a datagram (with its separator): the sender splits reports by this."""
    return len(_dumps(_row_json(row))) + 1


# ----- decode ----------------------------------------------------------------------------------------------


def decode(data: bytes, limits: Limits) -> Report:
    """The report a datagram carries, validated whole; raises `Rejected` (and nothing else) when it is malformed.

    Routes and methods are normalised again by the shared label policy, so a hook of another version still joins
    the access log's labels.
    """
    if len(data) > limits.max_bytes:
        raise Rejected("too_large")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("bad_json") from None
    try:
        return _report(doc, limits)
    except Rejected:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise Rejected("bad_schema", f"unexpected {type(exc).__name__}") from None  # a shape a check missed


def _report(doc: object, limits: Limits) -> Report:
    if not isinstance(doc, dict):
        raise Rejected("bad_schema", "not an object")
    token = doc.get("token")
    if limits.token is not None and (
        not isinstance(token, str) or not hmac.compare_digest(token.encode(errors="replace"), limits.token)
    ):
        raise Rejected("bad_token")
    if _count(doc.get("v")) != VERSION:
        raise Rejected("bad_schema", "version")
    interval = _seconds(doc["interval"]) if "interval" in doc else None
    app = _name(doc.get("app"), NAME_RE)
    worker = _name(doc.get("worker"), WORKER_RE)
    seq = _count(doc.get("seq"))
    layouts = doc.get("layouts")
    if not isinstance(layouts, dict) or any(not _same_bounds(layouts.get(k), b) for k, b in LAYOUTS.items()):
        raise Rejected("bucket_mismatch")
    dropped = _dict(doc.get("dropped", {}), DROP_REASONS, _count)
    engines = None
    if "engines" in doc:
        raw_engines = doc["engines"]
        if not isinstance(raw_engines, list) or len(raw_engines) > limits.max_engines:
            raise Rejected("bad_schema", "engines")
        engines = tuple(_engine(e, limits.max_names) for e in raw_engines)
        if len({e.engine for e in engines}) != len(engines):
            raise Rejected("bad_schema", "duplicate engine")
    return Report(
        app=app,
        worker=worker,
        seq=seq,
        interval=interval,
        dropped=dropped,
        engines=engines,
        requests=tuple(_request(r) for r in _rows(doc.get("requests", []))),
        exceptions=tuple(_exception(r) for r in _rows(doc.get("exceptions", []))),
        token=token if isinstance(token, str) else None,
    )


def _no_constant(name: str) -> None:
    raise ValueError(name)  # NaN and Infinity are not numbers we accept


def _name(value: object, rx: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not rx.fullmatch(value):
        raise Rejected("bad_schema", "name")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise Rejected("bad_schema", "count")
    return value


def _is_number(value: object) -> TypeGuard[int | float]:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _number(value: object) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise Rejected("bad_schema", "number")
    return float(value)


def _seconds(value: object) -> float:
    v = _number(value)
    if v < 0:
        raise Rejected("bad_schema", "negative")
    return v


def _dict(value: object, keys: tuple[str, ...], conv: Callable[[object], _T], *, exact: bool = False) -> dict[str, _T]:
    if not isinstance(value, dict) or not set(value) <= set(keys) or (exact and set(value) != set(keys)):
        raise Rejected("bad_schema", "keys")
    return {k: conv(v) for k, v in value.items()}


def _rows(value: object) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_ROWS:
        raise Rejected("bad_schema", "rows")
    return value


def _same_bounds(value: object, bounds: tuple[float, ...]) -> bool:
    """A layout as sent equals ours: a list of the same numbers (booleans and strings are not numbers)."""
    return (
        isinstance(value, list)
        and len(value) == len(bounds)
        and all(_is_number(x) and x == b for x, b in zip(value, bounds, strict=True))
    )


def _hist(value: object, buckets: tuple[float, ...]) -> Histogram:
    if not isinstance(value, list) or len(value) != len(buckets) + 2:
        raise Rejected("bad_schema", "histogram")
    return Histogram(tuple(_count(v) for v in value[:-1]), _seconds(value[-1]))


def _engine(e: object, max_names: int) -> EngineReport:
    if not isinstance(e, dict):
        raise Rejected("bad_schema", "engine")
    pool_class = e.get("pool_class")
    if not isinstance(pool_class, str) or not CLASS_RE.fullmatch(pool_class):
        raise Rejected("bad_schema", "pool_class")
    errors = e.get("errors", {})
    if not isinstance(errors, dict) or len(errors) > max_names + 1:
        raise Rejected("bad_schema", "errors")
    findings = e.get("findings", [])
    if not isinstance(findings, list) or not all(isinstance(f, str) and f in FINDINGS for f in findings):
        raise Rejected("bad_schema", "findings")
    hists = _dict(e.get("hists"), tuple(HISTS), _same, exact=True)
    return EngineReport(
        engine=_name(e.get("engine"), NAME_RE),
        pool_class=pool_class,
        settings=_dict(e.get("settings", {}), SETTINGS, _number),
        gauges=_dict(e.get("gauges"), GAUGES, _count, exact=True),
        counters=_dict(e.get("counters"), COUNTERS, _count, exact=True),
        hists={k: _hist(v, HISTS[k]) for k, v in hists.items()},
        errors={_name(k, CLASS_RE): _count(v) for k, v in errors.items()},
        findings=tuple(findings),
    )


def _same(value: object) -> object:
    return value


def _route(value: object) -> str:
    """A route normalised again (a hook of another version still joins the access log's labels)."""
    if not isinstance(value, str) or not _ROUTE_RE.fullmatch(value):
        raise Rejected("bad_schema", "route")
    if value.startswith("/"):
        return labels.route(value)
    return value if value == labels.UNMATCHED else labels.OTHER


def _request(row: object) -> RequestRow:
    if not isinstance(row, list) or len(row) != 5:
        raise Rejected("bad_schema", "request")
    route, method, sc, counts, total = row
    if not isinstance(method, str) or method not in METHODS or not isinstance(sc, str) or sc not in STATUS_CLASSES:
        raise Rejected("bad_schema", "request labels")
    if not isinstance(counts, list) or len(counts) != len(LAYOUTS["request"]) + 1:
        raise Rejected("bad_schema", "request buckets")
    return RequestRow(_route(route), labels.method(method), sc, tuple(_count(c) for c in counts), _seconds(total))


def _exception(row: object) -> ExceptionRow:
    if not isinstance(row, list) or len(row) != 4:
        raise Rejected("bad_schema", "exception")
    route, name, cat, n = row
    if not isinstance(cat, str) or cat not in _CATEGORIES:
        raise Rejected("bad_schema", "category")
    return ExceptionRow(_route(route), _name(name, CLASS_RE), cat, _count(n))
