"""`--web.config.file`: TLS and basic auth for the HTTP endpoints, in the Prometheus exporter-toolkit format.

The file has the shape every Prometheus exporter reads (`tls_server_config`, `http_server_config`,
`basic_auth_users` with bcrypt hashes); keys that exporter-toolkit knows but dbwatch does not implement are
rejected by name rather than silently ignored. One dbwatch key, `dbwatch.open_health_endpoints` (default true),
keeps /healthz and /readyz reachable without credentials or a client certificate, so the kubelet can probe them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import structlog
from msgspec import Meta

from dbwatch import schema
from dbwatch.httpd import Handler, Middleware, Request, Response
from dbwatch.schema import BcryptHash, ConfigError, ReadablePath, Struct, convert, read_yaml

__all__ = [
    "BCRYPT_MAX_BYTES",
    "HEALTH_PATHS",
    "AuthResult",
    "TLSConfig",
    "TLSReloader",
    "WebConfig",
    "json_schema",
    "load",
]

log = structlog.get_logger("dbwatch.webconfig")

HEALTH_PATHS: Final = frozenset({"/healthz", "/readyz"})

# exporter-toolkit's client_auth_type values dbwatch implements, and the TLS verify mode each maps to.
CLIENT_AUTH_TYPES: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go accepts these, but a client certificate nobody verifies proves nothing; Python's ssl cannot do it either.
_UNVERIFIED_AUTH_TYPES: Final = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit keys dbwatch does not implement: named in the error instead of "unknown key".
_TOOLKIT_ONLY: Final = {
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
        "client_allowed_sans",
    ),
    "http_server_config": (),
}
_UNAUTHORIZED_BODY: Final = "Unauthorized\n"
_AUTH_CACHE_SIZE: Final = 1024  # verified (user, password) pairs, good and bad, kept as HMACs
BCRYPT_MAX_BYTES: Final = 72  # bcrypt reads at most this much of a password


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """`tls_server_config`: the server's certificate and key, and how client certificates are checked."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = ""


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The validated web config; empty means plain HTTP with no authentication."""

    tls: TLSConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    open_health_endpoints: bool = True
    # How often the certificate files are checked for a rotation (not a file key; exporter-toolkit re-reads them too).
    reload_interval: float = 10.0

    @property
    def requires_client_cert(self) -> bool:
        return self.tls is not None and self.tls.client_auth_type == "RequireAndVerifyClientCert"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context, or None for plain HTTP; raises ConfigError naming the key."""
        if self.tls is None:
            return None
        t = self.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[t.min_version]
        if t.max_version:
            ctx.maximum_version = TLS_VERSIONS[t.max_version]
        try:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"tls_server_config.cert_file: cannot load certificate and key: {_why(exc)}") from None
        if t.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=t.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"tls_server_config.client_ca_file: cannot load CA certificates: {_why(exc)}"
                ) from None
        mode = CLIENT_AUTH_TYPES[t.client_auth_type]
        if mode is ssl.CERT_REQUIRED and self.open_health_endpoints:
            # The kubelet has no client certificate: ask for one in the handshake, require it per path below.
            mode = ssl.CERT_OPTIONAL
        ctx.verify_mode = mode
        return ctx

    def reloader(self, ctx: ssl.SSLContext | None) -> TLSReloader | None:
        """A watcher that loads rotated certificate files into `ctx`, or None without TLS."""
        return TLSReloader(self.tls, ctx) if self.tls is not None and ctx is not None else None

    def middleware(self, on_busy: Callable[[], None] | None = None) -> Middleware:
        """Middleware enforcing basic auth and a verified client certificate, and adding headers.

        A request whose credentials are not cached and find the bcrypt queue full gets 429 at once (`on_busy`
        is called, for counting).
        """
        checker = _PasswordChecker(self.users)
        need_cert = self.requires_client_cert
        open_health = self.open_health_endpoints
        headers = self.headers

        async def guard(request: Request, handler: Handler) -> Response:
            if not (open_health and request.path in HEALTH_PATHS):
                if need_cert and not request.peer_cert:
                    return _unauthorized(headers, basic=False)
                if checker.enabled:
                    result = await checker.check(request.header("Authorization"))
                    if result is AuthResult.BUSY:
                        if on_busy is not None:
                            on_busy()
                        return _busy(headers)
                    if result is AuthResult.DENIED:
                        return _unauthorized(headers, basic=True)
            resp = await handler(request)
            resp.headers.extend(headers)
            return resp

        return guard

    def describe(self) -> dict[str, Any]:
        """What is enabled, for the start-up log line; never a hash or a path's content."""
        return {
            "tls": self.tls is not None,
            "client_auth": self.tls.client_auth_type if self.tls else "NoClientCert",
            "basic_auth_users": len(self.users),
            "open_health_endpoints": self.open_health_endpoints,
        }


