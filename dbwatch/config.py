"""The one config schema, declared once: msgspec Structs whose fields, defaults and descriptions are the reference.

`dbwatch config schema` prints it as JSON Schema and README's config reference is generated from it
(`dbwatch config reference README.md`). Loading (`dbwatch.schema`) names the key path of every error and never a
value. Importing this module loads msgspec and PyYAML, never prometheus_client or the collectors.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta, field
from msgspec.structs import force_setattr, replace

from dbwatch import metrics, schema
from dbwatch.hook import wire
from dbwatch.schema import (
    ConfigError,
    Delay,
    Duration,
    Listen,
    Objective,
    ReadablePath,
    SecretRef,
    Size,
    Statuses,
    Struct,
    convert,
    parse_dsn,
    parse_duration,
    parse_listen,
    read_text,
    read_yaml,
)
from dbwatch.secret import DSN, REDACTED, Secret
from dbwatch.slocheck import slo_source_problem

__all__ = [
    "DEFAULT_LISTEN",
    "SLO",
    "AccessConfig",
    "CollectConfig",
    "Config",
    "ConfigError",
    "HookConfig",
    "LogConfig",
    "LogSource",
    "LoginCheck",
    "LogsConfig",
    "Target",
    "Window",
    "access_config",
    "from_mapping",
    "load",
    "parse_duration",
    "parse_listen",
    "read_yaml",
]

DEFAULT_PORT: Final = 9839
DEFAULT_MAX_SERIES: Final = 100_000
DEFAULT_LISTEN: Final = ("0.0.0.0", DEFAULT_PORT)  # noqa: S104 - a sidecar is scraped from outside its pod
DEFAULT_MAX_LABEL_VALUES: Final = 20
# The collectors' name -> target kind (dbwatch.collectors.COLLECTORS holds the classes; a test keeps both equal).
# Spelt here so validating a config loads no collector, store or prometheus_client.
COLLECTOR_KINDS: Final = {"pg_activity": "postgres", "pg_database": "postgres", "pgbouncer": "pgbouncer"}

TargetKind = Literal["postgres", "http_login", "pgbouncer"]
CollectorName = Literal["pg_activity", "pg_database", "pgbouncer"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH"]
SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
Name = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$",
        description="1-63 letters, digits, '_', '.', ':' or '-'; the label value",
        extra={"hint": "use 1-63 letters, digits, '_', '.', ':' or '-'"},
    ),
]


def _d(text: str, **kw: Any) -> Any:
    """A field's description (and bounds): one `Meta` per field, so the README reference comes from here."""
    return Meta(description=text, **kw)


class LogConfig(Struct, frozen=True):
    """How dbwatch writes its own logs."""

    level: Annotated[Literal["debug", "info", "warning", "error"], _d("Lowest level written.")] = "info"
    format: Annotated[Literal["json", "console"], _d("`json` (one object a line) or `console` (for people).")] = "json"


class Defaults(Struct, frozen=True):
    """Applied to every target that does not set its own."""

    interval: Annotated[Duration, _d("Probe interval.")] = 15.0
    timeout: Annotated[Duration, _d("Probe timeout (at most the interval).")] = 5.0


