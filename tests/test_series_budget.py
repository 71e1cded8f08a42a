"""Series budgets (issue 15): what one sidecar exposes for two typical deployments, counted on a real /metrics.

Quick start: the shipped example config (one database, one log source) <= 300 series. A full sidecar: the
database, a login probe against a real HTTP login endpoint, the in-app hook (pool), an app log with tracebacks and
an access log of an app with 40 route templates <= 1,000.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from dbwatch.hook import instrument
from tests.helpers import PG, REPO, eventually, running, sample

QUICK_START_BUDGET = 300
FULL_BUDGET = 1000
ROUTES = 40
FULL_BUDGET = 1000
ROUTES = 40


def series_by_family(body: str) -> Counter[str]:
    """Samples per family in an exposition."""
    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(body):
        out[fam.name] += len(fam.samples)
    return out


def _traceback_record() -> str:
    try:
        dict[str, int]()["missing"]
    except KeyError:
        return "2026-12-04 10:00:00,000 ERROR [app] request failed\n" + traceback.format_exc()
    raise AssertionError


def _report(name: str, counts: Counter[str]) -> None:
    lines = [f"{name}: {sum(counts.values())} series"] + [f"  {n:6} {f}" for f, n in counts.most_common()]
    print("\n".join(lines))


async def test_quick_start_config_stays_within_300_series(pg: PG, tmp_path: Path, monkeypatch: Any) -> None:
    """config/dbwatch.example.yaml as shipped (its database and `app` log source with a logged traceback)."""
    raw = yaml.safe_load((REPO / "config" / "dbwatch.example.yaml").read_text())
    monkeypatch.setenv("DATABASE_URL", pg.dsn)
    monkeypatch.setenv("DBWATCH_MONITOR_URL", pg.dsn)
    monkeypatch.setenv("DBWATCH_STATE_DIR", str(tmp_path))
    log = tmp_path / "app.log"
    log.write_text(_traceback_record())
    raw["logs"]["sources"][0]["path"] = str(log)
    raw["logs"]["start_at"] = "beginning"
    raw["targets"][0] |= {"interval": 0.5, "timeout": 0.4}
    del raw["listen"]
    async with running(raw) as d:

        async def ready() -> str | None:
            body = await d.metrics()
            ok = sample(body, "dbwatch_pg_connections_used_ratio", {"target": "primary"}) is not None
            return body if ok and sample(body, "dbwatch_log_lines_total", {"source": "app"}) else None

        body = await eventually(ready, timeout=20)
    counts = series_by_family(body)
    _report("quick start", counts)
    assert sum(counts.values()) <= QUICK_START_BUDGET


@asynccontextmanager
async def _login_server() -> AsyncIterator[str]:
    async def login(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "t0k3n"})

    app = web.Application()
    app.router.add_post("/api/login", login)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/login"
    finally:
        await runner.cleanup()


async def test_full_sidecar_with_40_routes_stays_within_1000_series(pg: PG) -> None:
    """Database, login probe, the hook (pool), an app log and an access log of an app with 40 routes.

    Request latency comes from one source here, the access log; the hook's middleware on the same app would count
    the same requests again under its own `source` (README: Series per family)."""
    d = Path(tempfile.mkdtemp(prefix="dbwb-"))
    sock = d / "hook.sock"
    access = d / "access.log"
    applog = d / "app.log"
    applog.write_text(_traceback_record() * 3)
    targets: list[dict[str, Any]] = [
        {"name": "primary", "dsn": pg.dsn, "interval": 0.5, "timeout": 0.4},
        {
            "name": "login",
            "kind": "http_login",
            "url": "",
            "body": {"username": "probe@example.com"},
            "expect_json": {"path": "access_token"},
            "interval": 0.5,
            "timeout": 0.4,
        },
    ]
    config = {
        "targets": targets,
        "hook": {"listen": f"unix:{sock}"},
        "logs": {
            "start_at": "beginning",
            "sources": [
                {"name": "app", "path": str(applog)},
                {"name": "access", "path": str(access), "access": {"format": "json"}},
            ],
        },
    }
    url = URL.create(
        "postgresql+asyncpg",
        username=pg.user,
        password=pg.password,
        host=pg.cluster.host,
        port=pg.port,
        database=pg.database,
    )
    engine = create_async_engine(url)
    access_log = logging.getLogger("budget.access")
    handler = logging.FileHandler(access)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False

    async def endpoint(request: Request) -> Response:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        code = int(request.query_params.get("code", "200"))
        return PlainTextResponse("x", status_code=code)

    routes = [Route(f"/api/r{i}/{{item_id}}", endpoint, methods=["GET", "POST"]) for i in range(ROUTES)]
    try:
        async with (
            _login_server() as login_url,
            running({**config, "targets": [targets[0], {**targets[1], "url": login_url}]}) as daemon,
        ):
            assert instrument(engine, name="main", app="shop", sidecar=f"unix:{sock}", interval=0.05)
            transport = httpx.ASGITransport(app=Starlette(routes=routes))
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                for i in range(ROUTES):
                    # every route answers GET 2xx; a quarter also 4xx, an eighth also POST and 5xx; scanners 404
                    plan = [("GET", 200)] + [("GET", 404)] * (i % 4 == 0) + [("POST", 500)] * (i % 8 == 0)
                    for method, code in plan:
                        for n in range(3):
                            r = await client.request(method, f"/api/r{i}/{n + 1000 * i}?code={code}")
                            record = {
                                "method": method,
                                "path": f"/api/r{i}/{n + 1000 * i}",
                                "status": r.status_code,
                                "duration_ms": 12.5,
                            }
                            access_log.info(json.dumps(record))
                for n in range(50):
                    r = await client.get(f"/scan/{n}.php")
                    access_log.info(
                        json.dumps(
                            {"method": "GET", "path": f"/scan/{n}.php", "status": r.status_code, "duration_ms": 1}
                        )
                    )

            async def ready() -> str | None:
                body = await daemon.metrics()
                probe = sample(body, "dbwatch_probe_up", {"target": "login"}) == 1
                hook = sample(body, "dbwatch_app_pool_checkouts_total", {"app": "shop", "engine": "main"})
                acc = sample(body, "dbwatch_http_access_records_total", {"source": "access", "result": "observed"})
                return body if probe and hook and acc == ROUTES * 3 + ROUTES // 4 * 3 + ROUTES // 8 * 3 + 50 else None

            body = await eventually(ready, timeout=30)
        counts = series_by_family(body)
        _report("full sidecar", counts)
        assert sum(counts.values()) <= FULL_BUDGET
    finally:
        access_log.removeHandler(handler)
        handler.close()
        await engine.dispose()
        shutil.rmtree(d, ignore_errors=True)
