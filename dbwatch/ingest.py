"""The sidecar's end of the in-app hook: receive datagrams, validate, aggregate per app/engine, fill the Store.

Each worker process sends cumulative totals; the ingest keeps each worker's last totals and adds only the increase
to the app's counters, so a lost, repeated or reordered datagram never loses or double-counts, and a worker that
stops (expired after `hook.worker_expiry`) leaves its counts in place. Gauges are summed over the live workers.
A datagram is taken whole or not at all; every size, name and label value is bounded by the `hook:` config.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import re
import socket
import stat
import time
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import structlog

from dbwatch import labels
from dbwatch import metrics as m
from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.logs.classify import Category
from dbwatch.store import Sample, Store

__all__ = ["RESULTS", "Ingest", "Rejected", "running_ingest"]

log = structlog.get_logger("dbwatch.ingest")

RESULTS: Final = (
    "accepted",
    "too_large",
    "bad_json",
    "bad_schema",
    "bad_token",
    "bucket_mismatch",
    "over_limit",
)
_CLASS_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,79}$")
_ROUTE_RE: Final = re.compile(rf"^[\x21-\x7e]{{1,{wire.MAX_ROUTE_LEN}}}$")
_CATEGORIES: Final = frozenset(c.value for c in Category)
_ZEROS: Final = array("d", [0.0] * (len(wire.LAYOUTS["request"]) + 2))
_MAX_ROWS: Final = 5000  # request/exception rows in one datagram; 64 KiB cannot hold more anyway
_COUNTER_SPECS: Final = {
    "checkouts": m.APP_POOL_CHECKOUTS,
    "checkins": m.APP_POOL_CHECKINS,
    "resets": m.APP_POOL_RESETS,
    "checkout_timeouts": m.APP_POOL_CHECKOUT_TIMEOUTS,
}
# Keys of an engine's counters in a worker's state (`_engine_counts`).
_ENGINE_COUNTER_KEYS: Final = (*_COUNTER_SPECS, "connects_ok", "connects_error", "inv_hard", "inv_soft")
_HIST_SPECS: Final = {
    "checkout_wait": m.APP_POOL_CHECKOUT_WAIT,
    "connect": m.APP_POOL_CONNECT_DURATION,
    "held": m.APP_POOL_HELD,
    "age": m.APP_POOL_CONNECTION_AGE,
}
_GAUGE_SPECS: Final = {
    "checked_out": m.APP_POOL_CHECKED_OUT,
    "idle": m.APP_POOL_IDLE,
    "overflow": m.APP_POOL_OVERFLOW,
    "waiting": m.APP_POOL_WAITING,
}


class Rejected(ValueError):
    """A datagram that does not parse; `result` is its `dbwatch_hook_datagrams_total` reason."""

    def __init__(self, result: str, why: str = "") -> None:
        super().__init__(why or result)
        self.result = result


@dataclass(slots=True)
class _EngineView:
    pool_class: str
    settings: dict[str, float]
    gauges: dict[str, int]
    findings: frozenset[str]


@dataclass(slots=True)
class _Worker:
    seen: float
    seq: int = 0
    last: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    engines: dict[str, _EngineView] = field(default_factory=dict)


@dataclass(slots=True)
class _App:
    workers: dict[str, _Worker] = field(default_factory=dict)
    engines: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # exception and error class names in use as label values


class Ingest:
    """Validates and aggregates hook datagrams into the store; no I/O of its own (see `running_ingest`)."""

    def __init__(self, config: HookConfig, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._store = store
        self._clock = clock
        self._apps: dict[str, _App] = {}
        self._token = config.token.reveal().encode() if config.token else None
        self._logged: set[str] = set()  # rejection results already logged: each kind once, all counted
        self._tracked = 0  # state entries over all live workers (hook.max_tracked_series)
        for r in RESULTS:
            store.inc(m.HOOK_DATAGRAMS, (r,), 0)

    def receive(self, data: bytes) -> str:
        """Take one datagram; returns its result (accepted or the reason it was rejected), also counted; never raises.

        Validation is complete before anything is applied, so a datagram is taken whole or not at all. A datagram
        that gets past it and still fails (a shape validation missed) is rejected as `bad_schema` all the same,
        logged with the error's class only: the datagram's content is never logged.
        """
        try:
            self._take(data)
            result = "accepted"
        except Rejected as exc:
            result, why = exc.result, str(exc)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            result, why = "bad_schema", f"unexpected {type(exc).__name__}"
        if result != "accepted" and result not in self._logged:
            self._logged.add(result)
            log.warning("hook_datagram_rejected", result=result, why=why, size=len(data), first=True)
        self._store.inc(m.HOOK_DATAGRAMS, (result,))
        return result

    # ----- validation --------------------------------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        if len(data) > self.config.max_datagram_bytes:
            raise Rejected("too_large")
        try:
            doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Rejected("bad_json") from None
        if not isinstance(doc, dict):
            raise Rejected("bad_schema", "not an object")
        if self._token is not None:
            token = doc.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(errors="replace"), self._token):
                raise Rejected("bad_token")
        if _count(doc.get("v")) != wire.VERSION:
            raise Rejected("bad_schema", "version")
        if "interval" in doc:
            _seconds(doc["interval"])
        app = _name(doc.get("app"), wire.NAME_RE)
        worker_id = _name(doc.get("worker"), wire.WORKER_RE)
        seq = _count(doc.get("seq"))
        layouts = doc.get("layouts")
        if not isinstance(layouts, dict) or any(not _same_bounds(layouts.get(k), b) for k, b in wire.LAYOUTS.items()):
            raise Rejected("bucket_mismatch")
        dropped = _dict(doc.get("dropped", {}), wire.DROP_REASONS, _count)
        engines = None
        if "engines" in doc:
            raw_engines = doc["engines"]
            if not isinstance(raw_engines, list) or len(raw_engines) > self.config.max_engines:
                raise Rejected("bad_schema", "engines")
            engines = [_engine(e, self.config.max_label_values) for e in raw_engines]
            if len({e["engine"] for e in engines}) != len(engines):
                raise Rejected("bad_schema", "duplicate engine")
        requests = [_request(r) for r in _rows(doc.get("requests", []))]
        exceptions = [_exception(r) for r in _rows(doc.get("exceptions", []))]
        self._apply(app, worker_id, seq, dropped, engines, requests, exceptions)

    # ----- aggregation -------------------------------------------------------------------------------------

    def _apply(
        self,
        app_name: str,
        worker_id: str,
        seq: int,
        dropped: dict[str, int],
        engines: list[dict[str, Any]] | None,
        requests: list[tuple[str, str, str, list[int], float]],
        exceptions: list[tuple[str, str, str, int]],
    ) -> None:
        app = self._apps.get(app_name)
        if app is None:
            if len(self._apps) >= self.config.max_apps:
                raise Rejected("over_limit", "apps")
            app = self._apps[app_name] = _App()
            for reason in wire.DROP_REASONS:
                self._store.inc(m.APP_HOOK_DROPPED, (app_name, reason), 0)
        w = app.workers.get(worker_id)
        if w is None and len(app.workers) >= self.config.max_workers:
            raise Rejected("over_limit", "workers")
        if engines and len(app.engines | {e["engine"] for e in engines}) > self.config.max_engines:
            raise Rejected("over_limit", "engines")
        added = self._new_keys(w, engines, requests, exceptions)
        if added:
            if (len(w.last) if w else 0) + added > self.config.max_worker_series:
                raise Rejected("over_limit", "worker series")
            if self._tracked + added > self.config.max_tracked_series:
                raise Rejected("over_limit", "tracked series")
        if w is None:
            w = app.workers[worker_id] = _Worker(seen=self._clock())
            log.info("hook_worker_joined", app=app_name, worker=worker_id)
        held = len(w.last)
        w.seen = self._clock()
        for reason, n in dropped.items():
            self._inc(w, ("d", reason), n, m.APP_HOOK_DROPPED, (app_name, reason))
        if engines is not None and seq >= w.seq:
            w.engines = {}
            for e in engines:
                self._engine_counts(app_name, app, w, e)
        w.seq = max(w.seq, seq)
        for route, method, sc, counts, total in requests:
            label = self._bounded(app.routes, route, self.config.max_routes)
            key = ("r", route, method, sc)
            prev = w.last.get(key)
            if prev is None:
                prev = _ZEROS[: len(counts) + 1]
            delta = [max(0, c - int(p)) for c, p in zip(counts, prev, strict=False)]
            dsum = max(0.0, total - prev[-1]) if sum(delta) else 0.0
            # Totals as doubles in one array (exact below 2**53, which _count enforces): half the size of a list.
            w.last[key] = array("d", [*(max(c, p) for c, p in zip(counts, prev, strict=False)), max(total, prev[-1])])
            # The app is the `source` of the one request family the access log feeds too (dbwatch/labels.py).
            self._store.add_histogram(m.HTTP_REQUEST_DURATION, (app_name, label, method), delta, dsum)
            self._store.inc(m.HTTP_REQUESTS, (app_name, label, method, sc), sum(delta))
        for route, exc_name, cat, n in exceptions:
            label = self._bounded(app.routes, route, self.config.max_routes)
            name = self._bounded(app.names, exc_name, self.config.max_label_values)
            self._inc(w, ("x", route, exc_name, cat), n, m.APP_EXCEPTIONS, (app_name, label, name, cat))
        self._tracked += len(w.last) - held
        self._publish(app_name, app)  # also for a middleware-only worker: it counts in dbwatch_app_hook_workers

    @staticmethod
    def _new_keys(
        w: _Worker | None,
        engines: list[dict[str, Any]] | None,
        requests: list[tuple[str, str, str, list[int], float]],
        exceptions: list[tuple[str, str, str, int]],
    ) -> int:
        """How many state entries the datagram would add to its worker (the keys `_apply` creates in `w.last`)."""
        keys: set[tuple[Any, ...]] = {("d", reason) for reason in wire.DROP_REASONS}
        for e in engines or ():
            eng = e["engine"]
            keys.update(("c", eng, k) for k in _ENGINE_COUNTER_KEYS)
            keys.update(("h", eng, h) for h in _HIST_SPECS)
            keys.update(("e", eng, err) for err in e["errors"])
        keys.update(("r", route, method, sc) for route, method, sc, _, _ in requests)
        keys.update(("x", route, name, cat) for route, name, cat, _ in exceptions)
        return len(keys) if w is None else sum(k not in w.last for k in keys)

    def _engine_counts(self, app_name: str, app: _App, w: _Worker, e: dict[str, Any]) -> None:
        eng = e["engine"]
        labels = (app_name, eng)
        if eng not in app.engines:
            app.engines.add(eng)
            self._touch_engine(labels)
        c = e["counters"]
        for key, spec in _COUNTER_SPECS.items():
            self._inc(w, ("c", eng, key), c[key], spec, labels)
        self._inc(w, ("c", eng, "connects_ok"), c["connects_ok"], m.APP_POOL_CONNECTS, (*labels, "ok"))
        self._inc(w, ("c", eng, "connects_error"), c["connects_error"], m.APP_POOL_CONNECTS, (*labels, "error"))
        self._inc(w, ("c", eng, "inv_hard"), c["invalidations_hard"], m.APP_POOL_INVALIDATIONS, (*labels, "hard"))
        self._inc(w, ("c", eng, "inv_soft"), c["invalidations_soft"], m.APP_POOL_INVALIDATIONS, (*labels, "soft"))
        for hname, spec in _HIST_SPECS.items():
            raw = e["hists"][hname]
            hkey = ("h", eng, hname)
            prev = w.last.get(hkey) or [0] * len(raw)
            delta = [max(0, int(a) - int(b)) for a, b in zip(raw[:-1], prev[:-1], strict=True)]
            dsum = max(0.0, raw[-1] - prev[-1]) if sum(delta) else 0.0
            w.last[hkey] = [max(a, b) for a, b in zip(raw, prev, strict=True)]
            if sum(delta):
                self._store.add_histogram(spec, labels, delta, dsum)
        for err, n in e["errors"].items():
            name = self._bounded(app.names, err, self.config.max_label_values)
            self._inc(w, ("e", eng, err), n, m.APP_DBAPI_ERRORS, (*labels, name))
        w.engines[eng] = _EngineView(e["pool_class"], e["settings"], e["gauges"], frozenset(e["findings"]))

    def _touch_engine(self, labels: tuple[str, str]) -> None:
        for spec in _COUNTER_SPECS.values():
            self._store.inc(spec, labels, 0)
        for result in ("ok", "error"):
            self._store.inc(m.APP_POOL_CONNECTS, (*labels, result), 0)
        for kind in ("hard", "soft"):
            self._store.inc(m.APP_POOL_INVALIDATIONS, (*labels, kind), 0)
        for spec in _HIST_SPECS.values():
            self._store.touch_histogram(spec, labels)

    def _inc(self, w: _Worker, key: tuple[Any, ...], value: int, spec: m.MetricSpec, labels: tuple[str, ...]) -> None:
        prev = w.last.get(key, 0)
        if value > prev:
            w.last[key] = value
            self._store.inc(spec, labels, value - prev)
        elif key not in w.last:
            w.last[key] = value
            self._store.inc(spec, labels, 0)

    @staticmethod
    def _bounded(seen: set[str], value: str, cap: int) -> str:
        if value in seen:
            return value
        if len(seen) >= cap:
            return labels.OTHER
        seen.add(value)
        return value

    def _publish(self, app_name: str, app: _App) -> None:
        """Rebuild the app's gauges from its live workers."""
        samples = [Sample(m.APP_HOOK_WORKERS, (app_name,), float(len(app.workers)))]
        per_engine: dict[str, list[_EngineView]] = {}
        for w in app.workers.values():
            for eng, view in w.engines.items():
                per_engine.setdefault(eng, []).append(view)
        for eng, views in sorted(per_engine.items()):
            labels = (app_name, eng)
            latest = views[-1]
            samples.append(Sample(m.APP_POOL_INFO, (*labels, latest.pool_class), 1.0))
            for setting, value in sorted(latest.settings.items()):
                if setting == "pre_ping":
                    samples.append(Sample(m.APP_POOL_PRE_PING, labels, value))
                elif setting.endswith("_seconds"):
                    samples.append(
                        Sample(m.APP_POOL_SETTING_SECONDS, (*labels, setting.removesuffix("_seconds")), value)
                    )
                else:
                    samples.append(Sample(m.APP_POOL_SETTING_CONNECTIONS, (*labels, setting), value))
            for g, spec in _GAUGE_SPECS.items():
                samples.append(Sample(spec, labels, float(sum(v.gauges[g] for v in views))))
            for finding in wire.FINDINGS:
                held = any(finding in v.findings for v in views)
                samples.append(Sample(m.APP_POOL_FINDING, (*labels, finding), 1.0 if held else 0.0))
        self._store.replace(("hook", app_name), samples)

    def expire(self) -> int:
        """Forget workers silent for longer than hook.worker_expiry; their counts stay. Returns how many went."""
        cutoff = self._clock() - self.config.worker_expiry
        gone = 0
        for app_name, app in self._apps.items():
            stale = [wid for wid, w in app.workers.items() if w.seen < cutoff]
            for wid in stale:
                self._tracked -= len(app.workers.pop(wid).last)
                log.info("hook_worker_expired", app=app_name, worker=wid)
            if stale:
                gone += len(stale)
                self._publish(app_name, app)
        return gone

    def workers(self, app: str) -> int:
        """Live workers of an app (tests and self-checks)."""
        return len(self._apps[app].workers) if app in self._apps else 0

    @property
    def tracked_series(self) -> int:
        """State entries held over all live workers (tests and self-checks)."""
        return self._tracked


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