class TLSReloader:
    """Loads a rotated certificate, key or client CA into the live context, after checking them on a fresh one."""

    def __init__(self, tls: TLSConfig, ctx: ssl.SSLContext) -> None:
        self._tls = tls
        self._ctx = ctx
        self._stamp = self._stat()

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in (self._tls.cert_file, self._tls.key_file, self._tls.client_ca_file):
            try:
                st = os.stat(path) if path else None  # follows the ..data symlink a Kubernetes Secret volume swaps
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_ino, st.st_size) if st else None)
        return tuple(out)

    def check(self) -> bool:
        """Reload if any file changed; True when the live context now holds the new files."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        t = self._tls
        try:
            trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # a half-written pair never reaches the live context
            trial.load_cert_chain(t.cert_file, t.key_file)
            if t.client_ca_file:
                trial.load_verify_locations(cafile=t.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            log.warning("web_tls_reload_failed", reason=_why(exc))
            return False
        self._ctx.load_cert_chain(t.cert_file, t.key_file)
        if t.client_ca_file:
            self._ctx.load_verify_locations(cafile=t.client_ca_file)  # adds; removing a CA needs a restart
        log.info("web_tls_reloaded")
        return True

    async def run(self, interval: float) -> None:
        """Check every `interval` seconds until cancelled (owned by the daemon)."""
        while True:
            await asyncio.sleep(interval)
            self.check()


def _busy(headers: tuple[tuple[str, str], ...]) -> Response:
    resp = Response.text(429, "Too many authentication attempts in progress\n")
    resp.headers += [("Retry-After", "1"), *headers]
    return resp


def _unauthorized(headers: tuple[tuple[str, str], ...], *, basic: bool) -> Response:
    resp = Response.text(401, _UNAUTHORIZED_BODY)
    if basic:
        resp.headers.append(("WWW-Authenticate", 'Basic realm="dbwatch"'))
    resp.headers.extend(headers)
    return resp


class AuthResult(enum.Enum):
    """What a basic-auth check found: the credentials are good, bad, or there was no room to check them now."""

    OK = "ok"
    DENIED = "denied"
    BUSY = "busy"


class _PasswordChecker:
    """bcrypt checks off the event loop, bounded: `workers` at a time, `queue` more waiting, the rest told BUSY.

    Verified pairs, good and bad, are cached as HMACs under a per-process key (never the password), so a scraper's
    every scrape after the first, and a repeated wrong password, cost no bcrypt. A password is checked on its first
    72 bytes, as bcrypt defines it (Go's `bcrypt.CompareHashAndPassword` in exporter-toolkit, `htpasswd -B` and
    bcrypt before 4.1 all use only those); pyca/bcrypt 4.1+ raises on longer input instead.
    """

    def __init__(self, users: Mapping[str, bytes], *, workers: int = 1, queue: int = 4) -> None:
        self._users = dict(users)
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._slots = asyncio.Semaphore(workers)
        self._room = workers + queue  # checks running or waiting; one more is BUSY
        self._pending = 0
        # Checked when the user is unknown, at the same cost, so a wrong user name takes as long as a wrong password.
        self._dummy = b""
        if self._users:
            import bcrypt  # noqa: PLC0415 - loaded only with basic_auth_users, like every bcrypt use below

            cost = int(next(iter(self._users.values()))[4:6])
            self._dummy = bcrypt.hashpw(b"dbwatch-no-such-user", bcrypt.gensalt(rounds=cost))

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def check(self, header: str) -> AuthResult:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return AuthResult.DENIED
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult.DENIED
        if not sep:
            return AuthResult.DENIED
        hashed = self._users.get(user)
        secret = password.encode()[:BCRYPT_MAX_BYTES]
        name = user.encode()
        digest = hmac.new(self._key, len(name).to_bytes(4, "big") + name + secret, hashlib.sha256).digest()
        known = self._cache.get(digest)
        if known is not None:
            self._cache.move_to_end(digest)
            return AuthResult.OK if known else AuthResult.DENIED
        import bcrypt  # noqa: PLC0415

        if self._pending >= self._room:
            return AuthResult.BUSY
        self._pending += 1
        try:
            async with self._slots:
                ok = await asyncio.to_thread(bcrypt.checkpw, secret, hashed or self._dummy)
        finally:
            self._pending -= 1
        ok = ok and hashed is not None
        self._cache[digest] = ok
        while len(self._cache) > _AUTH_CACHE_SIZE:
            self._cache.popitem(last=False)
        return AuthResult.OK if ok else AuthResult.DENIED


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or type(exc).__name__)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]


class TLSFile(Struct, frozen=True):
    """`tls_server_config`: the server's certificate and key, and how client certificates are checked."""

    cert_file: Annotated[ReadablePath, Meta(description="Server certificate (PEM); re-read when it changes.")]
    key_file: Annotated[ReadablePath, Meta(description="Server key (PEM).")]
    client_ca_file: Annotated[ReadablePath, Meta(description="CA certificates that sign client certificates.")] = ""
    client_auth_type: Annotated[ClientAuth, Meta(description="Whether a client certificate is asked for.")] = (
        "NoClientCert"
    )
    min_version: Annotated[TLSVersion, Meta(description="Lowest TLS version.")] = "TLS12"
    max_version: Annotated[TLSVersion | None, Meta(description="Highest TLS version; default: the newest.")] = None

    def __post_init__(self) -> None:
        auth = self.client_auth_type
        if self.client_ca_file and auth == "NoClientCert":
            raise ValueError(".client_ca_file: given without a client_auth_type that verifies")
        if auth != "NoClientCert" and not self.client_ca_file:
            raise ValueError(f".client_ca_file: missing (needed by client_auth_type {auth})")
        if self.max_version and TLS_VERSIONS[self.max_version] < TLS_VERSIONS[self.min_version]:
            raise ValueError(".max_version: lower than min_version")


