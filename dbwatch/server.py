"""The HTTP side: /metrics from the store, /healthz (liveness), /readyz (readiness); owns the scheduler."""

from __future__ import annotations

import gzip
import json
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from dbwatch import __version__
from dbwatch import metrics as m
from dbwatch.collectors.job import collector_jobs
from dbwatch.config import Config, Target
from dbwatch.ingest import Ingest, running_ingest
from dbwatch.logs.tailer import LogWatcher
from dbwatch.monconn import Monitors
from dbwatch.probes import ProbeJob
from dbwatch.probes.own_sessions import OwnSessions
from dbwatch.probes.postgres import Riders
from dbwatch.scheduler import Job, Scheduler
from dbwatch.store import Exposition, Store, StoreCollector
from dbwatch.webconfig import WebConfig

__all__ = ["INGEST", "SCHEDULER", "STORE", "Scrape", "build_app", "build_jobs", "build_registry"]

STORE = web.AppKey("store", Store)
SCHEDULER = web.AppKey("scheduler", Scheduler)
LOGS = web.AppKey("logs", LogWatcher)
INGEST = web.AppKey("ingest", Ingest)


def build_registry(store: Store) -> CollectorRegistry:
    """A private registry: the store's families plus process and platform metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(store))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    store.set(("self", ""), m.BUILD_INFO, (__version__, platform.python_version()), 1.0)
    return registry


class Scrape:
    """The /metrics body: the store's families from a per-format cache, then process/platform metrics fresh.

    The store part is re-rendered only where it changed (store.Exposition), so scrapes stay cheap on the event loop
    however many targets there are; process_* values change on every scrape and are a dozen lines, rendered anew.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._process = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._process)
        PlatformCollector(registry=self._process)
        store.set(("self", ""), m.BUILD_INFO, (__version__, platform.python_version()), 1.0)
        self._cached: dict[str, Exposition] = {}

    def body(self, accept: str) -> tuple[bytes, str]:
        """(body, content type) for a request's Accept header; no I/O besides /proc for process metrics."""
        encoder, content_type = choose_encoder(accept)
        expo = self._cached.get(content_type)
        if expo is None:
            expo = self._cached[content_type] = Exposition(self._store, encoder)
        # The store part carries no `# EOF`; the OpenMetrics encoder ends the process part with it.
        return expo.render() + encoder(self._process), content_type

    def exposition(self, accept: str = "") -> Exposition:
        """The cache behind a format (for tests)."""
        self.body(accept)
        return self._cached[choose_encoder(accept)[1]]


SCRAPE = web.AppKey("scrape", Scrape)


@dataclass(slots=True)
class Readiness:
    """dbwatch's own readiness: set once the app's start-up (every listener and task) has finished."""

    started: bool = False


READINESS = web.AppKey("readiness", Readiness)


def build_jobs(config: Config, store: Store, monitors: Monitors | None = None) -> list[Job]:
    """Every scheduled job the config asks for; collectors share one monitoring connection per target."""
    monitors = monitors or Monitors(store)
    # Each probe carries its target's lock check, so instances without the lock need no session of their own.
    jobs: list[Job] = [ProbeJob(t, store, rider=_riders(t, store, monitors)) for t in config.targets]
    jobs += collector_jobs(config.targets, store, monitors)
    return jobs


def _riders(target: Target, store: Store, monitors: Monitors) -> Riders | None:
    """What a postgres probe reads besides `SELECT 1`: the database-wide lock check, this pod's own sessions."""
    if target.kind != "postgres":
        return None
    return Riders(monitors.coordinator(target), OwnSessions(target, store) if target.own_sessions else None)