class AccessConfig(Struct, frozen=True):
    """How to read request latency from a log source's access records (`sources[].access`)."""

    format: Annotated[
        Literal["auto", "gunicorn", "json", "nginx"],
        _d("`auto`: JSON records by field names, else the gunicorn then the nginx line format."),
    ] = "auto"
    gunicorn_format: Annotated[
        str | None, _d("gunicorn's `access_log_format`; default: its default plus ` %(D)s`.")
    ] = None
    nginx_format: Annotated[str | None, _d("nginx `log_format`; default: ingress-nginx's `upstreaminfo`.")] = None
    nginx_time: Annotated[
        Literal["request_time", "upstream_response_time"],
        _d("Which nginx time is the duration (`upstream_response_time` falls back to `request_time` when `-`)."),
    ] = "request_time"
    duration_field: Annotated[
        str | None, _d("JSON: dotted field name of the duration; default: the first of a list of common names.")
    ] = None
    duration_unit: Annotated[
        Literal["s", "ms", "us", "ns"] | None, _d("JSON: the duration's unit; default: from the field name suffix.")
    ] = None
    path_field: Annotated[str | None, _d("JSON: the raw path (normalised); default: common names.")] = None
    route_field: Annotated[str | None, _d("JSON: a route template the app already logs (used as is).")] = None
    method_field: Annotated[str | None, _d("JSON: the method field; default: common names.")] = None
    status_field: Annotated[str | None, _d("JSON: the status field; default: common names.")] = None
    routes: Annotated[
        tuple[Annotated[str, Meta(pattern=r"^/", extra={"hint": "a route template starts with /"})], ...],
        _d("Templates matched first: `/api/orgs/{org}/members`, `/static/*`."),
    ] = ()
    max_routes: Annotated[int, _d("Distinct routes per source; later ones count as `__other__`.", ge=1, le=1000)] = 50

    def __post_init__(self) -> None:
        g = self.gunicorn_format
        if g is not None:
            if not any(a in g for a in ("%(D)s", "%(M)s", "%(L)s", "%(T)s")):
                raise ValueError(".gunicorn_format: needs a duration atom: %(D)s, %(M)s, %(L)s or %(T)s")
            if "%(r)s" not in g and not ("%(U)s" in g and "%(m)s" in g):
                raise ValueError(".gunicorn_format: needs %(r)s, or %(m)s and %(U)s")
            if "%(s)s" not in g:
                raise ValueError(".gunicorn_format: needs the status %(s)s")
        n = self.nginx_format
        if n is not None:
            if not re.search(r"\$(request_time|upstream_response_time)\b", n):
                raise ValueError(".nginx_format: needs $request_time or $upstream_response_time")
            if not re.search(r"\$request\b", n) and not re.search(r"\$(uri|request_uri)\b", n):
                raise ValueError(".nginx_format: needs $request, or $request_method and $uri")
            if not re.search(r"\$status\b", n):
                raise ValueError(".nginx_format: needs $status")


