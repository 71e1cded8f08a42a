"""Access-log parsing: one access record in, its request (method, path, status, duration) out; pure.

The source hands each assembled record to its access sink (`dbwatch.logs.sinks.AccessLog`), which parses it here
and records the request. Three shapes:
gunicorn lines (`access_log_format` with `%(D)s` µs, `%(M)s` ms, `%(L)s` s or `%(T)s` s), JSON records (structlog
or similar; field names configurable, common names tried otherwise) and nginx / ingress-nginx lines
(`$request_time`, `$upstream_response_time`). Label values are bounded and made by `dbwatch.labels`, as the in-app
hook makes them: routes are templates (`/users/{id}`) capped per source, a 404 never takes a new route slot
(`unmatched`), methods and status classes are closed sets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dbwatch import labels
from dbwatch.config import AccessConfig

__all__ = [
    "GUNICORN_DEFAULT",
    "INGRESS_NGINX_DEFAULT",
    "AccessParser",
    "BadValue",
    "Request",
    "compile_gunicorn",
    "compile_nginx",
]

# gunicorn's default access_log_format plus a duration in microseconds (the default has none).
GUNICORN_DEFAULT: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'
# ingress-nginx's default log-format-upstream.
INGRESS_NGINX_DEFAULT: Final = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" '
    '"$http_user_agent" $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name] '
    "$upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id"
)
MAX_LINE: Final = 16384  # longer records are not access lines worth parsing
MAX_SECONDS: Final = 86400.0  # a "duration" longer than a day is a misparse, not a request

_UNIT: Final = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_GUNICORN_UNIT: Final = {"D": 1e-6, "M": 1e-3, "L": 1.0, "T": 1.0}
_DURATION_NAMES: Final = (
    "duration",
    "duration_ms",
    "duration_us",
    "duration_s",
    "request_time",
    "response_time",
    "elapsed",
    "elapsed_ms",
    "latency",
    "latency_ms",
    "process_time",
    "took_ms",
    "http.duration",
    "event.duration",  # ECS, nanoseconds
)
_PATH_NAMES: Final = ("path", "url", "uri", "request_path", "request_uri", "url.path", "http.path", "http.url")
_ROUTE_NAMES: Final = ("route", "http.route", "endpoint_path")
_METHOD_NAMES: Final = ("method", "http_method", "request_method", "http.method", "http.request.method")
_STATUS_NAMES: Final = (
    "status",
    "status_code",
    "http_status",
    "response_status",
    "http.status_code",
    "http.response.status_code",
)
_REQUEST_LINE: Final = re.compile(r"^([A-Z]{3,10}) (\S+)(?: HTTP/[\d.]+)?$")


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed access record, before labels are bounded."""

    method: str
    path: str  # raw path (query dropped) or a template the app logged
    status: int
    seconds: float
    templated: bool = False  # path is already a route template


def _template_regex(template: str) -> re.Pattern[str]:
    parts = []
    for seg in template.strip("/").split("/"):
        if seg == "**":
            parts.append(".*")
        elif seg == "*" or (seg.startswith("{") and seg.endswith("}")):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(seg))
    return re.compile("^/" + "/".join(parts) + "/?$")


def compile_gunicorn(fmt: str) -> tuple[re.Pattern[str], float]:
    """A regex with named groups for gunicorn's access_log_format, and the duration's unit in seconds."""
    out: list[str] = []
    unit = 1.0
    pos = 0
    seen: set[str] = set()
    for atom in re.finditer(r"%\((\{[^}]*\}[ioe]|[a-zA-Z])\)s", fmt):
        out.append(re.escape(fmt[pos : atom.start()]))
        pos = atom.end()
        name = atom.group(1)
        quoted = atom.start() > 0 and fmt[atom.start() - 1] == '"'
        any_value = r'(?:[^"\\]|\\.)*' if quoted else r"\S+"
        if name in _GUNICORN_UNIT and "dur" not in seen:
            out.append(r"(?P<dur>\d+(?:\.\d+)?)")
            unit = _GUNICORN_UNIT[name]
            seen.add("dur")
        elif name == "r" and "req" not in seen:
            out.append(r"(?P<req>[^\"]*)" if quoted else r"(?P<req>\S+ \S+(?: \S+)?)")
            seen.add("req")
        elif name == "s" and "status" not in seen:
            out.append(r"(?P<status>\d{3})")
            seen.add("status")
        elif name == "m" and "method" not in seen:
            out.append(r"(?P<method>[A-Za-z]+)")
            seen.add("method")
        elif name == "U" and "path" not in seen:
            out.append(r"(?P<path>\S*)")
            seen.add("path")
        elif name == "t":
            out.append(r"\[[^\]]*\]")
        else:
            out.append(any_value)
    out.append(re.escape(fmt[pos:]))
    return re.compile("^" + "".join(out) + r"\s*$"), unit


