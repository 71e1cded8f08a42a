"""End to end, real components: PostgreSQL, a uvicorn login app, dbwatch, Prometheus, Alertmanager, a webhook.

The app (tests/apps/asgi_login.py) runs async SQLAlchemy 2 on asyncpg against the test cluster, reports its pool
through the in-app hook, writes a JSON access log and a plain application log, and fails with a real MissingGreenlet
on one route. dbwatch probes the database and the login endpoint and tails both logs. Prometheus scrapes dbwatch and
evaluates the shipped rules, written by `dbwatch rules --include config/dbwatch.rules.yml --max-for 1s` (the
documented way to make `for:` short for a test; the shipped files are untouched), and sends to Alertmanager, whose
config is the shipped example with its receivers pointed at the test's webhook and its waits shortened.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from dbwatch import rules
from dbwatch.pgcluster import free_port
from tests.e2e.stack import Alertmanager, LoginApp, Prometheus
from tests.e2e.test_prometheus import DASHBOARDS, dashboard_queries
from tests.helpers import PG, REPO, eventually, run_cli, running

APP_FILE = REPO / "tests" / "apps" / "asgi_login.py"
LOGIN_PAGE_SECONDS = 45  # every panel query must have data within this long of the first scrape


def _line(marker: str) -> int:
    for i, text in enumerate(APP_FILE.read_text().splitlines(), 1):
        if marker in text:
            return i
    raise LookupError(marker)


class Webhook:
    """An Alertmanager webhook receiver on 127.0.0.1: every alert of every notification, in arrival order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []  # (receiver, alert), firing and resolved
        self.port = 0

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """The firing alerts received, in order."""
        return [a for _, a in self.received if a["status"] == "firing"]

    async def _receive(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.received.extend((request.match_info["receiver"], a) for a in payload["alerts"])
        return web.Response(text="ok")

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Webhook]:
        app = web.Application()
        app.router.add_post("/{receiver}", self._receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield self
        finally:
            await runner.cleanup()

    def firing(self, alertname: str, status: str = "firing", **labels: str) -> dict[str, Any] | None:
        for _, a in self.received:
            if a["status"] == status and _matches(a, alertname, labels):
                return a
        return None

    def pages(self, since: int = 0) -> set[frozenset[tuple[str, str]]]:
        """The label sets of the firing alerts the pager got, from notification number `since` on."""
        return {
            frozenset(a["labels"].items()) for r, a in self.received[since:] if r == "pager" and a["status"] == "firing"
        }


def _matches(alert: dict[str, Any], alertname: str, labels: dict[str, str]) -> bool:
    got = alert["labels"]
    return bool(got.get("alertname") == alertname and all(got.get(k) == v for k, v in labels.items()))


def alertmanager_config(webhook_port: int) -> dict[str, Any]:
    """The shipped example, its receivers pointed at the webhook and its waits cut to a second (test only)."""
    cfg: dict[str, Any] = yaml.safe_load((REPO / "config" / "alertmanager.example.yml").read_text())
    for receiver in cfg["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"
    for route in [cfg["route"], *cfg["route"]["routes"]]:
        route.update({"group_wait": "0s", "group_interval": "1s"})
    return cfg


def dbwatch_config(pg_dsn: str, app_url: str, log_dir: Path, hook_port: int) -> dict[str, Any]:
    return {
        "targets": [
            {"name": "main", "dsn": pg_dsn, "interval": 0.5, "timeout": 0.4, "collect": {"interval": 1}},
            {
                "name": "login",
                "kind": "http_login",
                "url": app_url + "/api/login",
                "body": {"username": "probe@example.com"},
                "secret_fields": {"password": {"env": "E2E_LOGIN_PASSWORD"}},
                "expect_json": {"path": "access_token"},
                "interval": 0.5,
                "timeout": 0.4,
            },
        ],
        "hook": {"listen": f"127.0.0.1:{hook_port}", "worker_expiry": "2s"},
        "slos": [
            {
                "name": "login-availability",
                "sli": "availability",
                "from": "access",
                "source": "access",
                "route": "/api/login",
                "method": "POST",
                "objective": 99,
                "target": "main",
            },
            {
                "name": "login-latency",
                "sli": "latency",
                "from": "access",
                "source": "access",
                "route": "/api/login",
                "method": "POST",
                "objective": 99,
                "threshold": "500ms",
                "target": "main",
            },
            {"name": "login-probe", "sli": "availability", "from": "probe", "target": "login", "objective": 99},
        ],
        "logs": {
            "state_dir": str(log_dir),
            "app_roots": [str(REPO)],
            "poll_interval": "200ms",
            "sources": [
                {"name": "app", "path": str(log_dir / "app.log"), "format": "plain", "target": "main"},
                {"name": "access", "path": str(log_dir / "access.log"), "format": "json", "access": {"format": "json"}},
            ],
        },
    }


async def traffic(app_url: str, password: str, stop: asyncio.Event) -> None:
    """Bounded login traffic (at most 3000 requests, ~25/s): good logins, a wrong password, the buggy route."""
    async with aiohttp.ClientSession() as s:
        for n in range(3000):
            if stop.is_set():
                return
            path, pw = "/api/login", password
            if n % 10 == 9:
                pw = "wrong"
            if n % 40 == 20:
                path = "/api/login/remember"
            with contextlib.suppress(aiohttp.ClientError):
                async with s.post(app_url + path, json={"username": "probe@example.com", "password": pw}) as r:
                    await r.read()
            await asyncio.sleep(0.04)


LIVE = "dbwatch:log_source_live_since:timestamp"
# Asserting that no page comes needs a time: several rule evaluations (1 s) and Alertmanager group intervals (1 s).
QUIET_SECONDS = 6


async def _result(prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    res = await asyncio.to_thread(prom.query, expr)
    return list(res["data"]["result"]) if res.get("status") == "success" else []


async def _pages_settled(prom: Prometheus, webhook: Webhook) -> bool:
    """Every page alert Prometheus has is firing (none pending) and has reached the pager."""
    alerts = await _result(prom, 'ALERTS{severity="page"}')
    if any(a["metric"]["alertstate"] != "firing" for a in alerts):
        return False
    sent = webhook.pages()
    keys = [frozenset((k, v) for k, v in a["metric"].items() if k not in ("__name__", "alertstate")) for a in alerts]
    return all(k in sent for k in keys)


def has_finite_sample(res: dict[str, Any]) -> bool:
    return res.get("status") == "success" and any(not math.isnan(float(s["value"][1])) for s in res["data"]["result"])


@pytest.mark.slow
async def test_alerting_end_to_end(pg: PG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dashboard query has data; MissingGreenlet pages with its code line; in the replayed outage the probe
    pages with its reason, the StaticPool ticket goes out during it, and no page arrives after the fix."""
    password = secrets.token_urlsafe(12)
    monkeypatch.setenv("E2E_LOGIN_PASSWORD", password)
    hook_port, dbwatch_port = free_port(), free_port()
    app_dsn = pg.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    app = LoginApp(app_dsn, password, f"127.0.0.1:{hook_port}")
    stop_traffic = asyncio.Event()
    services: list[Any] = [app]
    try:
        raw = dbwatch_config(pg.dsn, app.url, app.dir, hook_port)
        cfg_file = tmp_path / "dbwatch.yaml"
        cfg_file.write_text(yaml.safe_dump(raw))
        rules_dir = tmp_path / "rules"
        made = run_cli(
            "rules",
            "--config",
            str(cfg_file),
            "--out",
            str(rules_dir),
            "--max-for",
            "1s",
            "--include",
            "config/dbwatch.rules.yml",
        )
        assert made.returncode == 0, made.stderr
        rule_files = sorted(rules_dir.glob("*.rules.yml"))
        assert [p.name for p in rule_files] == ["dbwatch-slo.rules.yml", "dbwatch.rules.yml"]

        async with (
            Webhook().serve() as webhook,
            running({**raw, "listen": f"127.0.0.1:{dbwatch_port}"}),
        ):
            am = Alertmanager(alertmanager_config(webhook.port))
            services.append(am)
            prom = Prometheus([f"127.0.0.1:{dbwatch_port}"], rule_files, alertmanager=f"127.0.0.1:{am.port}")
            services.append(prom)
            # Traffic starts once Prometheus has seen both log sources caught up: what dbwatch read before is
            # history, which never pages (DbwatchAsyncORMError).
            await eventually(prom.targets_up, timeout=30)
            await eventually(lambda: _result(prom, LIVE), timeout=15, interval=0.5)
            assert len(await _result(prom, LIVE)) == 2
            load = asyncio.create_task(traffic(app.url, password, stop_traffic))
            try:
                # Every query of every panel returns data (a finite value) from Prometheus's HTTP API.
                pending = {(path.name, title, expr) for path in DASHBOARDS for title, expr in dashboard_queries(path)}

                async def all_have_data() -> bool:
                    for key in sorted(pending):
                        if has_finite_sample(await asyncio.to_thread(prom.query, key[2])):
                            pending.discard(key)
                    return not pending

                try:
                    await eventually(all_have_data, timeout=LOGIN_PAGE_SECONDS, interval=1)
                except AssertionError:
                    raise AssertionError(f"panels without data: {sorted(pending)}") from None

                # The MissingGreenlet pages, delivered with its code line and log source.
                location = f"tests/apps/asgi_login.py:{_line('# MissingGreenlet')}"
                orm = await eventually(lambda: webhook.firing("DbwatchAsyncORMError"), timeout=20)
                assert orm["labels"]["location"] == location
                assert orm["labels"]["category"] == "missing_greenlet"
                assert orm["labels"]["exception"] == "MissingGreenlet"
                assert orm["labels"]["severity"] == "page"
                assert location in orm["annotations"]["description"]
                assert orm["labels"]["target"] == "main"
                assert "in log source app (database target main)" in orm["annotations"]["description"]

                # The outage, replayed: a redeploy with a StaticPool and the buggy login, every login a
                # MissingGreenlet and HTTP 500. DbwatchProbeDown pages saying why, and the root cause's ticket goes
                # out while the login probe fails: no inhibition holds it.
                app.stop()
                app = LoginApp(app_dsn, password, f"127.0.0.1:{hook_port}", broken=True, after=app)
                services.append(app)
                down = await eventually(lambda: webhook.firing("DbwatchProbeDown", target="login"), timeout=30)
                assert down["labels"]["severity"] == "page"
                assert down["annotations"]["summary"] == "login: probe failing (status, HTTP 500)"
                assert "status" in down["annotations"]["description"]
                assert down["annotations"]["runbook_url"].endswith("README.md#dbwatchprobedown")
                cause = await eventually(
                    lambda: webhook.firing("DbwatchUnfitPoolClass", finding="static_pool_async"), timeout=30
                )
                assert cause["labels"]["severity"] == "ticket"
                assert ("tickets", cause) in webhook.received
                assert webhook.firing("DbwatchProbeDown", "resolved", target="login") is None  # still failing
                # Every page of the outage is out before the fix: the probe and its SLO, one group per SLO.
                await eventually(lambda: webhook.firing(rules.ALERT, slo="login-probe", window="1h/5m"), timeout=60)
                await eventually(lambda: _pages_settled(prom, webhook), timeout=30, interval=0.5)

                # The fix: the good app redeployed. The probe recovers, and no page arrives after it: nothing was
                # held by an inhibition to be sent when it lifts.
                fixed_at = len(webhook.received)
                before = webhook.pages()
                app.stop()
                app = LoginApp(app_dsn, password, f"127.0.0.1:{hook_port}", after=app)
                services.append(app)
                await eventually(lambda: webhook.firing("DbwatchProbeDown", "resolved", target="login"), timeout=30)
                await asyncio.sleep(QUIET_SECONDS)
                after_fix = webhook.pages(fixed_at) - before
                assert after_fix == set(), sorted(dict(p)["alertname"] for p in after_fix)
                assert webhook.firing("DbwatchProbeDown", target="main") is None
            finally:
                stop_traffic.set()
                await load
    finally:
        for svc in reversed(services):
            svc.close()
