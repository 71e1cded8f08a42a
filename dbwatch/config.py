"""The one config schema: frozen dataclasses, YAML loading, validation that names the key path."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

from dbwatch import metrics
from dbwatch.collectors import COLLECTORS, defaults_for
from dbwatch.hook import wire
from dbwatch.secret import DSN, REDACTED, DSNError, Secret
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
    "load",
    "parse_duration",
]

DEFAULT_PORT: Final = 9839
DEFAULT_MAX_SERIES: Final = 100_000
DEFAULT_LISTEN: Final = ("0.0.0.0", DEFAULT_PORT)  # noqa: S104 - a sidecar is scraped from outside its pod
TARGET_KINDS: Final = ("postgres", "http_login", "pgbouncer")
COLLECT_MODES: Final = ("auto", "always", "never")
DEFAULT_MAX_LABEL_VALUES: Final = 20
HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH")
BODY_ENCODINGS: Final = ("json", "form")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console")
SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """A config problem; the message starts with the key path and never contains a secret."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How dbwatch writes its own logs."""

    level: str = "info"
    format: str = "json"


ACCESS_FORMATS: Final = ("auto", "gunicorn", "json", "nginx")
DURATION_UNITS: Final = ("s", "ms", "us", "ns")


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """How to read request latency from a log source's access records (`sources[].access`)."""

    format: str = "auto"  # auto: JSON records by field names, else the gunicorn then the nginx line format
    gunicorn_format: str | None = None  # gunicorn's access_log_format; None: its default plus ` %(D)s`
    nginx_format: str | None = None  # nginx log_format; None: ingress-nginx's default `upstreaminfo`
    nginx_time: str = "request_time"  # or upstream_response_time (falls back to request_time when `-`)
    duration_field: str | None = None  # JSON: dotted field name; None: the first of a list of common names
    duration_unit: str | None = None  # JSON: s, ms, us, ns; None: from the field name suffix, else seconds
    path_field: str | None = None  # JSON: the raw path (normalised); None: common names
    route_field: str | None = None  # JSON: a route template the app already logs (used as is)
    method_field: str | None = None
    status_field: str | None = None
    routes: tuple[str, ...] = ()  # templates matched first: /api/orgs/{org}/members, /static/*
    max_routes: int = 50  # distinct routes per source; later ones count as `__other__`


@dataclass(frozen=True, slots=True)
class LoginCheck:
    """What an `http_login` target sends and expects; secret values are `Secret`s, revealed only at send."""

    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    body_json: str | None = None  # the static part of the body, canonical JSON of a mapping
    body_encoding: str = "json"
    secret_fields: tuple[tuple[str, Secret], ...] = ()  # merged into the body at send time
    secret_headers: tuple[tuple[str, Secret], ...] = ()
    expect_status: tuple[int, ...] = (200,)
    expect_json_path: tuple[str, ...] = ()  # e.g. ("access_token",) or ("data", "token")
    expect_json_equals: str | None = None  # canonical JSON of the expected value, when one is given
    tls_ca_file: str | None = None
    tls_insecure_skip_verify: bool = False
    follow_redirects: bool = False

    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value this check sends."""
        return tuple(s for _, s in (*self.secret_fields, *self.secret_headers))


@dataclass(frozen=True, slots=True)
class CollectConfig:
    """Database-wide collection for one target over its persistent monitoring connection (see coordination.py)."""

    collectors: tuple[str, ...] = ()
    dsn: DSN | None = None  # the monitoring role's DSN (default: the target's, which the probe uses)
    mode: str = "auto"  # auto: one instance per database (advisory lock) | always: central | never: sidecar
    lock_target: str | None = None  # pgbouncer: collected by whichever instance collects this postgres target
    interval: float = 15.0
    budget: float = 5.0
    max_label_values: int = DEFAULT_MAX_LABEL_VALUES


@dataclass(frozen=True, slots=True)
class Target:
    """One monitored database, named by the user; the name is its `target` label."""

    name: str
    dsn: DSN
    kind: str = "postgres"
    interval: float = 15.0
    timeout: float = 5.0
    critical: bool = True  # DbwatchTargetDown pages when its probe fails (readiness is separate)
    stale_after: float = 35.0
    gate_readiness: bool = False  # opt-in: /readyz (so the pod's readiness) fails while this target is down
    own_sessions: bool = True  # postgres: the probe also reports this pod's sessions (pod-local)
    own_sessions_application_name: str | None = None  # match by this application_name instead of client address
    login: LoginCheck | None = None  # set for kind http_login (whose dsn is empty)
    collect: CollectConfig = field(default_factory=CollectConfig)  # none for http_login


@dataclass(frozen=True, slots=True)
class HookConfig:
    """Where the sidecar receives the in-app hook's datagrams, and the bounds it applies to them."""

    listen: wire.Address = field(default_factory=lambda: wire.parse_address(wire.DEFAULT_ADDR))
    token: Secret | None = None
    worker_expiry: float = 60.0
    max_datagram_bytes: int = 65507
    max_apps: int = 10
    max_engines: int = 20
    max_workers: int = 256
    max_routes: int = 200
    max_label_values: int = 50
    # Per-worker state: one entry per series a worker reports (its last totals, to turn them into increments).
    max_worker_series: int = 2000
    max_tracked_series: int = 50_000  # the same, summed over every live worker of every app


SLI_KINDS: Final = ("availability", "latency")
SLI_FROM: Final = ("access", "probe")
SEVERITIES: Final = ("page", "ticket")


@dataclass(frozen=True, slots=True)
class Window:
    """One multi-window burn-rate alert: both windows over `burn_rate` times the budget, for `for_`."""

    long: float
    short: float
    burn_rate: float
    severity: str
    for_: float = 0.0


