"""The HTTP side: /metrics from the store, /healthz and /readyz from a health view; knows nothing of what runs.

The composition root (dbwatch.app) builds and runs the components; this module gets only the store and a
`dbwatch.health.Health`.
"""

from __future__ import annotations

import gzip
import json
import platform
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from dbwatch import __version__
from dbwatch import metrics as m
from dbwatch.health import Health, liveness, readiness
from dbwatch.store import Exposition, Store
from dbwatch.webconfig import WebConfig

__all__ = ["HEALTH", "STORE", "Scrape", "build_app"]

STORE = web.AppKey("store", Store)
HEALTH = web.AppKey("health", Health)


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


def build_app(store: Store, health: Health, web_config: WebConfig | None = None) -> web.Application:
    """The aiohttp app serving `store` and `health`; it starts and stops nothing."""

    def auth_busy() -> None:
        store.inc(m.HTTP_REJECTED, ("auth_busy",))

    # Basic auth and client certificates from --web.config.file guard every route (health ones optionally open).
    app = web.Application(middlewares=[web_config.middleware(on_busy=auth_busy)] if web_config else [])
    app[STORE] = store
    app[HEALTH] = health
    app[SCRAPE] = Scrape(store)
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
    return _json(*liveness(request.app[HEALTH]))


async def _readyz(request: web.Request) -> web.Response:
    return _json(*readiness(request.app[HEALTH], request.app[STORE]))


async def _index(request: web.Request) -> web.Response:
    links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in ("/metrics", "/healthz", "/readyz"))
    return web.Response(
        text=f"<html><body><h1>dbwatch {__version__}</h1><ul>{links}</ul></body></html>",
        content_type="text/html",
    )
