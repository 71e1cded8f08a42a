"""The HTTP side: /metrics from the store, /healthz and /readyz from a health view; knows nothing of what runs.

The composition root (dbwatch.app) builds and runs the components; this module gets only the store and a
`dbwatch.health.Health`.
"""

from __future__ import annotations

import gzip
import platform

import structlog
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from dbwatch import __version__
from dbwatch import metrics as m
from dbwatch.health import Health, liveness, readiness
from dbwatch.httpd import REJECT_REASONS, HTTPLimits, HTTPServer, Request, Response
from dbwatch.store import Exposition, Store
from dbwatch.webconfig import WebConfig

__all__ = ["Scrape", "build_server"]

log = structlog.get_logger("dbwatch")


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


def build_server(
    store: Store, health: Health, web_config: WebConfig | None = None, limits: HTTPLimits | None = None
) -> HTTPServer:
    """The HTTP server for `store` and `health`, guarded by the web config; it starts and stops nothing else."""
    scrape = Scrape(store)
    logged: set[str] = set()
    for reason in (*REJECT_REASONS, "auth_busy"):
        store.inc(m.HTTP_REJECTED, (reason,), 0)

    def reject(reason: str) -> None:
        """Count a refused connection or request; the first of each reason is logged (a flood is only counted)."""
        store.inc(m.HTTP_REJECTED, (reason,))
        if reason not in logged:
            logged.add(reason)
            log.warning("http_connection_closed", reason=reason, first=True)

    async def metrics(req: Request) -> Response:
        body, content_type = scrape.body(req.header("Accept"))
        resp = Response(200, body, content_type, [("Vary", "Accept-Encoding")])
        if _accepts_gzip(req.header("Accept-Encoding")):
            resp.body = gzip.compress(body, compresslevel=1, mtime=0)  # level 1: ~8x smaller at a fraction of 6's CPU
            resp.headers.append(("Content-Encoding", "gzip"))
        return resp

    async def healthz(req: Request) -> Response:
        return Response.json(*liveness(health))

    async def readyz(req: Request) -> Response:
        return Response.json(*readiness(health, store))

    routes = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz, "/": _index}
    # Basic auth and client certificates from --web.config.file guard every route (health ones optionally open).
    guard = web_config.middleware(on_busy=lambda: reject("auth_busy")) if web_config else None
    return HTTPServer(routes, limits=limits, middleware=guard, on_reject=reject)


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


async def _index(req: Request) -> Response:
    links = "".join(f'<li><a href="{p}">{p}</a></li>' for p in ("/metrics", "/healthz", "/readyz"))
    return Response.text(200, f"<html><body><h1>dbwatch {__version__}</h1><ul>{links}</ul></body></html>", "text/html")