# The SRE workbook's multiwindow, multi-burn-rate table (chapter 5, "Alerting on SLOs").
DEFAULT_WINDOWS: Final = (
    Window(3600, 300, 14.4, "page", 120),
    Window(21600, 1800, 6.0, "page", 900),
    Window(86400, 7200, 3.0, "ticket", 3600),
    Window(259200, 21600, 1.0, "ticket", 10800),
)


@dataclass(frozen=True, slots=True)
class SLO:
    """A service-level objective `dbwatch rules` turns into recording and burn-rate alerting rules."""

    name: str
    sli: str  # availability | latency
    source: str  # access (the access-log histogram) | probe (a login probe target)
    objective: float  # ratio, e.g. 0.99
    threshold: float | None = None  # latency: seconds, a bucket boundary
    log_source: str | None = None  # access: the `source` label (a log source's name); None: any
    route: str | None = None  # access: the route template
    method: str | None = None  # access: the method
    target: str | None = None  # probe: the probed target; access: the database the path depends on (inhibition)
    period: float = 30 * 86400.0
    min_events: int = 30  # fewer requests than this in a long window never page
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    description: str = ""


LOG_SOURCE_FORMATS: Final = ("auto", "plain", "json", "cri", "docker")
START_AT: Final = ("beginning", "end")
_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 10**6,
    "GB": 10**9,
}


@dataclass(frozen=True, slots=True)
class LogSource:
    """One log source: a path or glob of files read in one format; its name is the `source` label."""

    name: str
    path: str
    format: str = "auto"
    app_roots: tuple[str, ...] = ()
    app_packages: tuple[str, ...] = ()
    access: AccessConfig | None = None
    target: str | None = None  # the database target the app behind this log uses (alerts name it)
    follow_symlinks: bool = False  # read a matched symlink's target (off: a link planted in the folder is skipped)


@dataclass(frozen=True, slots=True)
class LogsConfig:
    """Log watching: sources, where positions are kept, the caps that bound memory and label values."""

    sources: tuple[LogSource, ...] = ()
    state_dir: str | None = None
    start_at: str = "beginning"
    poll_interval: float = 1.0
    app_roots: tuple[str, ...] = ()
    app_packages: tuple[str, ...] = ()
    max_line_bytes: int = 1 << 20
    max_record_bytes: int = 1 << 20
    max_files: int = 1024
    max_locations: int = 50
    max_exceptions: int = 50


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    listen: tuple[str, int] = DEFAULT_LISTEN
    log: LogConfig = field(default_factory=LogConfig)
    targets: tuple[Target, ...] = ()
    hook: HookConfig | None = None
    slos: tuple[SLO, ...] = ()
    logs: LogsConfig = field(default_factory=LogsConfig)
    max_series: int = DEFAULT_MAX_SERIES  # series /metrics may hold from the store (a histogram label set: buckets + 3)

    def secrets(self) -> frozenset[str]:
        """Every secret value in the config, for scrubbing output."""
        found = {t.dsn.password.reveal() for t in self.targets if t.dsn.password}
        found.update(t.collect.dsn.password.reveal() for t in self.targets if t.collect.dsn and t.collect.dsn.password)
        found.update(s.reveal() for t in self.targets if t.login for s in t.login.secrets() if s)
        if self.hook and self.hook.token:
            found.add(self.hook.token.reveal())
        return frozenset(found)

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked, for `check-config`."""
        return {
            "listen": f"{self.listen[0]}:{self.listen[1]}",
            "log": {"level": self.log.level, "format": self.log.format},
            "max_series": self.max_series,
            "targets": [
                {
                    "name": t.name,
                    "kind": t.kind,
                    **({"dsn": str(t.dsn)} if t.login is None else _redacted_login(t.login)),
                    "interval": t.interval,
                    "timeout": t.timeout,
                    "critical": t.critical,
                    "stale_after": t.stale_after,
                    "gate_readiness": t.gate_readiness,
                    **({"own_sessions": _redacted_own(t)} if t.kind == "postgres" else {}),
                    **({} if t.login is not None else {"collect": _redacted_collect(t.collect)}),
                }
                for t in self.targets
            ],
            **({"hook": _hook_redacted(self.hook)} if self.hook else {}),
            **({"logs": _logs_redacted(self.logs)} if self.logs.sources else {}),
            **({"slos": [_slo_redacted(s) for s in self.slos]} if self.slos else {}),
        }


def _slo_redacted(s: SLO) -> dict[str, Any]:
    """An SLO as it was read, keys as in the YAML (`from`, `source`), durations in seconds."""
    return {
        "name": s.name,
        "sli": s.sli,
        "from": s.source,
        **{k: v for k, v in (("source", s.log_source), ("route", s.route), ("method", s.method)) if v is not None},
        "objective": s.objective,
        **({"threshold": s.threshold} if s.threshold is not None else {}),
        **({"target": s.target} if s.target else {}),
        "period": s.period,
        "min_events": s.min_events,
        "windows": [
            {"long": w.long, "short": w.short, "burn_rate": w.burn_rate, "severity": w.severity, "for": w.for_}
            for w in s.windows
        ],
        **({"description": s.description} if s.description else {}),
    }


def _logs_redacted(c: LogsConfig) -> dict[str, Any]:
    return {
        "state_dir": c.state_dir,
        "start_at": c.start_at,
        "poll_interval": c.poll_interval,
        "sources": [
            {
                "name": s.name,
                "path": s.path,
                "format": s.format,
                "app_roots": list(s.app_roots or c.app_roots),
                "app_packages": list(s.app_packages or c.app_packages),
                "access": s.access is not None,
                **({"target": s.target} if s.target else {}),
                "follow_symlinks": s.follow_symlinks,
            }
            for s in c.sources
        ],
        "max_line_bytes": c.max_line_bytes,
        "max_record_bytes": c.max_record_bytes,
        "max_files": c.max_files,
        "max_locations": c.max_locations,
        "max_exceptions": c.max_exceptions,
    }


def _redacted_own(t: Target) -> bool | dict[str, str]:
    return {"application_name": t.own_sessions_application_name} if t.own_sessions_application_name else t.own_sessions


def _redacted_collect(c: CollectConfig) -> dict[str, Any]:
    return {
        "collectors": list(c.collectors),
        **({"dsn": str(c.dsn)} if c.dsn else {}),
        "mode": c.mode,
        **({"lock_target": c.lock_target} if c.lock_target else {}),
        "interval": c.interval,
        "budget": c.budget,
        "max_label_values": c.max_label_values,
    }


def _redacted_login(c: LoginCheck) -> dict[str, Any]:
    out: dict[str, Any] = {"url": c.url, "method": c.method, "expect_status": list(c.expect_status)}
    if c.headers or c.secret_headers:
        out["headers"] = {**dict(c.headers), **{k: REDACTED for k, _ in c.secret_headers}}
    if c.body_json is not None or c.secret_fields:
        out["body"] = {**json.loads(c.body_json or "{}"), **{k: REDACTED for k, _ in c.secret_fields}}
        out["body_encoding"] = c.body_encoding
    if c.expect_json_path:
        out["expect_json"] = {"path": ".".join(c.expect_json_path)}
        if c.expect_json_equals is not None:
            out["expect_json"]["equals"] = json.loads(c.expect_json_equals)
    if c.tls_ca_file or c.tls_insecure_skip_verify:
        out["tls"] = {"ca_file": c.tls_ca_file, "insecure_skip_verify": c.tls_insecure_skip_verify}
    return out


def _hook_redacted(h: HookConfig) -> dict[str, Any]:
    return {
        "listen": str(h.listen),
        "token": "***" if h.token else None,
        "worker_expiry": h.worker_expiry,
        "max_datagram_bytes": h.max_datagram_bytes,
        "max_apps": h.max_apps,
        "max_engines": h.max_engines,
        "max_workers": h.max_workers,
        "max_routes": h.max_routes,
        "max_label_values": h.max_label_values,
        "max_worker_series": h.max_worker_series,
        "max_tracked_series": h.max_tracked_series,
    }


T = TypeVar("T")


class _Node:
    """A mapping from the YAML file plus its key path; takes keys off and rejects what is left."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {_typename(raw)}")
        self.raw: dict[str, Any] = dict(raw)
        self.path = path
        for key in self.raw:
            if not isinstance(key, str):
                raise ConfigError(f"{self._key(str(key))}: keys must be strings")

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, conv: Callable[[Any, str], T], default: T) -> T:
        if key not in self.raw or self.raw[key] is None:
            self.raw.pop(key, None)
            return default
        return conv(self.raw.pop(key), self._key(key))

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def only(self, *keys: str) -> _Node:
        """Reject unknown keys before any value is looked at, so the first error names the stray key."""
        unknown = sorted(set(self.raw) - set(keys))
        if unknown:
            raise ConfigError(f"{self._key(unknown[0])}: unknown key (expected one of {', '.join(keys)})")
        return self

    def done(self) -> None:
        if self.raw:
            key = sorted(self.raw)[0]
            raise ConfigError(f"{self._key(key)}: unknown key")