_URL_BAD_CHARS: Final = re.compile(r'[\s\x00-\x1f\x7f<>"{}|\\^`]')


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host; the message would echo the URL
        raise ValueError(".url: not a valid URL (expected http://host[:port]/path)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(".url: expected an http:// or https:// URL with a host")
    if _URL_BAD_CHARS.search(url):
        raise ValueError(".url: whitespace, control or unsafe characters in the URL; percent-encode them")
    if parts.username is not None or parts.password is not None:
        raise ValueError(".url: no credentials in the URL; use secret_fields or secret_headers")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(".url: port out of range") from None


_ANY: Final = object()


class ExpectJson(Struct, frozen=True):
    """A JSON value the login response must hold."""

    path: Annotated[str, _d("Dotted path into the response, e.g. `access_token` or `data.token`.")]
    equals: Annotated[Any, _d("The value expected there; default: any value.")] = field(default_factory=lambda: _ANY)

    def __post_init__(self) -> None:
        if not all(self.path.split(".")):
            raise ValueError(f".path: empty segment in {self.path!r}")


def _json_only(value: object, path: str) -> None:
    """Refuse what YAML can hold but JSON cannot carry (dates, sets, binary)."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _json_only(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _json_only(v, f"{path}.{k}")
    elif not (value is None or value is _ANY or isinstance(value, str | bool | int | float)):
        raise ValueError(f"{path}: {type(value).__name__} cannot be sent as JSON")


class LoginTLS(Struct, frozen=True):
    """TLS towards an https login URL."""

    ca_file: Annotated[ReadablePath | None, _d("CA certificates to verify the server with.")] = None
    insecure_skip_verify: Annotated[bool, _d("Skip verification (tests only).")] = False


class LoginCheck(Struct, frozen=True):
    """What an `http_login` target sends and expects (its keys sit in the target); secrets revealed only at send."""

    url: Annotated[str, _d("The login endpoint, http:// or https://, no credentials in it.")]
    method: Annotated[HttpMethod, _d("HTTP method.")] = "POST"
    headers: Annotated[dict[str, str], _d("Headers sent as given.")] = field(default_factory=dict)
    body: Annotated[dict[str, Any] | None, _d("The JSON object sent (static part).")] = None
    body_encoding: Annotated[Literal["json", "form"], _d("How the body is sent.")] = "json"
    secret_fields: Annotated[
        dict[str, SecretRef], _d("Body fields read from `{env: NAME}` or `{file: PATH}`, merged in at send time.")
    ] = field(default_factory=dict)
    secret_headers: Annotated[dict[str, SecretRef], _d("Headers read from `{env: NAME}` or `{file: PATH}`.")] = field(
        default_factory=dict
    )
    expect_status: Annotated[Statuses, _d("The status (or list) that is success.")] = (200,)
    expect_json: Annotated[ExpectJson | None, _d("A value the response body must hold.")] = None
    tls: Annotated[LoginTLS | None, _d("TLS settings for https.")] = None
    follow_redirects: Annotated[bool, _d("Follow redirects instead of judging the first response.")] = False

    def __post_init__(self) -> None:
        _check_url(self.url.strip())
        _json_only(self.body, ".body")
        if self.expect_json is not None:
            _json_only(self.expect_json.equals, ".expect_json.equals")

    @property
    def body_json(self) -> str | None:
        """The static body as canonical JSON."""
        return json.dumps(self.body, sort_keys=True) if self.body is not None else None

    @property
    def expect_json_path(self) -> tuple[str, ...]:
        return tuple(self.expect_json.path.split(".")) if self.expect_json else ()

    @property
    def expect_json_equals(self) -> str | None:
        """Canonical JSON of the expected value, when one is given."""
        e = self.expect_json
        return json.dumps(e.equals) if e is not None and e.equals is not _ANY else None

    @property
    def tls_ca_file(self) -> str | None:
        return self.tls.ca_file if self.tls else None

    @property
    def tls_insecure_skip_verify(self) -> bool:
        return self.tls.insecure_skip_verify if self.tls else False

    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value this check sends."""
        return (*self.secret_fields.values(), *self.secret_headers.values())


_NO_DSN: Final = DSN()

# DSNs and addresses are dataclasses, which msgspec reads as mappings: the file holds their text, which the
# section's __post_init__ parses (to mypy, the field holds the parsed value, as it does after loading).
if TYPE_CHECKING:
    DSNText = DSN
    AddressText = wire.Address
else:
    DSNText = str
    AddressText = str


class CollectConfig(Struct, frozen=True):
    """Database-wide collection for one target over its persistent monitoring connection (see coordination.py)."""

    collectors: Annotated[
        tuple[CollectorName, ...], _d("Collectors to run; default: every one that reads the target's kind; [] none.")
    ] = ()
    dsn: Annotated[
        DSNText | None,
        _d("The monitoring role's DSN; default: the target's (the probe's). One of dsn, dsn_env, dsn_file."),
    ] = None
    dsn_env: Annotated[str | None, _d("Environment variable holding the monitoring DSN.")] = None
    dsn_file: Annotated[str | None, _d("File holding the monitoring DSN.")] = None
    mode: Annotated[
        Literal["auto", "always", "never"],
        _d("`auto`: one instance per database collects (advisory lock); `always`: central; `never`: sidecar only."),
    ] = "auto"
    lock_target: Annotated[
        str | None, _d("pgbouncer: collected by whichever instance collects this postgres target.")
    ] = None
    # 0: unset; the target's __post_init__ fills them in.
    interval: Annotated[Duration, _d("Collection interval; default: the target's interval.")] = field(
        default_factory=float
    )
    budget: Annotated[Duration, _d("Time a collection may take; default: the smaller of timeout and interval.")] = (
        field(default_factory=float)
    )
    max_label_values: Annotated[int, _d("Distinct values per label from the database (top N, rest `other`).", ge=1)] = (
        DEFAULT_MAX_LABEL_VALUES
    )

    def __post_init__(self) -> None:
        force_setattr(self, "dsn", _dsn_source(self, None))
        if self.interval and self.budget > self.interval:
            raise ValueError(f".budget: must not exceed the collection interval ({self.interval:g}s)")


def _dsn_source(s: Target | CollectConfig, unset: object) -> DSN | None:
    """The DSN of dsn, dsn_env or dsn_file (exactly one); None when all three are unset, or already resolved."""
    given = [k for k in ("dsn", "dsn_env", "dsn_file") if getattr(s, k) is not None and getattr(s, k) is not unset]
    if len(given) != 1:
        if not given and unset is None:
            return None
        raise ValueError("give exactly one of dsn, dsn_env, dsn_file")
    key = given[0]
    value = getattr(s, key)
    force_setattr(s, "dsn_env", None)
    force_setattr(s, "dsn_file", None)
    if isinstance(value, DSN):
        return value  # already parsed (msgspec.structs.replace runs __post_init__ again)
    try:
        if key == "dsn":
            return parse_dsn(value)
        text = os.environ.get(value) if key == "dsn_env" else read_text(value)
        if text is None:
            raise ValueError(f"environment variable {value} is not set")  # noqa: TRY301 - re-raised with the key
        return parse_dsn(text)
    except ValueError as exc:
        raise ValueError(f".{key}: {exc}") from None


class OwnSessionsBy(Struct, frozen=True):
    """Match this pod's sessions by application_name instead of the probe's client address."""

    application_name: Annotated[
        str, Meta(min_length=1, max_length=63, pattern=r"^[ -~]+$", description="1-63 printable characters.")
    ]


# Keys a http_login target does not take (it has no DSN and no database-side collection).
_DATABASE_KEYS: Final = ("dsn", "dsn_env", "dsn_file", "sslmode", "sslrootcert", "sslcert", "sslkey", "own_sessions")


class Target(Struct, frozen=True):
    """One monitored database (or login endpoint), named by the user; the name is its `target` label."""

    # A http_login target writes its LoginCheck keys inline (url:, method:, ...), not under `login:`.
    __inline__: ClassVar = ("login", "kind", "http_login")

    name: Annotated[Name, _d("The `target` label; you choose it, the DSN never becomes a label.")]
    kind: Annotated[TargetKind, _d("What is probed.")] = "postgres"
    dsn: Annotated[
        DSNText,
        _d(
            "postgresql://, postgresql+asyncpg://, postgresql+psycopg:// URL or libpq key=value."
            " One of dsn, dsn_env, dsn_file."
        ),
    ] = field(default_factory=lambda: _NO_DSN)
    dsn_env: Annotated[str | None, _d("Environment variable holding the DSN.")] = None
    dsn_file: Annotated[str | None, _d("File holding the DSN (a mounted Secret).")] = None
    interval: Annotated[Duration, _d("Probe interval; default: defaults.interval.")] = 15.0
    timeout: Annotated[Duration, _d("Probe timeout, at most the interval; default: defaults.timeout.")] = 5.0
    critical: Annotated[bool, _d("DbwatchTargetDown pages when its probe fails (false: no page).")] = True
    stale_after: Annotated[
        Duration, _d("How fresh a gate_readiness target must be; default: 2 x interval + timeout.")
    ] = field(default_factory=float)  # 0: unset, resolved in __post_init__
    gate_readiness: Annotated[
        bool, _d("/readyz (so the pod's readiness) fails while this target is down; read README first.")
    ] = False
    own_sessions: Annotated[
        bool | OwnSessionsBy | None,
        _d("postgres: also report this pod's sessions (by client address, or `{application_name: NAME}`)."),
    ] = None
    sslmode: Annotated[SSLMode | None, _d("libpq sslmode, added to the DSN(s).")] = None
    sslrootcert: Annotated[ReadablePath | None, _d("CA certificate file.")] = None
    sslcert: Annotated[ReadablePath | None, _d("Client certificate file.")] = None
    sslkey: Annotated[ReadablePath | None, _d("Client key file.")] = None
    collect: Annotated[CollectConfig, _d("Database-wide metrics over one persistent monitoring session.")] = field(
        default_factory=CollectConfig
    )
    login: Annotated[LoginCheck | None, _d("kind http_login: the check (its keys written in the target).")] = None

    def __post_init__(self) -> None:
        if self.kind == "http_login":
            self._check_login()
        else:
            self._resolve_database()
        if self.timeout > self.interval:
            raise ValueError(f".timeout: must not exceed interval ({self.interval:g}s)")
        if not self.stale_after:
            force_setattr(self, "stale_after", 2 * self.interval + self.timeout)
        c = self.collect
        interval = c.interval or self.interval
        if not c.interval or not c.budget:
            force_setattr(
                self, "collect", replace(c, interval=interval, budget=c.budget or min(self.timeout, interval))
            )

    def _check_login(self) -> None:
        for key in _DATABASE_KEYS:
            value = getattr(self, key)
            if value is not None and value is not _NO_DSN:
                raise ValueError(f".{key}: unknown key")
        if self.collect != CollectConfig(interval=self.collect.interval, budget=self.collect.budget):
            raise ValueError(".collect: unknown key")

    def _resolve_database(self) -> None:
        if self.login is not None:
            raise ValueError(".login: unknown key")
        tls = {k: v for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if (v := getattr(self, k))}
        dsn = _dsn_source(self, _NO_DSN)
        if dsn is not None:
            force_setattr(self, "dsn", dsn.with_params(**tls))
        c = self.collect
        if c.dsn is not None:
            if self.kind != "postgres":
                raise ValueError(".collect: dsn, dsn_env, dsn_file only for postgres targets")
            force_setattr(c, "dsn", c.dsn.with_params(**tls))
        for i, name in enumerate(c.collectors):
            if COLLECTOR_KINDS[name] != self.kind:
                raise ValueError(
                    f".collect.collectors[{i}]: {name} reads a {COLLECTOR_KINDS[name]} target, not {self.kind}"
                )
        if len(set(c.collectors)) != len(c.collectors):
            raise ValueError(".collect.collectors: a collector is listed twice")
        if c.lock_target is not None and self.kind != "pgbouncer":
            raise ValueError(".collect.lock_target: only for pgbouncer targets (a postgres target has its own lock)")
        if self.own_sessions is None:
            force_setattr(self, "own_sessions", self.kind == "postgres")
        elif self.own_sessions and self.kind != "postgres":
            raise ValueError(".own_sessions: only for postgres targets")

    @property
    def own_sessions_application_name(self) -> str | None:
        """Match this pod's sessions by this application_name instead of the client address."""
        return self.own_sessions.application_name if isinstance(self.own_sessions, OwnSessionsBy) else None


class HookConfig(Struct, frozen=True):
    """Where the sidecar receives the in-app hook's datagrams, and the bounds it applies to them."""

    listen: Annotated[AddressText, _d("`host:port` (UDP) or `unix:/path` (a datagram socket).")] = field(
        default_factory=lambda: wire.parse_address(wire.DEFAULT_ADDR)
    )
    token: Annotated[Secret | None, _d("Shared token the app's hook sends; one of token, token_file.")] = None
    token_file: Annotated[str | None, _d("File holding the token.")] = None
    worker_expiry: Annotated[Duration, _d("A worker silent this long is forgotten.")] = 60.0
    max_datagram_bytes: Annotated[int, _d("Largest datagram read.", ge=512, le=65507)] = 65507
    max_apps: Annotated[int, _d("Distinct apps.", ge=1, le=1000)] = 10
    max_engines: Annotated[int, _d("Distinct engines per app.", ge=1, le=1000)] = 20
    max_workers: Annotated[int, _d("Live workers per app.", ge=1, le=10000)] = 256
    max_routes: Annotated[int, _d("Distinct routes per app.", ge=1, le=10000)] = 200
    max_label_values: Annotated[int, _d("Distinct values per other label.", ge=1, le=1000)] = 50
    max_worker_series: Annotated[
        int, _d("Series one worker may report (its last totals, to turn them into increments).", ge=100, le=1_000_000)
    ] = 2000
    max_tracked_series: Annotated[
        int, _d("The same, summed over every live worker of every app.", ge=100, le=10_000_000)
    ] = 50_000

    def __post_init__(self) -> None:
        if isinstance(self.listen, str):
            try:
                force_setattr(self, "listen", wire.parse_address(self.listen))
            except wire.AddressError as exc:
                raise ValueError(f".listen: {exc}") from None
        if self.token is not None and self.token_file is not None:
            raise ValueError("give at most one of token, token_file")
        if self.token_file is not None:
            try:
                text = read_text(self.token_file).strip()
            except ValueError as exc:
                raise ValueError(f".token_file: {exc}") from None
            if not text:
                raise ValueError(f".token_file: {self.token_file} is empty")
            force_setattr(self, "token", Secret(text))
            force_setattr(self, "token_file", None)
        if self.token is not None and not self.token:
            force_setattr(self, "token", None)


class Window(Struct, frozen=True):
    """One multi-window burn-rate alert: both windows over `burn_rate` times the budget, for `for`."""

    long: Annotated[Duration, _d("Long window.")]
    short: Annotated[Duration, _d("Short window, shorter than long.")]
    burn_rate: Annotated[float, _d("Times the error budget's rate.", gt=0)]
    severity: Annotated[Literal["page", "ticket"], _d("Alert severity.")]
    for_: Annotated[Delay, _d("Alert `for:`; 0 fires at once.")] = field(default=0.0, name="for")

    def __post_init__(self) -> None:
        if self.short >= self.long:
            raise ValueError(".short: must be shorter than long")


# The SRE workbook's multiwindow, multi-burn-rate table (chapter 5, "Alerting on SLOs").
DEFAULT_WINDOWS: Final = (
    Window(long=3600, short=300, burn_rate=14.4, severity="page", for_=120),
    Window(long=21600, short=1800, burn_rate=6.0, severity="page", for_=900),
    Window(long=86400, short=7200, burn_rate=3.0, severity="ticket", for_=3600),
    Window(long=259200, short=21600, burn_rate=1.0, severity="ticket", for_=10800),
)


class SLO(Struct, frozen=True):
    """A service-level objective `dbwatch rules` turns into recording and burn-rate alerting rules."""

    name: Annotated[
        str,
        Meta(
            pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
            description="1-63 lower-case letters, digits, '_' or '-'.",
            extra={"hint": "use 1-63 lower-case letters, digits, '_' or '-'"},
        ),
    ]
    sli: Annotated[Literal["availability", "latency"], _d("What is counted as good.")]
    source: Annotated[
        Literal["access", "probe"], _d("`access`: the access-log histogram; `probe`: a login probe target.")
    ] = field(name="from")
    objective: Annotated[Objective, _d("A percentage like 99.9 (or a ratio like 0.999), below 100.")]
    threshold: Annotated[Duration | None, _d("latency: seconds, a bucket boundary of the histogram.")] = None
    log_source: Annotated[str | None, _d("access: a log source's name; default: any.")] = field(
        default=None, name="source"
    )
    route: Annotated[str | None, _d("access: the route template.")] = None
    method: Annotated[HttpMethod | None, _d("access: the method.")] = None
    target: Annotated[
        str | None, _d("probe: the probed target; access: the database the path depends on (inhibition).")
    ] = None
    period: Annotated[Duration, _d("The SLO period.")] = 30 * 86400.0
    min_events: Annotated[int, _d("Fewer requests than this in a long window never page.", ge=0)] = 30
    windows: Annotated[tuple[Window, ...], _d("Burn-rate alerts.", min_length=1)] = DEFAULT_WINDOWS
    description: Annotated[str, _d("Shown in the alerts.")] = ""

    def __post_init__(self) -> None:
        if self.sli == "latency" and self.threshold is None:
            raise ValueError(".threshold: missing (a latency SLO counts requests faster than it)")
        if self.sli == "availability" and self.threshold is not None:
            raise ValueError(".threshold: only for sli: latency")
        if self.source == "probe":
            for key, value in (("source", self.log_source), ("route", self.route), ("method", self.method)):
                if value is not None:
                    raise ValueError(f".{key}: only for from: access")
            if self.target is None:
                raise ValueError(".target: missing (the probe target whose results are the SLI)")
        if self.threshold is not None:
            spec = metrics.HTTP_REQUEST_DURATION if self.source == "access" else metrics.PROBE_DURATION
            if self.threshold not in spec.buckets:
                bounds = ", ".join(f"{b:g}" for b in spec.buckets)
                raise ValueError(
                    f".threshold: {self.threshold:g}s is not a bucket boundary of {spec.name} ({bounds}); "
                    "a threshold between boundaries cannot be counted exactly"
                )
        for i, w in enumerate(self.windows):
            if w.long > self.period:
                raise ValueError(f".windows[{i}].long: longer than the period")


class LogSource(Struct, frozen=True):
    """One log source: a path or glob of files read in one format; its name is the `source` label."""

    name: Annotated[Name, _d("The `source` label.")]
    path: Annotated[str, _d("A file or glob, e.g. /var/log/app/*.log.")]
    format: Annotated[Literal["auto", "plain", "json", "cri", "docker"], _d("Record format; auto detects it.")] = "auto"
    app_roots: Annotated[tuple[str, ...], _d("Folders of your code (frames there are the app's); default: logs'.")] = ()
    app_packages: Annotated[tuple[str, ...], _d("Top-level packages of your code; default: logs'.")] = ()
    access: Annotated[AccessConfig | None, _d("Read request latency from this source's access records.")] = None
    target: Annotated[str | None, _d("The database target the app behind this log uses (alerts name it).")] = None
    follow_symlinks: Annotated[
        bool, _d("Read a matched symlink's target (off: a link planted in the folder is skipped).")
    ] = False

    def __post_init__(self) -> None:
        force_setattr(self, "app_roots", tuple(os.path.abspath(r) for r in self.app_roots))


class LogsConfig(Struct, frozen=True):
    """Log watching: sources, where positions are kept, the caps that bound memory and label values."""

    sources: Annotated[tuple[LogSource, ...], _d("The log sources.")] = ()
    state_dir: Annotated[
        str | None, _d("Writable folder for read positions; default: $DBWATCH_STATE_DIR (the image sets it).")
    ] = None
    start_at: Annotated[Literal["beginning", "end"], _d("Where a file never seen before is read from.")] = "beginning"
    poll_interval: Annotated[Duration, _d("How often files are checked.")] = 1.0
    app_roots: Annotated[tuple[str, ...], _d("Folders of your code, for every source.")] = ()
    app_packages: Annotated[tuple[str, ...], _d("Top-level packages of your code, for every source.")] = ()
    max_line_bytes: Annotated[Size, _d("Longest line kept (the rest is cut and counted).")] = 1 << 20
    max_record_bytes: Annotated[Size, _d("Largest multi-line record kept.")] = 1 << 20
    max_files: Annotated[int, _d("Files followed at once.", ge=1)] = 1024
    max_locations: Annotated[int, _d("Distinct code locations (label values).", ge=1)] = 50
    max_exceptions: Annotated[int, _d("Distinct exception classes (label values).", ge=1)] = 50

    def __post_init__(self) -> None:
        force_setattr(self, "app_roots", tuple(os.path.abspath(r) for r in self.app_roots))
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sources):
            if s.name in seen:
                raise ValueError(f".sources[{i}].name: duplicate name {s.name!r} (also sources[{seen[s.name]}])")
            seen[s.name] = i
        state_dir = self.state_dir
        if state_dir is None and self.sources:
            state_dir = os.environ.get("DBWATCH_STATE_DIR") or None
        if state_dir is not None and not (os.path.isdir(state_dir) and os.access(state_dir, os.W_OK | os.X_OK)):
            raise ValueError(f".state_dir: {state_dir} is not a writable directory")
        force_setattr(self, "state_dir", state_dir)


