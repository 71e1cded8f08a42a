"""The login probe over real sockets on 127.0.0.1: phases, every failure reason, secrets kept out of everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from dbwatch import metrics as m
from dbwatch.config import ConfigError, Target, from_mapping
from dbwatch.pgcluster import free_port
from dbwatch.probes import PROBES
from dbwatch.probes.http_login import MAX_BODY, HttpLoginProbe, LoginFailed, LoginReason, classify_login
from dbwatch.probes.job import ProbeJob
from dbwatch.store import Store
from tests.helpers import SENTINEL, SENTINEL_FORMS, eventually, run_cli, running, sample, value

TOKEN = "tok-" + SENTINEL  # a token in the response must never show up either


@dataclass
class LoginApp:
    """A small real login endpoint whose behaviour the test switches."""

    port: int = 0
    mode: str = "ok"
    seen: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/login"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        if request.content_type == "application/x-www-form-urlencoded":
            body: dict[str, Any] = dict(await request.post())
        else:
            body = await request.json()
        self.seen.append(body)
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
        if body.get("password") != SENTINEL:
            return web.json_response({"detail": "bad credentials"}, status=401)
        if mode == "500":
            return web.json_response({"detail": "MissingGreenlet"}, status=500)
        if mode == "notjson":
            return web.Response(text="<html>oops</html>")
        if mode == "huge":
            return web.Response(body=b"[" + b"1," * MAX_BODY + b"1]", content_type="application/json")
        if mode == "wrongtype":
            return web.json_response({"access_token": TOKEN, "token_type": "cookie"})
        if mode == "missing":
            return web.json_response({"token_type": "bearer"})
        return web.json_response({"access_token": TOKEN, "token_type": "bearer"})


@contextlib.asynccontextmanager
async def login_app(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[LoginApp]:
    app_state = LoginApp()
    app = web.Application()
    app.router.add_post("/api/login", app_state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    app_state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield app_state
    finally:
        await runner.cleanup()


def login_target(url: str, **extra: Any) -> Target:
    raw = {
        "name": "login",
        "kind": "http_login",
        "url": url,
        "body": {"username": "probe@example.com"},
        "secret_fields": {"password": {"env": "DBW_LOGIN_PW"}},
        "expect_json": {"path": "access_token"},
        "interval": 10,
        "timeout": 2,
        **extra,
    }
    return from_mapping({"targets": [raw]}).targets[0]


@pytest.fixture(autouse=True)
def _login_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBW_LOGIN_PW", SENTINEL)


async def reason_of(t: Target) -> LoginReason:
    try:
        async with asyncio.timeout(t.timeout):
            await HttpLoginProbe(t).probe(t.timeout)
    except Exception as exc:
        leaked = any(f in str(exc) for f in SENTINEL_FORMS)
        reason = classify_login(exc)
    else:
        raise AssertionError("probe unexpectedly succeeded")
    assert not leaked
    return reason


async def test_http_login_ok_reports_phases_and_sends_credentials() -> None:
    """A good login yields connect, ttfb and total (no tls on http); the body carries the secret field."""
    async with login_app() as app:
        t = login_target(app.url, headers={"X-Probe": "dbwatch"})
        phases = await HttpLoginProbe(t).probe(2)
        assert set(phases) == {"connect", "ttfb", "total"}
        assert all(0 <= v < 2 for v in phases.values())
        assert phases["total"] >= phases["ttfb"]
        assert app.seen == [{"username": "probe@example.com", "password": SENTINEL}]
        assert app.headers[0]["X-Probe"] == "dbwatch"
        assert app.headers[0]["Content-Type"] == "application/json"


async def test_https_login_reports_tls_phase_and_untrusted_cert_is_tls(tmp_path: Path) -> None:
    """Over https with the CA configured, all four phases; without the CA the reason is tls."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with login_app(server_ctx) as app:
        url = app.url.replace("http:", "https:")
        t = login_target(url, tls={"ca_file": str(ca_file)})
        probe = HttpLoginProbe(t)
        for _ in range(2):  # the TLS context is reused across runs; each run gets fresh timings
            phases = await probe.probe(2)
            assert set(phases) == {"connect", "tls", "ttfb", "total"}
            assert phases["tls"] > 0
        assert await reason_of(login_target(url)) is LoginReason.TLS
        insecure = login_target(url, tls={"insecure_skip_verify": True})
        assert "tls" in await HttpLoginProbe(insecure).probe(2)


async def test_refused_and_timeout() -> None:
    assert await reason_of(login_target(f"http://127.0.0.1:{free_port()}/login")) is LoginReason.REFUSED
    async with login_app() as app:
        app.mode = "slow"
        assert await reason_of(login_target(app.url, timeout=0.3, interval=1)) is LoginReason.TIMEOUT