def build_app(
    config: Config, store: Store | None = None, jitter: float = 1.0, web_config: WebConfig | None = None
) -> web.Application:
    """The aiohttp app; its cleanup context starts the scheduler and stops it on shutdown."""
    store = store or Store(max_series=config.max_series)
    monitors = Monitors(store)
    scheduler = Scheduler(store, build_jobs(config, store, monitors), jitter=jitter)

    def auth_busy() -> None:
        store.inc(m.HTTP_REJECTED, ("auth_busy",))

    # Basic auth and client certificates from --web.config.file guard every route (health ones optionally open).
    app = web.Application(middlewares=[web_config.middleware(on_busy=auth_busy)] if web_config else [])
    app[STORE] = store
    app[SCHEDULER] = scheduler
    app[SCRAPE] = Scrape(store)
    app[READINESS] = readiness = Readiness()

    async def run_scheduler(app: web.Application) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await scheduler.stop()
        await monitors.close()

    app.cleanup_ctx.append(run_scheduler)
    hook_config = config.hook
    if hook_config is not None:

        async def run_ingest(app: web.Application) -> AsyncIterator[None]:
            async with running_ingest(hook_config, store) as (ingest, _):
                app[INGEST] = ingest
                yield

        app.cleanup_ctx.append(run_ingest)
    if config.logs.sources:
        for src in config.logs.sources:
            store.set(("log_source", src.name), m.LOG_SOURCE_INFO, (src.name, src.target or ""), 1)
        watcher = LogWatcher(config.logs, store)
        app[LOGS] = watcher

        async def run_logs(app: web.Application) -> AsyncIterator[None]:
            watcher.start()
            yield
            await watcher.stop()

        app.cleanup_ctx.append(run_logs)

    async def mark_started(app: web.Application) -> AsyncIterator[None]:
        # Last in the cleanup context: every earlier start-up step (hook listener, tailers, scheduler) has run.
        readiness.started = True
        yield
        readiness.started = False

    app.cleanup_ctx.append(mark_started)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/", _index)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SCRAPE].body(request.headers.get("Accept", ""))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    resp.headers["Vary"] = "Accept-Encoding"
    if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
        resp.body = gzip.compress(body, compresslevel=1, mtime=0)  # level 1: ~8x smaller at a fraction of level 6's CPU
        resp.headers["Content-Encoding"] = "gzip"
    return resp


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (`gzip`, `gzip;q=0.5`, `*`), not refused with `q=0`."""
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def _json(status: int, payload: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload, sort_keys=True), content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    dead = request.app[SCHEDULER].dead()
    if LOGS in request.app:
        dead += request.app[LOGS].dead()
    if dead:
        return _json(503, {"status": "fail", "dead_tasks": dead})
    return _json(200, {"status": "ok", "tasks": len(request.app[SCHEDULER].jobs)})


async def _readyz(request: web.Request) -> web.Response:
    """dbwatch's own readiness (started, first cycle done); a target counts only where it opted in to gating.

    The default keeps a database or login outage out of the pod's readiness: a sidecar's readiness gates its whole
    pod, so gating on a shared dependency would take every pod out of its Service at once (alerts page instead).
    """
    now = time.monotonic()
    own = {
        "config_loaded": True,  # the app is built from a validated config only
        "listeners_up": request.app[READINESS].started,
        "first_cycle_done": request.app[SCHEDULER].first_cycle_done(),
    }
    ready = all(own.values())
    targets: dict[str, Any] = {}
    for name, st in request.app[STORE].status.items():
        age = None if st.last_success is None else round(now - st.last_success, 3)
        fresh = age is not None and age <= st.stale_after
        if st.gates_readiness and not fresh:
            ready = False
        targets[name] = {
            "gates_readiness": st.gates_readiness,
            "up": st.up,
            "fresh": fresh,
            "last_success_age_seconds": age,
            "reason": st.last_reason if not st.up else None,
        }
    status = "ready" if ready else "not_ready"
    return _json(200 if ready else 503, {"status": status, "checks": own, "targets": targets})


async def _index(request: web.Request) -> web.Response:
    links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in ("/metrics", "/healthz", "/readyz"))
    return web.Response(
        text=f"<html><body><h1>dbwatch {__version__}</h1><ul>{links}</ul></body></html>",
        content_type="text/html",
    )