class HTTPFile(Struct, frozen=True):
    """`http_server_config`."""

    http2: Annotated[
        bool, Meta(description="Accepted so a shared exporter web config loads; dbwatch speaks HTTP/1.1.")
    ] = True
    headers: Annotated[dict[str, str], Meta(description="Headers added to every response.")] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for name, value in self.headers.items():
            if not re.match(r"^[A-Za-z0-9-]+$", name) or "\n" in value or "\r" in value:
                raise ValueError(f".headers.{name}: not a valid header")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f".headers.{name}: dbwatch sets this header itself")


class DbwatchFile(Struct, frozen=True):
    """`dbwatch`: dbwatch's own keys."""

    open_health_endpoints: Annotated[
        bool, Meta(description="/healthz and /readyz need no credentials or client certificate (kubelet probes).")
    ] = True


class WebFile(Struct, frozen=True):
    """The web config file (Prometheus exporter-toolkit format)."""

    tls_server_config: Annotated[TLSFile | None, Meta(description="Serve HTTPS.")] = None
    http_server_config: Annotated[HTTPFile, Meta(description="HTTP settings.")] = msgspec.field(
        default_factory=HTTPFile
    )
    basic_auth_users: Annotated[
        dict[str, BcryptHash], Meta(description='User name -> bcrypt hash (`htpasswd -nBC 10 ""`).')
    ] = msgspec.field(default_factory=dict)
    dbwatch: Annotated[DbwatchFile, Meta(description="dbwatch's own keys.")] = msgspec.field(
        default_factory=DbwatchFile
    )

    def __post_init__(self) -> None:
        if any(":" in user or not user for user in self.basic_auth_users):
            raise ValueError(".basic_auth_users: a user name must be non-empty and must not contain ':'")


_OWN_HEADERS: Final = ("authorization", "www-authenticate", "content-type", "content-length", "content-encoding")


def _refuse_toolkit_only(raw: object) -> object:
    """Name exporter-toolkit keys dbwatch does not implement, instead of calling them unknown."""
    tls = raw.get("tls_server_config") if isinstance(raw, dict) else None
    if isinstance(tls, dict):
        for key in _TOOLKIT_ONLY["tls_server_config"]:
            if key in tls:
                raise ConfigError(f"tls_server_config.{key}: exporter-toolkit option not supported by dbwatch")
        auth = tls.get("client_auth_type")
        if auth in _UNVERIFIED_AUTH_TYPES:
            raise ConfigError(
                f"tls_server_config.client_auth_type: {auth} is not supported (an unverified client certificate "
                "proves nothing); use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )
    return raw


def json_schema() -> dict[str, Any]:
    """The web config file's JSON Schema (`dbwatch config schema --web`)."""
    return schema.json_schema(WebFile, "dbwatch web config")


def from_mapping(raw: object) -> WebConfig:
    """Validate an already-parsed web config."""
    f: WebFile = convert(raw, WebFile, prepare=_refuse_toolkit_only)
    t = f.tls_server_config
    tls = (
        TLSConfig(t.cert_file, t.key_file, t.client_ca_file, t.client_auth_type, t.min_version, t.max_version or "")
        if t is not None
        else None
    )
    web_config = WebConfig(
        tls=tls,
        users=dict(f.basic_auth_users),
        headers=tuple(f.http_server_config.headers.items()),
        open_health_endpoints=f.dbwatch.open_health_endpoints,
    )
    web_config.ssl_context()  # load certificate, key and CA now, so a bad one is a config error at start-up
    return web_config


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file; errors name the file and the key path, never a value."""
    raw = read_yaml(path, "web config")
    try:
        return from_mapping(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
