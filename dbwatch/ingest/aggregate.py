"""The hook ingest's aggregation: decoded reports per app/engine/worker into the Store; no I/O of its own.

Each worker process sends cumulative totals; the ingest keeps each worker's last totals and adds only the increase
to the app's counters, so a lost, repeated or reordered datagram never loses or double-counts, and a worker that
stops (expired after `hook.worker_expiry`) leaves its counts in place. Gauges are summed over the live workers.
A datagram is taken whole or not at all: `wire.decode` validates it, then the apps, workers, engines and state
entries it would add are checked against the `hook:` config's caps before anything is applied.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from dbwatch import labels
from dbwatch import metrics as m
from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.hook.wire import Rejected
from dbwatch.store import Sample, Store

__all__ = ["RESULTS", "Ingest", "Rejected"]

log = structlog.get_logger("dbwatch.ingest")

RESULTS: Final = ("accepted", *wire.REJECTIONS, "over_limit")
_ZEROS: Final = array("d", [0.0] * (len(wire.LAYOUTS["request"]) + 2))
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
        self._limits = wire.Limits(
            max_bytes=config.max_datagram_bytes,
            max_engines=config.max_engines,
            max_names=config.max_label_values,
            token=config.token.reveal().encode() if config.token else None,
        )
        self._logged: set[str] = set()  # rejection results already logged: each kind once, all counted
        self._tracked = 0  # state entries over all live workers (hook.max_tracked_series)
        for r in RESULTS:
            store.inc(m.HOOK_DATAGRAMS, (r,), 0)

    def receive(self, data: bytes) -> str:
        """Take one datagram; returns its result (accepted or the reason it was rejected), also counted; never raises.

        A datagram that gets past validation and still fails (a shape validation missed) is rejected as
        `bad_schema` all the same, logged with the error's class only: the datagram's content is never logged.
        """
        try:
            self._apply(wire.decode(data, self._limits))
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

    def _apply(self, r: wire.Report) -> None:
        """Apply a decoded report, or reject it as over_limit before anything changes."""
        app_name, engines = r.app, r.engines
        app = self._apps.get(app_name)
        if app is None:
            if len(self._apps) >= self.config.max_apps:
                raise Rejected("over_limit", "apps")
            app = self._apps[app_name] = _App()
            for reason in wire.DROP_REASONS:
                self._store.inc(m.APP_HOOK_DROPPED, (app_name, reason), 0)
        w = app.workers.get(r.worker)
        if w is None and len(app.workers) >= self.config.max_workers:
            raise Rejected("over_limit", "workers")
        if engines and len(app.engines | {e.engine for e in engines}) > self.config.max_engines:
            raise Rejected("over_limit", "engines")
        added = self._new_keys(w, r)
        if added:
            if (len(w.last) if w else 0) + added > self.config.max_worker_series:
                raise Rejected("over_limit", "worker series")
            if self._tracked + added > self.config.max_tracked_series:
                raise Rejected("over_limit", "tracked series")
        if w is None:
            w = app.workers[r.worker] = _Worker(seen=self._clock())
            log.info("hook_worker_joined", app=app_name, worker=r.worker)
        held = len(w.last)
        w.seen = self._clock()
        for reason, n in r.dropped.items():
            self._inc(w, ("d", reason), n, m.APP_HOOK_DROPPED, (app_name, reason))
        if engines is not None and r.seq >= w.seq:
            w.engines = {}
            for e in engines:
                self._engine_counts(app_name, app, w, e)
        w.seq = max(w.seq, r.seq)
        for row in r.requests:
            label = self._bounded(app.routes, row.route, self.config.max_routes)
            key = ("r", row.route, row.method, row.status_class)
            counts, total = row.counts, row.total
            prev = w.last.get(key)
            if prev is None:
                prev = _ZEROS[: len(counts) + 1]
            delta = [max(0, c - int(p)) for c, p in zip(counts, prev, strict=False)]
            dsum = max(0.0, total - prev[-1]) if sum(delta) else 0.0
            # Totals as doubles in one array (exact below 2**53, which decode enforces): half the size of a list.
            w.last[key] = array("d", [*(max(c, p) for c, p in zip(counts, prev, strict=False)), max(total, prev[-1])])
            # The app is the `source` of the one request family the access log feeds too (dbwatch/labels.py).
            self._store.add_histogram(m.HTTP_REQUEST_DURATION, (app_name, label, row.method), delta, dsum)
            self._store.inc(m.HTTP_REQUESTS, (app_name, label, row.method, row.status_class), sum(delta))
        for x in r.exceptions:
            label = self._bounded(app.routes, x.route, self.config.max_routes)
            name = self._bounded(app.names, x.name, self.config.max_label_values)
            self._inc(
                w, ("x", x.route, x.name, x.category), x.count, m.APP_EXCEPTIONS, (app_name, label, name, x.category)
            )
        self._tracked += len(w.last) - held
        self._publish(app_name, app)  # also for a middleware-only worker: it counts in dbwatch_app_hook_workers

    @staticmethod
    def _new_keys(w: _Worker | None, r: wire.Report) -> int:
        """How many state entries the report would add to its worker (the keys `_apply` creates in `w.last`)."""
        keys: set[tuple[Any, ...]] = {("d", reason) for reason in wire.DROP_REASONS}
        for e in r.engines or ():
            keys.update(("c", e.engine, k) for k in _ENGINE_COUNTER_KEYS)
            keys.update(("h", e.engine, h) for h in _HIST_SPECS)
            keys.update(("e", e.engine, err) for err in e.errors)
        keys.update(("r", q.route, q.method, q.status_class) for q in r.requests)
        keys.update(("x", x.route, x.name, x.category) for x in r.exceptions)
        return len(keys) if w is None else sum(k not in w.last for k in keys)

    def _engine_counts(self, app_name: str, app: _App, w: _Worker, e: wire.EngineReport) -> None:
        eng = e.engine
        labels = (app_name, eng)
        if eng not in app.engines:
            app.engines.add(eng)
            self._touch_engine(labels)
        c = e.counters
        for key, spec in _COUNTER_SPECS.items():
            self._inc(w, ("c", eng, key), c[key], spec, labels)
        self._inc(w, ("c", eng, "connects_ok"), c["connects_ok"], m.APP_POOL_CONNECTS, (*labels, "ok"))
        self._inc(w, ("c", eng, "connects_error"), c["connects_error"], m.APP_POOL_CONNECTS, (*labels, "error"))
        self._inc(w, ("c", eng, "inv_hard"), c["invalidations_hard"], m.APP_POOL_INVALIDATIONS, (*labels, "hard"))
        self._inc(w, ("c", eng, "inv_soft"), c["invalidations_soft"], m.APP_POOL_INVALIDATIONS, (*labels, "soft"))
        for hname, spec in _HIST_SPECS.items():
            h = e.hists[hname]
            hkey = ("h", eng, hname)
            prev = w.last.get(hkey) or [0] * (len(h.counts) + 1)
            delta = [max(0, a - int(b)) for a, b in zip(h.counts, prev[:-1], strict=True)]
            dsum = max(0.0, h.total - prev[-1]) if sum(delta) else 0.0
            w.last[hkey] = [*(max(a, b) for a, b in zip(h.counts, prev[:-1], strict=True)), max(h.total, prev[-1])]
            if sum(delta):
                self._store.add_histogram(spec, labels, delta, dsum)
        for err, n in e.errors.items():
            name = self._bounded(app.names, err, self.config.max_label_values)
            self._inc(w, ("e", eng, err), n, m.APP_DBAPI_ERRORS, (*labels, name))
        w.engines[eng] = _EngineView(e.pool_class, dict(e.settings), dict(e.gauges), frozenset(e.findings))

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