@pytest.mark.parametrize(
    ("mode", "extra", "reason"),
    [
        ("500", {}, LoginReason.STATUS),
        ("ok", {"expect_status": 201}, LoginReason.STATUS),
        ("notjson", {}, LoginReason.BODY_MISMATCH),
        ("missing", {}, LoginReason.BODY_MISMATCH),
        ("huge", {"expect_json": {"path": "0"}}, LoginReason.BODY_MISMATCH),
        ("wrongtype", {"expect_json": {"path": "token_type", "equals": "bearer"}}, LoginReason.BODY_MISMATCH),
        ("reset", {}, LoginReason.DISCONNECTED),
    ],
)
async def test_failure_reasons(mode: str, extra: dict[str, Any], reason: LoginReason) -> None:
    async with login_app() as app:
        app.mode = mode
        assert await reason_of(login_target(app.url, **extra)) is reason


async def test_wrong_password_is_status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A password from a file (trailing newline stripped); a wrong one gives 401, i.e. reason status."""
    pw = tmp_path / "pw"
    pw.write_text(SENTINEL + "\n")
    async with login_app() as app:
        t = login_target(app.url, secret_fields={"password": {"file": str(pw)}}, body_encoding="form")
        await HttpLoginProbe(t).probe(2)
        assert app.seen[-1] == {"username": "probe@example.com", "password": SENTINEL}
        pw.write_text("wrong")
        t = login_target(app.url, secret_fields={"password": {"file": str(pw)}})
        assert await reason_of(t) is LoginReason.STATUS


async def test_equals_and_list_paths() -> None:
    async with login_app() as app:
        t = login_target(app.url, expect_json={"path": "token_type", "equals": "bearer"})
        assert "total" in await HttpLoginProbe(t).probe(2)


def test_classify_dns_and_unknown() -> None:
    import socket

    err = OSError("Cannot connect")
    err.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert classify_login(err) is LoginReason.DNS
    assert classify_login(ValueError("x")) is LoginReason.OTHER


async def test_daemon_reports_login_probe_and_no_secret_anywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the daemon: up, target_info kind, all login reasons at zero, then status failures counted."""
    async with login_app() as app:
        raw = {
            "name": "login",
            "kind": "http_login",
            "url": app.url,
            "body": {"username": "probe@example.com"},
            "secret_fields": {"password": {"env": "DBW_LOGIN_PW"}},
            "expect_json": {"path": "access_token"},
            "interval": 0.3,
            "timeout": 0.25,
        }
        async with running({"targets": [raw]}) as d:

            async def up(want: float) -> str | None:
                text = await d.metrics()
                return text if sample(text, "dbwatch_probe_up", {"target": "login"}) == want else None

            text = await eventually(lambda: up(1.0))
            assert sample(text, "dbwatch_target_info", {"target": "login", "kind": "http_login"}) == 1
            for r in LoginReason:
                assert sample(text, "dbwatch_probe_failures_total", {"target": "login", "reason": r.value}) == 0
            for phase in ("connect", "ttfb", "total"):
                assert (
                    sample(text, "dbwatch_probe_duration_seconds_count", {"target": "login", "phase": phase}) or 0
                ) >= 1
            assert sample(text, "dbwatch_probe_failures_total", {"target": "login", "reason": "auth_failed"}) is None
            app.mode = "500"
            text = await eventually(lambda: up(0.0))
            assert value(text, "dbwatch_probe_failures_total", {"target": "login", "reason": "status"}) >= 1
            status, body = await d.get("/readyz")
            assert json.loads(body)["targets"]["login"]["reason"] == "status"
            assert status == 200  # a login probe never gates readiness by default
            assert not any(f in text + body for f in (*SENTINEL_FORMS, TOKEN))
        assert d.store.counter_value(m.PROBE_FAILURES, ("login", "status")) >= 1


async def test_probe_job_records_the_last_http_status() -> None:
    """dbwatch_probe_http_status: 0 before a run, the response's status (500 on failure, 200 on success), 0 when no
    response arrived (refused): the value DbwatchProbeDown's summary shows as `HTTP 500`."""
    store = Store()
    async with login_app() as app:
        job = ProbeJob(login_target(app.url), store)
        assert store.gauge_value(m.PROBE_HTTP_STATUS, ("login",)) == 0
        app.mode = "500"
        with pytest.raises(LoginFailed):
            await job.run()
        assert store.gauge_value(m.PROBE_HTTP_STATUS, ("login",)) == 500
        assert store.counter_value(m.PROBE_FAILURES, ("login", "status")) == 1
        app.mode = "ok"
        await job.run()
        assert store.gauge_value(m.PROBE_HTTP_STATUS, ("login",)) == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        await job.run()  # the server is gone: refused, no response
    assert store.gauge_value(m.PROBE_HTTP_STATUS, ("login",)) == 0


