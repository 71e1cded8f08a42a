"""Synthetic login probe: one HTTP(S) request over a fresh connection, checked and timed by phase.

Phases: `connect` (DNS + TCP), `tls` (handshake; https only), `ttfb` (request sent on a ready connection until
the response headers arrive: the app's time), `total` (the whole probe, body read and checked). The TCP/TLS split
comes from a `ssl.SSLContext` subclass that notes when asyncio wraps the socket (`wrap_bio`), which happens right
after the TCP connect; aiohttp's trace hooks give the connection start and end. No private aiohttp API is used.

Credentials (`secret_fields`, `secret_headers`) are revealed only into the request; the response body (which holds
a token) is parsed in memory and never logged, labelled or put into an error.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.parse
from enum import StrEnum
from types import SimpleNamespace
from typing import Any, ClassVar, Final

from dbwatch.config import LoginCheck, Target
from dbwatch.errors import Reason, classify
from dbwatch.probes.base import Rider

__all__ = ["MAX_BODY", "PHASES", "HttpLoginProbe", "LoginFailed", "LoginReason", "check_body", "classify_login"]

PHASES: Final = ("connect", "tls", "ttfb", "total")
MAX_BODY: Final = 1 << 20  # a login response bigger than this is not parsed: body_mismatch
USER_AGENT: Final = "dbwatch-login-probe"


class LoginReason(StrEnum):
    """Why a login probe failed. Closed: anything unknown is OTHER."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    DNS = "dns"
    TLS = "tls"
    DISCONNECTED = "disconnected"  # the server closed or reset the connection before a full response
    STATUS = "status"  # a status outside expect_status
    BODY_MISMATCH = "body_mismatch"  # not JSON, too large, path missing or value different
    OTHER = "other"


class LoginFailed(Exception):
    """A response that arrived but did not pass the check; the message holds no body content."""

    def __init__(self, reason: LoginReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_BASE: Final = {
    Reason.REFUSED: LoginReason.REFUSED,
    Reason.TIMEOUT: LoginReason.TIMEOUT,
    Reason.DNS: LoginReason.DNS,
    Reason.SSL: LoginReason.TLS,
}


def classify_login(exc: BaseException) -> LoginReason:
    """Map an exception raised by a login probe to a LoginReason."""
    if isinstance(exc, LoginFailed):
        return exc.reason
    import aiohttp  # noqa: PLC0415 - loaded by the probe's first run already; only http_login targets pay for it

    if isinstance(exc, aiohttp.ClientSSLError):
        return LoginReason.TLS
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return LoginReason.DNS
    base = _BASE.get(classify(exc))
    if base is not None:
        return base
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | ConnectionResetError):
        return LoginReason.DISCONNECTED
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionResetError):
        return LoginReason.DISCONNECTED
    return LoginReason.OTHER


class _TimedContext(ssl.SSLContext):
    """Notes when asyncio wraps a new connection in TLS, i.e. when the TCP connect is done."""

    tls_started: float | None = None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        if self.tls_started is None:
            self.tls_started = time.perf_counter()
        return super().wrap_bio(*args, **kwargs)


def _context(check: LoginCheck) -> _TimedContext:
    ctx = _TimedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_default_certs()
    if check.tls_ca_file:
        ctx.load_verify_locations(cafile=check.tls_ca_file)
    if check.tls_insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _request_parts(check: LoginCheck) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT, **dict(check.headers)}
    headers.update({k: s.reveal() for k, s in check.secret_headers.items()})
    kwargs: dict[str, Any] = {"headers": headers}
    if check.body_json is not None or check.secret_fields:
        body: dict[str, Any] = json.loads(check.body_json or "{}")
        body.update({k: s.reveal() for k, s in check.secret_fields.items()})
        if check.body_encoding == "form":
            kwargs["data"] = urllib.parse.urlencode({k: _form_value(v) for k, v in body.items()})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            kwargs["data"] = json.dumps(body)
            headers["Content-Type"] = "application/json"
    return kwargs


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