def compile_nginx(fmt: str) -> re.Pattern[str]:
    """A regex with named groups for an nginx log_format."""
    out: list[str] = []
    pos = 0
    seen: set[str] = set()
    for var in re.finditer(r"\$(\{\w+\}|\w+)", fmt):
        out.append(re.escape(fmt[pos : var.start()]))
        pos = var.end()
        name = var.group(1).strip("{}")
        quoted = var.start() > 0 and fmt[var.start() - 1] == '"'
        bracketed = var.start() > 0 and fmt[var.start() - 1] == "["
        if name in seen:
            group = ""
        elif name in ("request", "status", "request_time", "upstream_response_time", "request_method", "uri"):
            group = f"?P<{name}>"
            seen.add(name)
        elif name == "request_uri" and "uri" not in seen:
            group = "?P<uri>"
            seen.add("uri")
        else:
            group = "?:"
        if quoted:
            body = r'(?:[^"\\]|\\.)*'
        elif bracketed:
            body = r"[^\]]*"
        elif name.startswith("upstream_"):  # lists: "0.004, 0.002" or "0.003 : 0.001" after internal redirects
            body = r"\S+(?:(?:, | : )\S+)*"
        else:
            body = r"\S+"
        out.append(f"({group}{body})")
    out.append(re.escape(fmt[pos:]))
    return re.compile("^" + "".join(out) + r"\s*$")


def _upstream_seconds(text: str) -> float | None:
    """Sum of an upstream time list (retries and internal redirects); None when nginx answered itself."""
    total = 0.0
    found = False
    for part in re.split(r",\s*|\s*:\s*", text):
        if part and part != "-":
            total += float(part)
            found = True
    return total if found else None


def _lookup(fields: Mapping[str, Any], name: str) -> Any:
    """A field by exact name, else by dotted path into nested mappings."""
    if name in fields:
        return fields[name]
    cur: Any = fields
    for part in name.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _first(fields: Mapping[str, Any], configured: str | None, names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in (configured,) if configured else names:
        value = _lookup(fields, name)
        if value is not None:
            return name, value
    return None, None


def _unit_from_name(name: str) -> float:
    if name == "event.duration":
        return 1e-9
    for suffix, unit in (("_ms", 1e-3), ("_us", 1e-6), ("_ns", 1e-9), ("_s", 1.0)):
        if name.endswith(suffix):
            return unit
    return 1.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().removesuffix("ms").removesuffix("s"))
        except ValueError:
            return None
    return None


class BadValue(ValueError):
    """The record has the shape of an access record but a value that cannot be right."""