def _dict(
    value: object, keys: tuple[str, ...], conv: Callable[[object], Any], *, exact: bool = False
) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= set(keys) or (exact and set(value) != set(keys)):
        raise Rejected("bad_schema", "keys")
    return {k: conv(v) for k, v in value.items()}


def _rows(value: object) -> list[Any]:
    if not isinstance(value, list) or len(value) > _MAX_ROWS:
        raise Rejected("bad_schema", "rows")
    return value


def _same_bounds(value: object, bounds: tuple[float, ...]) -> bool:
    """A layout as sent equals ours: a list of the same numbers (booleans and strings are not numbers)."""
    return (
        isinstance(value, list)
        and len(value) == len(bounds)
        and all(
            not isinstance(x, bool) and isinstance(x, int | float) and x == b
            for x, b in zip(value, bounds, strict=True)
        )
    )


def _hist(value: object, buckets: tuple[float, ...]) -> list[float]:
    if not isinstance(value, list) or len(value) != len(buckets) + 2:
        raise Rejected("bad_schema", "histogram")
    return [*(float(_count(v)) for v in value[:-1]), _seconds(value[-1])]


def _engine(e: object, max_names: int) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise Rejected("bad_schema", "engine")
    pool_class = e.get("pool_class")
    if not isinstance(pool_class, str) or not _CLASS_RE.fullmatch(pool_class):
        raise Rejected("bad_schema", "pool_class")
    errors = e.get("errors", {})
    if not isinstance(errors, dict) or len(errors) > max_names + 1:
        raise Rejected("bad_schema", "errors")
    hists = e.get("hists")
    findings = e.get("findings", [])
    if not isinstance(findings, list) or not all(isinstance(f, str) and f in wire.FINDINGS for f in findings):
        raise Rejected("bad_schema", "findings")
    return {
        "engine": _name(e.get("engine"), wire.NAME_RE),
        "pool_class": pool_class,
        "settings": _dict(e.get("settings", {}), wire.SETTINGS, _number),
        "gauges": _dict(e.get("gauges"), wire.GAUGES, _count, exact=True),
        "counters": _dict(e.get("counters"), wire.COUNTERS, _count, exact=True),
        "hists": {k: _hist(v, wire.HISTS[k]) for k, v in _dict(hists, tuple(wire.HISTS), _same, exact=True).items()},
        "errors": {_name(k, _CLASS_RE): _count(v) for k, v in errors.items()},
        "findings": findings,
    }