class Config(Struct, frozen=True):
    """The whole validated configuration."""

    listen: Annotated[
        Listen,
        _d("/metrics, /healthz, /readyz (overridden by --listen).", extra_json_schema={"default": "0.0.0.0:9839"}),
    ] = field(default_factory=lambda: DEFAULT_LISTEN)
    log: Annotated[LogConfig, _d("dbwatch's own logs.")] = field(default_factory=LogConfig)
    defaults: Annotated[Defaults, _d("Applied to every target that does not set its own.")] = field(
        default_factory=Defaults
    )
    targets: Annotated[tuple[Target, ...], _d("Databases and login endpoints to probe.")] = ()
    hook: Annotated[HookConfig | None, _d("Receive the in-app hook's reports; absent: off.")] = None
    slos: Annotated[tuple[SLO, ...], _d("Service-level objectives for `dbwatch rules`.")] = ()
    logs: Annotated[LogsConfig, _d("Log watching.")] = field(default_factory=LogsConfig)
    max_series: Annotated[
        int, _d("Series /metrics may hold from the store (a histogram label set: buckets + 3).", ge=100, le=10_000_000)
    ] = DEFAULT_MAX_SERIES

    def __post_init__(self) -> None:
        by_name: dict[str, int] = {}
        for i, t in enumerate(self.targets):
            if t.name in by_name:
                raise ValueError(f".targets[{i}].name: duplicate name {t.name!r} (also targets[{by_name[t.name]}])")
            by_name[t.name] = i
        for i, t in enumerate(self.targets):
            lock = t.collect.lock_target
            lead = self.targets[by_name[lock]] if lock in by_name else None
            if lock is not None and (
                lead is None or lead.kind != "postgres" or not lead.collect.collectors or lead.collect.mode == "never"
            ):
                raise ValueError(f".targets[{i}].collect.lock_target: no postgres target named {lock!r} that collects")
        seen: set[str] = set()
        for i, slo in enumerate(self.slos):
            if slo.name in seen:
                raise ValueError(f".slos[{i}].name: duplicate name {slo.name!r}")
            seen.add(slo.name)
            if slo.target is not None and slo.target not in by_name:
                raise ValueError(f".slos[{i}].target: no target named {slo.target!r}")
        for i, src in enumerate(self.logs.sources):
            if src.target is not None and src.target not in by_name:
                raise ValueError(f".logs.sources[{i}].target: no target named {src.target!r}")
        if problem := slo_source_problem(self.slos, self.logs.sources, self.hook is not None):
            raise ValueError("." + problem)  # the message starts with its key path

    def secrets(self) -> frozenset[str]:
        """Every secret value in the config, for scrubbing output."""
        out: set[str] = set()

        def keep(leaf: object) -> object:
            if isinstance(leaf, Secret) and leaf:
                out.add(leaf.reveal())
            elif isinstance(leaf, DSN) and leaf.password:
                out.add(leaf.password.reveal())
            return None

        _plain(self, keep)
        return frozenset(out)

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked, for `check-config`."""

        def show(leaf: object) -> object:
            if isinstance(leaf, Secret):
                return REDACTED
            if isinstance(leaf, DSN):
                return None if leaf is _NO_DSN else str(leaf)
            if isinstance(leaf, wire.Address):
                return str(leaf)
            return None  # ExpectJson.equals unset: any value

        data = _drop_unset(_plain(self, show))
        assert isinstance(data, dict)
        data["listen"] = f"{self.listen[0]}:{self.listen[1]}"
        return data


def _drop_unset(data: object) -> object:
    """Plain data without the keys left unset (null)."""
    if isinstance(data, dict):
        return {k: _drop_unset(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_unset(v) for v in data]
    return data


def _plain(obj: object, leaf: Callable[[object], object]) -> object:
    """A Struct tree as YAML-shaped plain data; `leaf` turns every other object (DSN, Secret, ...) into data."""
    if isinstance(obj, msgspec.Struct):
        return {f.encode_name: _plain(getattr(obj, f.name), leaf) for f in msgspec.structs.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v, leaf) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v, leaf) for k, v in obj.items()}
    if isinstance(obj, bool | None):
        return obj
    if isinstance(obj, float | int | str) and type(obj) not in (float, int, str):
        return type(obj).__mro__[1](obj)  # Duration, Size, ... as the plain number or string
    return obj if isinstance(obj, float | int | str) else leaf(obj)


def _inherit(data: object) -> object:
    """Defaults that come from other keys: `defaults:` into each target, a target's kind into its collectors."""
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        return data
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    targets: list[object] = []
    for raw_t in data["targets"]:
        t = raw_t
        if isinstance(t, dict):
            t = {**{k: v for k, v in defaults.items() if k in ("interval", "timeout")}, **t}
            kind = t.get("kind") or "postgres"
            collect = t.get("collect") or {}
            if kind != "http_login" and isinstance(collect, dict) and "collectors" not in collect:
                t["collect"] = {**collect, "collectors": [n for n, k in COLLECTOR_KINDS.items() if k == kind]}
        targets.append(t)
    return {**data, "targets": targets}


def from_mapping(raw: object) -> Config:
    """Validate already-parsed YAML into a Config."""
    config: Config = convert(raw, Config, prepare=_inherit)
    return config


def access_config(raw: object, path: str) -> AccessConfig:
    """Validate an `access:` mapping (of a log source) into an AccessConfig."""
    access: AccessConfig = convert(raw, AccessConfig, path)
    return access


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError with the key path."""
    return from_mapping(read_yaml(path))


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (`dbwatch config schema`)."""
    return schema.json_schema(Config, "dbwatch config")