class AccessParser:
    """Parses one source's access records with its `access:` config; holds compiled patterns only."""

    def __init__(self, config: AccessConfig) -> None:
        self._cfg = config
        self._gunicorn, self._gunicorn_unit = compile_gunicorn(config.gunicorn_format or GUNICORN_DEFAULT)
        self._nginx = compile_nginx(config.nginx_format or INGRESS_NGINX_DEFAULT)
        self._templates = [(t, _template_regex(t)) for t in config.routes]

    def parse(self, text: str, fields: Mapping[str, Any] | None) -> Request | None:
        """The request in one record, None if it is not an access record; raises BadValue on absurd values."""
        fmt = self._cfg.format
        if fields is not None and fmt in ("auto", "json"):
            req = self._from_fields(fields)
            if req is not None or fmt == "json":
                return req
        if fmt == "json" or len(text) > MAX_LINE:
            return None
        line = text.rstrip("\r\n")
        if fmt in ("auto", "gunicorn"):
            req = self._from_gunicorn(line)
            if req is not None or fmt == "gunicorn":
                return req
        return self._from_nginx(line)

    def route(self, req: Request) -> tuple[str, bool]:
        """The normalised route of a request, and whether it is a template (configured, or logged by the app)
        rather than a raw path."""
        path = req.path.split("?", 1)[0]
        template = next((t for t, rx in self._templates if rx.match(path)), None)
        return labels.route(template if template is not None else path), template is not None or req.templated

    def _from_fields(self, fields: Mapping[str, Any]) -> Request | None:
        cfg = self._cfg
        dname, draw = _first(fields, cfg.duration_field, _DURATION_NAMES)
        if dname is None:
            return None
        _, status = _first(fields, cfg.status_field, _STATUS_NAMES)
        if status is None:  # a timed event that is not a request (an SQL timing, a job)
            return None
        _, method = _first(fields, cfg.method_field, _METHOD_NAMES)
        _, route = (
            _first(fields, cfg.route_field, _ROUTE_NAMES) if cfg.route_field or not cfg.path_field else (None, None)
        )
        _, path = _first(fields, cfg.path_field, _PATH_NAMES)
        if not isinstance(method, str) or (route is None and path is None):
            request = fields.get("request")
            m_ = _REQUEST_LINE.match(request) if isinstance(request, str) else None
            if m_ is None:
                return None
            method, path = m_.group(1), m_.group(2)
        seconds = _number(draw)
        code = _number(status)
        if seconds is None or code is None:
            raise BadValue(dname)
        unit = _UNIT[cfg.duration_unit] if cfg.duration_unit else _unit_from_name(dname)
        if isinstance(draw, str) and draw.strip().endswith("ms") and not cfg.duration_unit:
            unit = 1e-3
        templated = isinstance(route, str)
        where = route if templated else path
        if not isinstance(where, str):
            return None
        return _checked(method, where, code, seconds * unit, templated)

    def _from_gunicorn(self, line: str) -> Request | None:
        mt = self._gunicorn.match(line)
        if mt is None:
            return None
        groups = mt.groupdict()
        method, path = groups.get("method"), groups.get("path")
        if groups.get("req") is not None:
            rl = _REQUEST_LINE.match(groups["req"])
            if rl is None:
                return None
            method, path = rl.group(1), rl.group(2)
        if method is None or path is None:
            return None
        return _checked(method, path, float(groups["status"]), float(groups["dur"]) * self._gunicorn_unit, False)

    def _from_nginx(self, line: str) -> Request | None:
        mt = self._nginx.match(line)
        if mt is None:
            return None
        g = mt.groupdict()
        method, path = g.get("request_method"), g.get("uri")
        if g.get("request") is not None:
            rl = _REQUEST_LINE.match(g["request"])
            if rl is None:
                return None  # "-" or garbage from a client that never sent a request line
            method, path = rl.group(1), rl.group(2)
        if method is None or path is None or g.get("status") is None:
            return None
        seconds: float | None = None
        try:
            if self._cfg.nginx_time == "upstream_response_time" and g.get("upstream_response_time"):
                seconds = _upstream_seconds(g["upstream_response_time"])
            if seconds is None and g.get("request_time") is not None:
                seconds = float(g["request_time"])
            if seconds is None and g.get("upstream_response_time"):
                seconds = _upstream_seconds(g["upstream_response_time"])
        except ValueError:
            raise BadValue("request_time") from None
        if seconds is None:
            raise BadValue("request_time")
        return _checked(method, path, float(g["status"]), seconds, False)


def _checked(method: str, path: str, status: float, seconds: float, templated: bool) -> Request:
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise BadValue("duration")
    if not 100 <= status <= 599:
        raise BadValue("status")
    return Request(method.upper(), path, int(status), seconds, templated)