def check_body(check: LoginCheck, raw: bytes) -> None:
    """Raise LoginFailed(body_mismatch) unless the JSON body has the expected path (and value)."""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LoginFailed(LoginReason.BODY_MISMATCH, "response is not JSON") from None
    for i, key in enumerate(check.expect_json_path):
        where = ".".join(check.expect_json_path[: i + 1])
        if isinstance(doc, dict) and key in doc:
            doc = doc[key]
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            raise LoginFailed(LoginReason.BODY_MISMATCH, f"response has no {where}")
    if check.expect_json_equals is not None and doc != json.loads(check.expect_json_equals):
        raise LoginFailed(
            LoginReason.BODY_MISMATCH, "response value at " + ".".join(check.expect_json_path) + " differs"
        )


class HttpLoginProbe:
    """The `http_login` kind: one target's login check; holds its TLS context (built once, reused by every run) and
    last HTTP status."""

    name: ClassVar[str] = "http_login"
    phases: ClassVar[tuple[str, ...]] = PHASES
    reasons: ClassVar[type[StrEnum]] = LoginReason

    def __init__(self, target: Target, rider: Rider | None = None) -> None:
        if target.login is None:
            raise TypeError("http_login target without a login check")
        self._check = target.login
        self._ctx = _context(target.login) if target.login.url.startswith("https:") else None
        self.last_status = 0  # HTTP status of the last run's response; 0 when none arrived

    async def probe(self, timeout: float) -> dict[str, float]:
        """Send the configured login request over a new connection; seconds per phase, or raise."""
        if self._ctx is not None:
            self._ctx.tls_started = None  # runs of one target never overlap
        self.last_status = 0
        return await _probe(self._check, self._ctx, timeout, self)

    def classify(self, exc: BaseException) -> LoginReason:
        """The login probe's own reason set."""
        return classify_login(exc)


async def _probe(
    check: LoginCheck, ctx: _TimedContext | None, timeout: float, seen: HttpLoginProbe
) -> dict[str, float]:
    import aiohttp  # noqa: PLC0415 - aiohttp's client (~10 MiB of RSS) only where a login probe is configured

    marks: dict[str, float] = {}

    async def on_conn_start(session: Any, tctx: SimpleNamespace, params: Any) -> None:
        marks.setdefault("conn_start", time.perf_counter())

    async def on_conn_end(session: Any, tctx: SimpleNamespace, params: Any) -> None:
        marks.setdefault("conn_end", time.perf_counter())

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(on_conn_start)
    trace.on_connection_create_end.append(on_conn_end)
    connector = aiohttp.TCPConnector(force_close=True, limit=1, ssl=ctx if ctx is not None else True)
    t0 = time.perf_counter()
    async with (
        aiohttp.ClientSession(
            connector=connector,
            trace_configs=[trace],
            timeout=aiohttp.ClientTimeout(total=timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        ) as session,
        session.request(
            check.method, check.url, allow_redirects=check.follow_redirects, **_request_parts(check)
        ) as resp,
    ):
        t_headers = time.perf_counter()
        seen.last_status = resp.status
        if resp.status not in check.expect_status:
            raise LoginFailed(LoginReason.STATUS, f"HTTP status {resp.status}")
        raw = await resp.content.read(MAX_BODY + 1) if check.expect_json_path else b""
        if check.expect_json_path:
            if len(raw) > MAX_BODY:
                raise LoginFailed(LoginReason.BODY_MISMATCH, "response body over 1 MiB")
            check_body(check, raw)
    t_end = time.perf_counter()
    conn_start = marks.get("conn_start", t0)
    conn_end = marks.get("conn_end", conn_start)
    phases = {"ttfb": max(0.0, t_headers - conn_end), "total": t_end - t0}
    if ctx is not None and ctx.tls_started is not None:
        phases["connect"] = max(0.0, ctx.tls_started - conn_start)
        phases["tls"] = max(0.0, conn_end - ctx.tls_started)
    else:
        phases["connect"] = conn_end - conn_start
    return phases