def _same(value: object) -> object:
    return value


def _route(value: object) -> str:
    """A route from a hook, normalised again (a hook of another version still joins the access log's labels)."""
    if not isinstance(value, str) or not _ROUTE_RE.fullmatch(value):
        raise Rejected("bad_schema", "route")
    if value.startswith("/"):
        return labels.route(value)
    return value if value == labels.UNMATCHED else labels.OTHER


def _request(row: object) -> tuple[str, str, str, list[int], float]:
    if not isinstance(row, list) or len(row) != 5:
        raise Rejected("bad_schema", "request")
    route, method, sc, counts, total = row
    if (
        not isinstance(method, str)
        or method not in wire.METHODS
        or not isinstance(sc, str)
        or sc not in wire.STATUS_CLASSES
    ):
        raise Rejected("bad_schema", "request labels")
    n = len(wire.LAYOUTS["request"]) + 1
    if not isinstance(counts, list) or len(counts) != n:
        raise Rejected("bad_schema", "request buckets")
    return _route(route), labels.method(method), sc, [_count(c) for c in counts], _seconds(total)


def _exception(row: object) -> tuple[str, str, str, int]:
    if not isinstance(row, list) or len(row) != 4:
        raise Rejected("bad_schema", "exception")
    route, name, cat, n = row
    if not isinstance(cat, str) or cat not in _CATEGORIES:
        raise Rejected("bad_schema", "category")
    return _route(route), _name(name, _CLASS_RE), cat, _count(n)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._ingest.receive(data)

    def error_received(self, exc: Exception) -> None:
        log.warning("hook_receive_error", error=type(exc).__name__)