def _typename(value: object) -> str:
    return {
        dict: "mapping",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {_typename(value)}")
    return _expand(value, path)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {_typename(value)}")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any, str], str]:
    def conv(value: Any, path: str) -> str:
        s = _str(value, path)
        if s not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(choices)}")
        return s

    return conv


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `5s`, `500ms`, `2m`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")  # noqa: TRY004 - callers catch ValueError for every bad duration
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("expected a duration")


def _duration(value: Any, path: str) -> float:
    if isinstance(value, str):
        value = _expand(value, path)
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ConfigError(
            f"{path}: expected a duration in seconds or like 10s / 500ms, got {_typename(value)}"
        ) from None
    if seconds <= 0:
        raise ConfigError(f"{path}: must be > 0")
    return seconds


def _listen(value: Any, path: str) -> tuple[str, int]:
    return parse_listen(_str(value, path), path)


def parse_listen(text: str, path: str = "listen") -> tuple[str, int]:
    """`host:port`, `[::1]:port` or `:port` into (host, port)."""
    m = re.match(r"^(?:\[([^\]]+)\]|([^:\[\]]*)):(\d{1,5})$", text.strip())
    if not m:
        raise ConfigError(f"{path}: expected host:port, e.g. 127.0.0.1:{DEFAULT_PORT}")
    host = m.group(1) or m.group(2) or "0.0.0.0"  # noqa: S104 - ":port" means all interfaces, as in Go exporters
    port = int(m.group(3))
    if not 0 <= port < 65536:
        raise ConfigError(f"{path}: port out of range")
    return host, port


def _expand(text: str, path: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None:
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")
        return value

    return _ENV_RE.sub(sub, text)


def _dsn(node: _Node) -> DSN:
    sources = [k for k in ("dsn", "dsn_env", "dsn_file") if node.has(k)]
    if len(sources) != 1:
        raise ConfigError(f"{node.path}: give exactly one of dsn, dsn_env, dsn_file")
    key = sources[0]
    path = node._key(key)
    raw = node.take(key, _str, "")
    if key == "dsn_env":
        text = os.environ.get(raw)
        if text is None:
            raise ConfigError(f"{path}: environment variable {raw} is not set")
    elif key == "dsn_file":
        try:
            text = Path(raw).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"{path}: cannot read {raw}: {reason}") from None
    else:
        text = raw
    try:
        return DSN.parse(text)
    except DSNError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_TARGET_KEYS: Final = (
    "name",
    "kind",
    "dsn",
    "dsn_env",
    "dsn_file",
    "interval",
    "timeout",
    "critical",
    "stale_after",
    "gate_readiness",
    "own_sessions",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "collect",
)
# Keys of an http_login target (instead of the DSN and libpq TLS keys).
_LOGIN_KEYS: Final = (
    "url",
    "method",
    "headers",
    "body",
    "body_encoding",
    "secret_fields",
    "secret_headers",
    "expect_status",
    "expect_json",
    "tls",
    "follow_redirects",
)
_COMMON_KEYS: Final = ("name", "kind", "interval", "timeout", "critical", "stale_after", "gate_readiness")