def test_kind_table_has_login() -> None:
    kind = PROBES["http_login"]
    assert kind.phases == ("connect", "tls", "ttfb", "total")
    assert {r.value for r in kind.reasons} >= {"refused", "timeout", "status", "body_mismatch", "tls"}
    store = Store()
    ProbeJob(login_target("http://127.0.0.1:1/x"), store)
    assert store.counter_value(m.PROBE_FAILURES, ("login", "body_mismatch")) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"url": "ftp://h/x"}, "targets[0].url: expected an http:// or https:// URL"),
        ({"url": "https://u:" + SENTINEL_FORMS[1] + "@h/x"}, "targets[0].url: no credentials in the URL"),
        ({"dsn": "postgresql://h/d"}, "targets[0].dsn: unknown key"),
        ({"method": "DELETE"}, "targets[0].method: must be one of"),
        ({"expect_status": [200, 99]}, "targets[0].expect_status[1]: expected an HTTP status"),
        ({"expect_json": {"equals": 1}}, "targets[0].expect_json.path: missing"),
        ({"secret_fields": {"password": {"env": "DBW_NOT_SET_X"}}}, "targets[0].secret_fields.password.env"),
        ({"secret_fields": {"password": {"env": "A", "file": "/x"}}}, "exactly one of env, file"),
        ({"body": [1, 2]}, "targets[0].body: expected a mapping"),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "targets[0].tls.ca_file: cannot read"),
    ],
)
def test_bad_login_config(extra: dict[str, Any], message: str) -> None:
    raw = {"name": "login", "kind": "http_login", "url": "http://127.0.0.1:1/login", **extra}
    with pytest.raises(ConfigError) as e:
        from_mapping({"targets": [raw]})
    assert message in str(e.value)
    assert not any(f in str(e.value) for f in SENTINEL_FORMS)


@pytest.mark.parametrize(
    "url",
    [
        "http//x",
        "http://",
        "http:///login",
        "//127.0.0.1/login",
        "127.0.0.1:8000/login",
        "mailto:a@b",
        "ws://h/x",
        "http://[::1/login",
        "http://h:99999/",
        "http://ex ample/login",
        "http://h/log in",
        "http://h/\x00",
    ],
)
def test_malformed_login_url_is_a_config_error(url: str) -> None:
    """Each malformed URL is a ConfigError naming the key (never a traceback from urllib or aiohttp)."""
    with pytest.raises(ConfigError, match=r"^targets\[0\]\.url: ") as e:
        from_mapping({"targets": [{"name": "login", "kind": "http_login", "url": url}]})
    assert url not in str(e.value) or url == "http://"


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_malformed_login_url_exits_2_without_traceback(tmp_path: Path, command: str) -> None:
    """`dbwatch check-config` and `dbwatch run` refuse `url: "http//x"`: exit 2, the key named, no traceback."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text('targets:\n  - name: login\n    kind: http_login\n    url: "http//x"\n')
    proc = run_cli(command, *(["--config"] if command == "run" else []), str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.startswith("dbwatch: config error: targets[0].url: expected an http:// or https:// URL")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_url_and_postgres_keys() -> None:
    with pytest.raises(ConfigError, match=r"targets\[0\]\.url: missing"):
        from_mapping({"targets": [{"name": "l", "kind": "http_login"}]})
    with pytest.raises(ConfigError, match=r"targets\[0\]\.url: unknown key"):
        from_mapping({"targets": [{"name": "p", "dsn": "postgresql://h/d", "url": "http://h/"}]})


def test_check_config_redacts_login_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "targets:\n"
        "  - name: login\n    kind: http_login\n    url: http://127.0.0.1:8000/login\n"
        "    body: {username: probe}\n"
        "    secret_fields: {password: {env: DBW_LOGIN_PW}}\n"
        "    secret_headers: {X-Api-Key: {env: DBW_LOGIN_PW}}\n"
        "    expect_json: {path: access_token}\n"
    )
    proc = run_cli("check-config", str(cfg))
    assert proc.returncode == 0
    assert "password: '***'" in proc.stdout
    assert "X-Api-Key: '***'" in proc.stdout
    assert "kind: http_login" in proc.stdout
    assert not any(f in proc.stdout + proc.stderr for f in SENTINEL_FORMS)