def _bind_unix(path: str) -> socket.socket:
    """A Unix datagram socket at `path`, created with mode 0666 (the app's container runs as another user).

    The mode comes from the umask in force during bind(), so the file never exists with another mode and no
    chmod() ever runs on a path (which would follow a symlink swapped in, in a shared volume). bind() itself does
    not follow a symlink: anything but a stale socket at `path` makes it fail. The umask is process-wide, so it is
    changed only for the bind() call, which creates nothing else.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run; anything else makes bind() fail
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o111)  # rw for everyone; the token, when set, guards what is written
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


@contextlib.asynccontextmanager
async def running_ingest(config: HookConfig, store: Store) -> AsyncIterator[tuple[Ingest, wire.Address]]:
    """Listen where hook.listen says (UDP or a Unix datagram socket) and expire workers, until the block exits."""
    ingest = Ingest(config, store)
    loop = asyncio.get_running_loop()
    addr = config.listen
    if addr.is_unix:
        sock = _bind_unix(addr.path)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(ingest), sock=sock)
        bound = addr
    else:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(ingest), local_addr=(addr.host, addr.port))
        host, port = transport.get_extra_info("sockname")[:2]
        bound = wire.Address(host=host, port=port)
    log.info("hook_listening", listen=str(bound))

    async def expire_loop() -> None:
        while True:
            await asyncio.sleep(min(5.0, config.worker_expiry / 4))
            ingest.expire()

    task = asyncio.create_task(expire_loop(), name="hook:expire")
    try:
        yield ingest, bound
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        transport.close()
        if addr.is_unix:
            with contextlib.suppress(OSError):
                os.unlink(addr.path)