def _target(raw: Any, path: str, defaults: tuple[float, float]) -> Target:
    node = _Node(raw, path).only(*_TARGET_KEYS, *_LOGIN_KEYS)
    if not node.has("name"):
        raise ConfigError(f"{path}.name: missing (every target is named by you; the name is its label)")
    name = node.take("name", _str, "")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{path}.name: use 1-63 letters, digits, '_', '.', ':' or '-'")
    kind = node.take("kind", _choice(TARGET_KINDS), "postgres")
    if kind == "http_login":
        return _login_target(node.only(*_COMMON_KEYS, *_LOGIN_KEYS), name, defaults)
    node.only(*_TARGET_KEYS)
    dsn = _dsn(node)
    interval, timeout, critical, stale_after, gate = _common(node, defaults)
    tls = {
        "sslmode": node.take("sslmode", _choice(SSLMODES), ""),
        "sslrootcert": node.take("sslrootcert", _str, ""),
        "sslcert": node.take("sslcert", _str, ""),
        "sslkey": node.take("sslkey", _str, ""),
    }
    for key in ("sslrootcert", "sslcert", "sslkey"):
        if tls[key] and not os.access(tls[key], os.R_OK):
            raise ConfigError(f"{path}.{key}: cannot read {tls[key]}")
    collect = _collect(node.take("collect", lambda v, p: v, {}), f"{path}.collect", kind, interval, timeout)
    if collect.dsn is not None:
        collect = dataclasses.replace(collect, dsn=collect.dsn.with_params(**tls))
    no_name: str | None = None
    own, own_app = node.take("own_sessions", _own_sessions, (kind == "postgres", no_name))
    if own and kind != "postgres":
        raise ConfigError(f"{path}.own_sessions: only for postgres targets")
    node.done()
    return Target(
        name=name,
        dsn=dsn.with_params(**tls),
        kind=kind,
        interval=interval,
        timeout=timeout,
        critical=critical,
        stale_after=stale_after,
        gate_readiness=gate,
        own_sessions=own,
        own_sessions_application_name=own_app,
        collect=collect,
    )


def _own_sessions(value: Any, path: str) -> tuple[bool, str | None]:
    """`false`, `true`, or `{application_name: NAME}` (match that name instead of the probe's client address)."""
    if isinstance(value, bool):
        return value, None
    node = _Node(value, path).only("application_name")
    name = node.take("application_name", _str, "")
    node.done()
    if not name or len(name) > 63 or not name.isprintable():
        raise ConfigError(f"{path}.application_name: expected 1-63 printable characters")
    return True, name


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected a whole number, got {_typename(value)}")
    if value < 1:
        raise ConfigError(f"{path}: must be >= 1")
    return value


def _names(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list, got {_typename(value)}")
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _collect(raw: Any, path: str, kind: str, interval: float, timeout: float) -> CollectConfig:
    node = _Node(raw, path).only(
        "collectors", "dsn", "dsn_env", "dsn_file", "mode", "lock_target", "interval", "budget", "max_label_values"
    )
    dsn = _dsn(node) if any(node.has(k) for k in ("dsn", "dsn_env", "dsn_file")) else None
    if dsn is not None and kind != "postgres":
        raise ConfigError(f"{path}: dsn, dsn_env, dsn_file only for postgres targets")
    names = node.take("collectors", _names, defaults_for(kind))
    for i, name in enumerate(names):
        cls = COLLECTORS.get(name)
        if cls is None:
            raise ConfigError(f"{path}.collectors[{i}]: unknown collector {name!r} (known: {', '.join(COLLECTORS)})")
        if cls.kind != kind:
            raise ConfigError(f"{path}.collectors[{i}]: {name} reads a {cls.kind} target, not {kind}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}.collectors: a collector is listed twice")
    c_interval = node.take("interval", _duration, interval)
    budget = node.take("budget", _duration, min(timeout, c_interval))
    if budget > c_interval:
        raise ConfigError(f"{path}.budget: must not exceed the collection interval ({c_interval:g}s)")
    cap = node.take("max_label_values", _positive_int, DEFAULT_MAX_LABEL_VALUES)
    mode = node.take("mode", _choice(COLLECT_MODES), "auto")
    lock_target = node.take("lock_target", _str, "") or None
    if lock_target is not None and kind != "pgbouncer":
        raise ConfigError(f"{path}.lock_target: only for pgbouncer targets (a postgres target has its own lock)")
    node.done()
    return CollectConfig(
        collectors=names,
        dsn=dsn,
        mode=mode,
        lock_target=lock_target,
        interval=c_interval,
        budget=budget,
        max_label_values=cap,
    )


def _common(node: _Node, defaults: tuple[float, float]) -> tuple[float, float, bool, float, bool]:
    interval = node.take("interval", _duration, defaults[0])
    timeout = node.take("timeout", _duration, defaults[1])
    if timeout > interval:
        raise ConfigError(f"{node.path}.timeout: must not exceed interval ({interval:g}s)")
    critical = node.take("critical", _bool, True)
    stale_after = node.take("stale_after", _duration, 2 * interval + timeout)
    gate = node.take("gate_readiness", _bool, False)
    return interval, timeout, critical, stale_after, gate


_URL_BAD_CHARS: Final = re.compile(r'[\s\x00-\x1f\x7f<>"{}|\\^`]')


def _url(value: Any, path: str) -> str:
    url = _str(value, path).strip()
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host; the message would echo the URL
        raise ConfigError(f"{path}: not a valid URL (expected http://host[:port]/path)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{path}: expected an http:// or https:// URL with a host")
    if _URL_BAD_CHARS.search(url):
        raise ConfigError(f"{path}: whitespace, control or unsafe characters in the URL; percent-encode them")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{path}: no credentials in the URL; use secret_fields or secret_headers")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"{path}: port out of range") from None
    return url


def _secret_source(value: Any, path: str) -> Secret:
    node = _Node(value, path).only("env", "file")
    sources = [k for k in ("env", "file") if node.has(k)]
    if len(sources) != 1:
        raise ConfigError(f"{path}: give exactly one of env, file")
    key = sources[0]
    raw = node.take(key, _str, "")
    if key == "env":
        text = os.environ.get(raw)
        if text is None:
            raise ConfigError(f"{path}.env: environment variable {raw} is not set")
    else:
        try:
            text = Path(raw).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"{path}.file: cannot read {raw}: {reason}") from None
    if not text:
        raise ConfigError(f"{path}: the secret is empty")
    return Secret(text)


def _secrets(value: Any, path: str) -> tuple[tuple[str, Secret], ...]:
    node = _Node(value, path)
    return tuple((k, _secret_source(node.raw[k], f"{path}.{k}")) for k in node.raw)


def _headers(value: Any, path: str) -> tuple[tuple[str, str], ...]:
    node = _Node(value, path)
    return tuple((k, _str(v, f"{path}.{k}")) for k, v in node.raw.items())


def _json_value(value: Any, path: str) -> Any:
    """A YAML value as JSON data (strings get ${VAR} expansion); rejects what JSON cannot carry."""
    if isinstance(value, str):
        return _expand(value, path)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        return [_json_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{path}.{k}") for k, v in value.items()}
    raise ConfigError(f"{path}: {_typename(value)} cannot be sent as JSON")


def _statuses(value: Any, path: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[int] = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int) or not 100 <= v <= 599:
            raise ConfigError(f"{path}" + (f"[{i}]" if isinstance(value, list) else "") + ": expected an HTTP status")
        out.append(v)
    if not out:
        raise ConfigError(f"{path}: give at least one status")
    return tuple(out)


def _login_target(node: _Node, name: str, defaults: tuple[float, float]) -> Target:
    path = node.path
    if not node.has("url"):
        raise ConfigError(f"{path}.url: missing (an http_login target checks a URL)")
    url = node.take("url", _url, "")
    method = node.take("method", _choice(HTTP_METHODS), "POST")
    no_pairs: tuple[tuple[str, str], ...] = ()
    no_secrets: tuple[tuple[str, Secret], ...] = ()
    headers = node.take("headers", _headers, no_pairs)
    body: Any = node.take("body", _json_value, None)
    if body is not None and not isinstance(body, dict):
        raise ConfigError(f"{path}.body: expected a mapping (the JSON object to send)")
    encoding = node.take("body_encoding", _choice(BODY_ENCODINGS), "json")
    secret_fields = node.take("secret_fields", _secrets, no_secrets)
    secret_headers = node.take("secret_headers", _secrets, no_secrets)
    ok_status: tuple[int, ...] = (200,)
    expect_status = node.take("expect_status", _statuses, ok_status)
    json_path: tuple[str, ...] = ()
    equals: str | None = None
    if node.has("expect_json"):
        enode = _Node(node.take("expect_json", lambda v, p: v, {}), f"{path}.expect_json").only("path", "equals")
        if not enode.has("path"):
            raise ConfigError(f"{path}.expect_json.path: missing (e.g. access_token or data.token)")
        dotted = enode.take("path", _str, "")
        json_path = tuple(dotted.split("."))
        if not all(json_path):
            raise ConfigError(f"{path}.expect_json.path: empty segment in {dotted!r}")
        if "equals" in enode.raw:
            equals = json.dumps(_json_value(enode.raw.pop("equals"), f"{path}.expect_json.equals"))
        enode.done()
    ca_file: str | None = None
    insecure = False
    if node.has("tls"):
        tnode = _Node(node.take("tls", lambda v, p: v, {}), f"{path}.tls").only("ca_file", "insecure_skip_verify")
        ca_file = tnode.take("ca_file", _str, "") or None
        insecure = tnode.take("insecure_skip_verify", _bool, False)
        tnode.done()
        if ca_file and not os.access(ca_file, os.R_OK):
            raise ConfigError(f"{path}.tls.ca_file: cannot read {ca_file}")
    follow = node.take("follow_redirects", _bool, False)
    interval, timeout, critical, stale_after, gate = _common(node, defaults)
    node.done()
    return Target(
        name=name,
        dsn=DSN(),
        kind="http_login",
        interval=interval,
        timeout=timeout,
        critical=critical,
        stale_after=stale_after,
        gate_readiness=gate,
        login=LoginCheck(
            url=url,
            method=method,
            headers=headers,
            body_json=json.dumps(body, sort_keys=True) if body is not None else None,
            body_encoding=encoding,
            secret_fields=secret_fields,
            secret_headers=secret_headers,
            expect_status=expect_status,
            expect_json_path=json_path,
            expect_json_equals=equals,
            tls_ca_file=ca_file,
            tls_insecure_skip_verify=insecure,
            follow_redirects=follow,
        ),
    )


_ACCESS_KEYS: Final = tuple(f for f in AccessConfig.__dataclass_fields__)


def access_config(raw: Any, path: str) -> AccessConfig:
    """Validate an `access:` mapping (of a log source) into an AccessConfig."""
    node = _Node(raw if raw is not None else {}, path).only(*_ACCESS_KEYS)

    def opt(key: str) -> str | None:
        return node.take(key, _str, "") or None

    fmt = node.take("format", _choice(ACCESS_FORMATS), "auto")
    routes_raw: object = node.take("routes", lambda v, p: v, [])
    if not isinstance(routes_raw, list):
        raise ConfigError(f"{path}.routes: expected a list of templates like /api/users/{{id}}")
    routes = tuple(_str(r, f"{path}.routes[{i}]") for i, r in enumerate(routes_raw))
    for i, r in enumerate(routes):
        if not r.startswith("/"):
            raise ConfigError(f"{path}.routes[{i}]: a route template starts with /")
    max_routes = node.take("max_routes", lambda v, p: v, 50)
    if isinstance(max_routes, bool) or not isinstance(max_routes, int) or not 1 <= max_routes <= 1000:
        raise ConfigError(f"{path}.max_routes: expected a number from 1 to 1000")
    unit = node.take("duration_unit", _choice(DURATION_UNITS), "") or None
    gunicorn_format = opt("gunicorn_format")
    if gunicorn_format is not None:
        if not any(a in gunicorn_format for a in ("%(D)s", "%(M)s", "%(L)s", "%(T)s")):
            raise ConfigError(f"{path}.gunicorn_format: needs a duration atom: %(D)s, %(M)s, %(L)s or %(T)s")
        if "%(r)s" not in gunicorn_format and not ("%(U)s" in gunicorn_format and "%(m)s" in gunicorn_format):
            raise ConfigError(f"{path}.gunicorn_format: needs %(r)s, or %(m)s and %(U)s")
        if "%(s)s" not in gunicorn_format:
            raise ConfigError(f"{path}.gunicorn_format: needs the status %(s)s")
    nginx_format = opt("nginx_format")
    if nginx_format is not None:
        if not re.search(r"\$(request_time|upstream_response_time)\b", nginx_format):
            raise ConfigError(f"{path}.nginx_format: needs $request_time or $upstream_response_time")
        if not re.search(r"\$request\b", nginx_format) and not re.search(r"\$(uri|request_uri)\b", nginx_format):
            raise ConfigError(f"{path}.nginx_format: needs $request, or $request_method and $uri")
        if not re.search(r"\$status\b", nginx_format):
            raise ConfigError(f"{path}.nginx_format: needs $status")
    cfg = AccessConfig(
        format=fmt,
        gunicorn_format=gunicorn_format,
        nginx_format=nginx_format,
        nginx_time=node.take("nginx_time", _choice(("request_time", "upstream_response_time")), "request_time"),
        duration_field=opt("duration_field"),
        duration_unit=unit,
        path_field=opt("path_field"),
        route_field=opt("route_field"),
        method_field=opt("method_field"),
        status_field=opt("status_field"),
        routes=routes,
        max_routes=max_routes,
    )
    node.done()
    return cfg


def _int_between(low: int, high: int) -> Callable[[Any, str], int]:
    def conv(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected a whole number, got {_typename(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{path}: must be between {low} and {high}")
        return value

    return conv


_HOOK_KEYS: Final = (
    "listen",
    "token",
    "token_file",
    "worker_expiry",
    "max_datagram_bytes",
    "max_apps",
    "max_engines",
    "max_workers",
    "max_routes",
    "max_label_values",
    "max_worker_series",
    "max_tracked_series",
)


def _hook(raw: Any, path: str) -> HookConfig:
    node = _Node(raw, path).only(*_HOOK_KEYS)
    d = HookConfig()
    text = node.take("listen", _str, "")
    listen = d.listen
    if text:
        try:
            listen = wire.parse_address(text)
        except wire.AddressError as exc:
            raise ConfigError(f"{path}.listen: {exc}") from None
    if node.has("token") and node.has("token_file"):
        raise ConfigError(f"{path}: give at most one of token, token_file")
    token_text = node.take("token", _str, "")
    token_file = node.take("token_file", _str, "")
    if token_file:
        try:
            token_text = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"{path}.token_file: cannot read {token_file}: {reason}") from None
        if not token_text:
            raise ConfigError(f"{path}.token_file: {token_file} is empty")
    hook = HookConfig(
        listen=listen,
        token=Secret(token_text) if token_text else None,
        worker_expiry=node.take("worker_expiry", _duration, d.worker_expiry),
        max_datagram_bytes=node.take("max_datagram_bytes", _int_between(512, 65507), d.max_datagram_bytes),
        max_apps=node.take("max_apps", _int_between(1, 1000), d.max_apps),
        max_engines=node.take("max_engines", _int_between(1, 1000), d.max_engines),
        max_workers=node.take("max_workers", _int_between(1, 10000), d.max_workers),
        max_routes=node.take("max_routes", _int_between(1, 10000), d.max_routes),
        max_label_values=node.take("max_label_values", _int_between(1, 1000), d.max_label_values),
        max_worker_series=node.take("max_worker_series", _int_between(100, 1_000_000), d.max_worker_series),
        max_tracked_series=node.take("max_tracked_series", _int_between(100, 10_000_000), d.max_tracked_series),
    )
    node.done()
    return hook


_SLO_KEYS: Final = (
    "name",
    "sli",
    "from",
    "objective",
    "threshold",
    "source",
    "route",
    "method",
    "target",
    "period",
    "min_events",
    "windows",
    "description",
)


def _objective(value: Any, path: str) -> float:
    """`99`, `99.9`, `"99.9%"` (percent) or `0.999` (ratio) into a ratio strictly between 0 and 1."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        number = float(text) if not isinstance(text, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    ratio = number / 100 if number >= 1 else number
    if not 0 < ratio < 1:
        raise ConfigError(f"{path}: expected a percentage like 99.9 (or a ratio like 0.999), below 100")
    return round(ratio, 10)


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: expected a whole number >= 0")
    return value


def _windows(value: Any, path: str) -> tuple[Window, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: expected a list of {{long, short, burn_rate, severity, for}}")
    out: list[Window] = []
    for i, raw in enumerate(value):
        node = _Node(raw, f"{path}[{i}]").only("long", "short", "burn_rate", "severity", "for")
        for key in ("long", "short", "burn_rate", "severity"):
            if not node.has(key):
                raise ConfigError(f"{path}[{i}].{key}: missing")
        long = node.take("long", _duration, 0.0)
        short = node.take("short", _duration, 0.0)
        rate = node.take("burn_rate", lambda v, p: v, 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigError(f"{path}[{i}].burn_rate: expected a number > 0")
        severity = node.take("severity", _choice(SEVERITIES), "page")
        for_ = node.take("for", lambda v, p: 0.0 if v in (0, "0", "0s") else _duration(v, p), 0.0)
        node.done()
        if short >= long:
            raise ConfigError(f"{path}[{i}].short: must be shorter than long")
        out.append(Window(long, short, float(rate), severity, for_))
    return tuple(out)


def _slo(raw: Any, path: str, targets: dict[str, Target]) -> SLO:
    node = _Node(raw, path).only(*_SLO_KEYS)
    for key in ("name", "sli", "from", "objective"):
        if not node.has(key):
            raise ConfigError(f"{path}.{key}: missing")
    name = node.take("name", _str, "")
    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", name):
        raise ConfigError(f"{path}.name: use 1-63 lower-case letters, digits, '_' or '-'")
    sli = node.take("sli", _choice(SLI_KINDS), "availability")
    source = node.take("from", _choice(SLI_FROM), "access")
    objective = node.take("objective", _objective, 0.99)
    threshold = node.take("threshold", _duration, 0.0) or None
    if sli == "latency" and threshold is None:
        raise ConfigError(f"{path}.threshold: missing (a latency SLO counts requests faster than it)")
    if sli == "availability" and threshold is not None:
        raise ConfigError(f"{path}.threshold: only for sli: latency")
    log_source = node.take("source", _str, "") or None
    route = node.take("route", _str, "") or None
    method = node.take("method", _choice(HTTP_METHODS), "") or None
    target = node.take("target", _str, "") or None
    if source == "probe":
        for key, value in (("source", log_source), ("route", route), ("method", method)):
            if value is not None:
                raise ConfigError(f"{path}.{key}: only for from: access")
        if target is None:
            raise ConfigError(f"{path}.target: missing (the probe target whose results are the SLI)")
    if target is not None and target not in targets:
        raise ConfigError(f"{path}.target: no target named {target!r}")
    if threshold is not None:
        spec = metrics.HTTP_REQUEST_DURATION if source == "access" else metrics.PROBE_DURATION
        if threshold not in spec.buckets:
            bounds = ", ".join(f"{b:g}" for b in spec.buckets)
            raise ConfigError(
                f"{path}.threshold: {threshold:g}s is not a bucket boundary of {spec.name} ({bounds}); "
                "a threshold between boundaries cannot be counted exactly"
            )
    period = node.take("period", _duration, 30 * 86400.0)
    min_events = node.take("min_events", _count, 30)
    default_windows: tuple[Window, ...] = DEFAULT_WINDOWS
    windows = node.take("windows", _windows, default_windows)
    for i, w in enumerate(windows):
        if w.long > period:
            raise ConfigError(f"{path}.windows[{i}].long: longer than the period")
    description = node.take("description", _str, "")
    node.done()
    return SLO(
        name=name,
        sli=sli,
        source=source,
        objective=objective,
        threshold=threshold,
        log_source=log_source,
        route=route,
        method=method,
        target=target,
        period=period,
        min_events=min_events,
        windows=windows,
        description=description,
    )


def _size(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a size like 1048576 or 1MiB")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(_str(value, path))
        if not m:
            raise ConfigError(f"{path}: expected a size like 1048576 or 1MiB")
        n = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if n < 1024:
        raise ConfigError(f"{path}: must be at least 1KiB")
    return n


def _positive(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected a whole number, got {_typename(value)}")
    if value < 1:
        raise ConfigError(f"{path}: must be >= 1")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of strings, got {_typename(value)}")
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _roots(value: Any, path: str) -> tuple[str, ...]:
    return tuple(os.path.abspath(r) for r in _strings(value, path))


_SOURCE_KEYS: Final = ("name", "path", "format", "app_roots", "app_packages", "access", "target", "follow_symlinks")


def _source(raw: Any, path: str) -> LogSource:
    node = _Node(raw, path).only(*_SOURCE_KEYS)
    if not node.has("name"):
        raise ConfigError(f"{path}.name: missing (every log source is named by you; the name is its label)")
    name = node.take("name", _str, "")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{path}.name: use 1-63 letters, digits, '_', '.', ':' or '-'")
    if not node.has("path"):
        raise ConfigError(f"{path}.path: missing (a file or glob, e.g. /var/log/app/*.log)")
    file_path = node.take("path", _str, "")
    source = LogSource(
        name=name,
        path=file_path,
        format=node.take("format", _choice(LOG_SOURCE_FORMATS), "auto"),
        app_roots=node.take("app_roots", _roots, ()),
        app_packages=node.take("app_packages", _strings, ()),
        access=access_config(node.raw.pop("access"), f"{path}.access") if node.has("access") else None,
        target=node.take("target", _str, "") or None,
        follow_symlinks=node.take("follow_symlinks", _bool, False),
    )
    node.done()
    return source


_LOGS_KEYS: Final = (
    "sources",
    "state_dir",
    "start_at",
    "poll_interval",
    "app_roots",
    "app_packages",
    "max_line_bytes",
    "max_record_bytes",
    "max_files",
    "max_locations",
    "max_exceptions",
)


def _logs(raw: Any, path: str) -> LogsConfig:
    node = _Node(raw if raw is not None else {}, path).only(*_LOGS_KEYS)
    raw_sources: object = node.take("sources", lambda v, p: v, [])
    if not isinstance(raw_sources, list):
        raise ConfigError(f"{path}.sources: expected a list, got {_typename(raw_sources)}")
    sources: list[LogSource] = []
    seen: dict[str, int] = {}
    for i, raw_s in enumerate(raw_sources):
        s = _source(raw_s, f"{path}.sources[{i}]")
        if s.name in seen:
            raise ConfigError(f"{path}.sources[{i}].name: duplicate name {s.name!r} (also sources[{seen[s.name]}])")
        seen[s.name] = i
        sources.append(s)
    state_dir = node.take("state_dir", _str, "") or None
    if state_dir is None and sources:
        state_dir = os.environ.get("DBWATCH_STATE_DIR") or None  # the container image sets it
    if state_dir is not None and not (os.path.isdir(state_dir) and os.access(state_dir, os.W_OK | os.X_OK)):
        raise ConfigError(f"{path}.state_dir: {state_dir} is not a writable directory")
    cfg = LogsConfig(
        sources=tuple(sources),
        state_dir=state_dir,
        start_at=node.take("start_at", _choice(START_AT), "beginning"),
        poll_interval=node.take("poll_interval", _duration, 1.0),
        app_roots=node.take("app_roots", _roots, ()),
        app_packages=node.take("app_packages", _strings, ()),
        max_line_bytes=node.take("max_line_bytes", _size, 1 << 20),
        max_record_bytes=node.take("max_record_bytes", _size, 1 << 20),
        max_files=node.take("max_files", _positive, 1024),
        max_locations=node.take("max_locations", _positive, 50),
        max_exceptions=node.take("max_exceptions", _positive, 50),
    )
    node.done()
    return cfg


def from_mapping(raw: object) -> Config:
    """Validate already-parsed YAML into a Config."""
    node = _Node(raw if raw is not None else {}, "").only(
        "listen", "log", "defaults", "targets", "hook", "slos", "logs", "max_series"
    )
    listen = node.take("listen", _listen, DEFAULT_LISTEN)
    max_series = node.take("max_series", _int_between(100, 10_000_000), DEFAULT_MAX_SERIES)
    log_node = _Node(node.take("log", lambda v, p: v, {}), "log").only("level", "format")
    log = LogConfig(
        level=log_node.take("level", _choice(LOG_LEVELS), "info"),
        format=log_node.take("format", _choice(LOG_FORMATS), "json"),
    )
    log_node.done()
    dnode = _Node(node.take("defaults", lambda v, p: v, {}), "defaults").only("interval", "timeout")
    defaults = (dnode.take("interval", _duration, 15.0), dnode.take("timeout", _duration, 5.0))
    dnode.done()
    raw_targets: object = node.take("targets", lambda v, p: v, [])
    if not isinstance(raw_targets, list):
        raise ConfigError(f"targets: expected a list, got {_typename(raw_targets)}")
    targets: list[Target] = []
    seen: dict[str, int] = {}
    for i, raw_t in enumerate(raw_targets):
        t = _target(raw_t, f"targets[{i}]", defaults)
        if t.name in seen:
            raise ConfigError(f"targets[{i}].name: duplicate name {t.name!r} (also targets[{seen[t.name]}])")
        seen[t.name] = i
        targets.append(t)
    by_name_early = {t.name: t for t in targets}
    for i, t in enumerate(targets):
        lead = by_name_early.get(t.collect.lock_target or "")
        if t.collect.lock_target is not None and (
            lead is None or lead.kind != "postgres" or not lead.collect.collectors or lead.collect.mode == "never"
        ):
            raise ConfigError(
                f"targets[{i}].collect.lock_target: no postgres target named {t.collect.lock_target!r} that collects"
            )
    raw_hook: object = node.take("hook", lambda v, p: v, None)
    hook = _hook(raw_hook, "hook") if raw_hook is not None else None
    raw_slos: object = node.take("slos", lambda v, p: v, [])
    if not isinstance(raw_slos, list):
        raise ConfigError(f"slos: expected a list, got {_typename(raw_slos)}")
    slos: list[SLO] = []
    by_name = {t.name: t for t in targets}
    for i, raw_s in enumerate(raw_slos):
        slo = _slo(raw_s, f"slos[{i}]", by_name)
        if any(o.name == slo.name for o in slos):
            raise ConfigError(f"slos[{i}].name: duplicate name {slo.name!r}")
        slos.append(slo)
    logs = _logs(node.take("logs", lambda v, p: v, {}), "logs")
    for i, src in enumerate(logs.sources):
        if src.target is not None and src.target not in by_name:
            raise ConfigError(f"logs.sources[{i}].target: no target named {src.target!r}")
    if problem := slo_source_problem(slos, logs.sources, hook is not None):
        raise ConfigError(problem)
    node.done()
    return Config(
        listen=listen, log=log, targets=tuple(targets), hook=hook, slos=tuple(slos), logs=logs, max_series=max_series
    )


def read_yaml(path: str | Path, what: str = "config") -> object:
    """Parse a YAML file; errors name the file and position but never echo a line (it may hold a password)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8") from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: YAML syntax error") from None


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError with the key path."""
    return from_mapping(read_yaml(path))
