"""Access-log latency from real gunicorn and nginx logs and hand-written edge cases; labels stay bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from dbwatch import metrics as m
from dbwatch.config import AccessConfig, ConfigError, access_config
from dbwatch.labels import OTHER, UNMATCHED
from dbwatch.labels import route as normalize_route
from dbwatch.logs.sinks import AccessLog
from dbwatch.pgcluster import free_port
from dbwatch.store import Store
from tests.helpers import REPO, stop_process


def _get(url: str, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"} if body else {}
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - loopback URLs built here
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(url)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log.read_text(errors="replace")) from None
            time.sleep(0.1)


@contextlib.contextmanager
def gunicorn(tmp_path: Path, fmt: str) -> Iterator[tuple[str, Path]]:
    """A real gunicorn serving tests/apps/wsgi_login.py on 127.0.0.1, access log to a file."""
    port = free_port()
    access = tmp_path / f"access-{port}.log"
    err = tmp_path / f"gunicorn-{port}.log"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                "1",
                "--access-logfile",
                str(access),
                "--access-logformat",
                fmt,
                "--chdir",
                str(REPO),
                "tests.apps.wsgi_login:app",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait(f"http://127.0.0.1:{port}/", proc, err)
        yield f"http://127.0.0.1:{port}", access
    finally:
        stop_process(proc)


def traffic(base: str) -> None:
    """Two good logins, one bad, users by id, items by uuid, a 404, a 500 and one slow request."""
    assert _get(base + "/api/login", b'{"password": "ok"}') == 200
    assert _get(base + "/api/login?next=/home", b'{"password": "ok"}') == 200
    assert _get(base + "/api/login", b'{"password": "no"}') == 401
    for i in (1, 22, 333):
        assert _get(f"{base}/api/users/{i}") == 200
    for _ in range(2):
        assert _get(f"{base}/api/items/{uuid.uuid4()}") == 200
    assert _get(base + "/nope") == 404
    assert _get(base + "/boom") == 500
    assert _get(base + "/slow") == 200


def feed_file(log: AccessLog, path: Path, lines: int) -> list[str]:
    text = ""
    deadline = time.monotonic() + 10
    while len(text.splitlines()) < lines and time.monotonic() < deadline:  # gunicorn writes after responding
        text = path.read_text()
        time.sleep(0.05)
    records = text.splitlines()
    assert len(records) == lines, text
    for line in records:
        assert log.feed(line + "\n", None), line
    return records


def count(store: Store, route: str, method: str, status_class: str, source: str = "app") -> float:
    return store.counter_value(m.HTTP_REQUESTS, (source, route, method, status_class))


def check_traffic(store: Store, source: str = "app", unmatched: int = 1) -> None:
    assert count(store, "/api/login", "POST", "2xx", source) == 2
    assert count(store, "/api/login", "POST", "4xx", source) == 1
    assert count(store, "/api/users/{id}", "GET", "2xx", source) == 3
    assert count(store, "/api/items/{id}", "GET", "2xx", source) == 2
    assert count(store, UNMATCHED, "GET", "4xx", source) == unmatched  # a 404 takes no route slot
    assert count(store, "/boom", "GET", "5xx", source) == 1
    n, total = store.histogram_value(m.HTTP_REQUEST_DURATION, (source, "/slow", "GET"))
    assert n == 1
    assert 0.3 <= total < 5, total  # the unit was read right


@pytest.mark.parametrize("atom", ["%(D)s", "%(M)s", "%(L)s"])
def test_real_gunicorn_access_log(tmp_path: Path, atom: str) -> None:
    """gunicorn's default format plus a duration atom; counts by route template, method, status class."""
    fmt = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" ' + atom
    with gunicorn(tmp_path, fmt) as (base, path):
        traffic(base)
        store = Store()
        feed_file(AccessLog("app", AccessConfig(format="gunicorn", gunicorn_format=fmt), store), path, 12)
    check_traffic(store, unmatched=2)  # /nope and the readiness poll's 404 on /
    assert store.counter_value(m.HTTP_ACCESS_RECORDS, ("app", "observed")) == 12


def test_real_gunicorn_custom_format_with_method_and_path_atoms(tmp_path: Path) -> None:
    fmt = '%(t)s %(m)s %(U)s %(s)s %(L)s "%(a)s" pid=%(p)s'
    with gunicorn(tmp_path, fmt) as (base, path):
        traffic(base)
        store = Store()
        feed_file(AccessLog("app", AccessConfig(format="auto", gunicorn_format=fmt), store), path, 12)
    check_traffic(store, unmatched=2)


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $host $proxy_upstream_name {{ default "default-app-8000"; }}
    map $host $proxy_alternative_upstream_name {{ default ""; }}
    log_format upstreaminfo '{fmt}';
    upstream app {{ server 127.0.0.1:{app_port}; }}
    server {{
        listen 127.0.0.1:{port};
        access_log {dir}/access.log upstreaminfo;
        location / {{ proxy_pass http://app; }}
        location = /local {{ return 204; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(tmp_path: Path, app_port: int) -> Iterator[tuple[str, Path]]:
    """A real nginx (Debian package) as a reverse proxy on 127.0.0.1 with ingress-nginx's log format."""
    from dbwatch.logs.access import INGRESS_NGINX_DEFAULT

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.fail("nginx is installed by scripts/setup (Debian package nginx-light)")
    d = tmp_path / "nginx"
    d.mkdir()
    port = free_port()
    conf = d / "nginx.conf"
    fmt = INGRESS_NGINX_DEFAULT.replace("$req_id", "$request_id")  # $req_id is ingress-nginx's own variable
    conf.write_text(NGINX_CONF.format(dir=d, fmt=fmt, app_port=app_port, port=port))
    with (d / "out.log").open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait(f"http://127.0.0.1:{port}/local", proc, d / "error.log")
        yield f"http://127.0.0.1:{port}", d / "access.log"
    finally:
        stop_process(proc)


@pytest.mark.parametrize("which", ["request_time", "upstream_response_time"])
def test_real_nginx_ingress_format(tmp_path: Path, which: Literal["request_time", "upstream_response_time"]) -> None:
    """nginx proxying to gunicorn, logging in ingress-nginx's default upstreaminfo format."""
    with (
        gunicorn(tmp_path, '%(h)s "%(r)s" %(s)s %(D)s') as (app_base, _),
        nginx(tmp_path, int(app_base.rsplit(":", 1)[1])) as (base, path),
    ):
        _get(base + "/local")  # the readiness probe: nginx answered itself, upstream time is "-"
        traffic(base)
        store = Store()
        lines = feed_file(AccessLog("edge", AccessConfig(format="nginx", nginx_time=which), store), path, 13)
    assert lines[0].split(" [] ")[1].startswith("- - - - ")  # answered by nginx itself: no upstream values
    check_traffic(store, "edge")
    assert count(store, "/local", "GET", "2xx", "edge") == 2


GUNICORN_LINE = (
    '10.0.0.7 - - [02/Dec/2026:10:01:02 +0000] "POST /api/login HTTP/1.1" 200 512 "-" '
    '"Mozilla/5.0 \\"quoted\\" agent" 123456'
)
INGRESS_LINE = (
    '10.0.0.1 - - [02/Dec/2026:10:01:02 +0000] "POST /api/login HTTP/2.0" 502 150 "-" "curl/8.0" 512 0.250 '
    "[default-app-8000] [] 10.1.0.5:8000, 10.1.0.6:8000 0, 0 0.120, 0.100 502, 502 4f1c0de0a1b2"
)


@pytest.mark.parametrize(
    ("cfg", "text", "fields", "want"),
    [
        (AccessConfig(), GUNICORN_LINE, None, ("/api/login", "POST", "2xx", 0.123456)),
        (AccessConfig(), INGRESS_LINE, None, ("/api/login", "POST", "5xx", 0.25)),
        (
            AccessConfig(nginx_time="upstream_response_time"),
            INGRESS_LINE,
            None,
            ("/api/login", "POST", "5xx", 0.22),
        ),
        (
            AccessConfig(),
            "",
            {"event": "request", "method": "POST", "path": "/api/login", "status": 200, "duration_ms": 87.5},
            ("/api/login", "POST", "2xx", 0.0875),
        ),
        (
            AccessConfig(),
            "",
            {"http": {"method": "GET", "route": "/api/users/{user_id}", "status_code": "404"}, "latency": "0.2"},
            ("/api/users/{id}", "GET", "4xx", 0.2),
        ),
        (
            AccessConfig(),
            "",
            {"event": {"duration": 1_500_000_000}, "http.request.method": "get", "url.path": "/a/deadbeef42"},
            None,  # no status anywhere: not enough for a request record
        ),
        (
            AccessConfig(),
            "",
            {"event.duration": 1_500_000_000, "http.request.method": "get", "url.path": "/a/deadbeef42", "status": 200},
            ("/a/{id}", "GET", "2xx", 1.5),
        ),
        (
            AccessConfig(
                duration_field="t", duration_unit="us", path_field="p", method_field="verb", status_field="code"
            ),
            "",
            {"t": 250000, "p": "/api/login?u=x", "verb": "POST", "code": 201},
            ("/api/login", "POST", "2xx", 0.25),
        ),
        (
            AccessConfig(),
            "",
            {"request": "PUT /api/items/42 HTTP/1.1", "status": 204, "request_time": 0.01},
            ("/api/items/{id}", "PUT", "2xx", 0.01),
        ),
        (
            AccessConfig(format="json"),
            "",
            {"request": "BREW /pot HTTP/1.1", "status": 418, "request_time": "12ms"},
            ("/pot", OTHER, "4xx", 0.012),
        ),
    ],
)
def test_edge_cases(cfg: AccessConfig, text: str, fields: dict[str, Any] | None, want: tuple[Any, ...] | None) -> None:
    store = Store()
    log = AccessLog("s", cfg, store)
    assert log.feed(text, fields) is (want is not None)
    if want is None:
        assert store.counter_value(m.HTTP_ACCESS_RECORDS, ("s", "unmatched")) == 1
        return
    route, method, status_class, seconds = want
    n, total = store.histogram_value(m.HTTP_REQUEST_DURATION, ("s", route, method))
    assert n == 1
    assert store.counter_value(m.HTTP_REQUESTS, ("s", route, method, status_class)) == 1
    assert total == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fields", "result"),
    [
        ("Traceback (most recent call last):", None, "unmatched"),
        ("", {"event": "user_logged_in", "user": 7}, "unmatched"),
        ('10.0.0.1 - - [02/Dec/2026:10:01:02 +0000] "-" 400 0 "-" "-" 0 0.000 [] [] - - - - abc', None, "unmatched"),
        ("", {"method": "GET", "path": "/", "status": 200, "duration": "fast"}, "bad_value"),
        ("", {"method": "GET", "path": "/", "status": 200, "duration": float("nan")}, "bad_value"),
        ("", {"method": "GET", "path": "/", "status": 200, "duration": -1}, "bad_value"),
        ("", {"method": "GET", "path": "/", "status": 200, "duration": 1e9}, "bad_value"),
        ("", {"method": "GET", "path": "/", "status": 999, "duration": 1}, "bad_value"),
        ('1.2.3.4 - - [x] "GET / HTTP/1.1" 200 1 "-" "-" 0 - [] [] - - - - id', None, "bad_value"),
        ("x" * 20000, None, "unmatched"),
    ],
)
def test_not_access_records_are_counted_not_observed(text: str, fields: dict[str, Any] | None, result: str) -> None:
    store = Store()
    assert AccessLog("s", AccessConfig(), store).feed(text, fields) is False
    assert store.counter_value(m.HTTP_ACCESS_RECORDS, ("s", result)) == 1
    assert store.counter_value(m.HTTP_ACCESS_RECORDS, ("s", "observed")) == 0


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/users/123/orders/9", "/api/users/{id}/orders/{id}"),
        ("/api/items/0b7e5c1e-3a4f-4c1d-9e2b-7f6a5d4c3b2a", "/api/items/{id}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
        ("/reset/eyJhbGciOiJIUzI1NiJ9abc123XYZ", "/reset/{id}"),
        ("/api/login?next=/x#frag", "/api/login"),
        ("/static/app.js", "/static/app.js"),
        ("/cafe/decade", "/cafe/decade"),  # hex letters without digits are words
        ("http://example.com/api/login", "/api/login"),
        ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
        ("*", OTHER),
    ],
)
def test_normalize_route(path: str, route: str) -> None:
    assert normalize_route(path) == route


def test_routes_are_capped_and_templates_win() -> None:
    store = Store()
    log = AccessLog("s", AccessConfig(max_routes=3, routes=("/orgs/{org}/members", "/files/**")), store)
    for p in ("/orgs/acme/members", "/orgs/globex/members", "/files/a/b/c.txt", "/x", "/y", "/z"):
        assert log.feed("", {"method": "GET", "path": p, "status": 200, "duration": 0.1})
    assert count(store, "/orgs/{id}/members", "GET", "2xx", "s") == 2
    assert count(store, "/files/{path}", "GET", "2xx", "s") == 1
    assert count(store, "/x", "GET", "2xx", "s") == 1
    assert count(store, OTHER, "GET", "2xx", "s") == 2  # the cap of 3 distinct routes is reached


def test_hostile_paths_stay_bounded() -> None:
    """Ten thousand distinct random paths make at most max_routes + 1 label values."""
    store = Store()
    log = AccessLog("s", AccessConfig(), store)
    for i in range(10_000):
        log.feed("", {"method": "GET", "path": f"/p{i}x/{uuid.uuid4().hex[:6]}q", "status": 200, "duration": 0.01})
    series = list(store._hists[m.HTTP_REQUEST_DURATION])
    routes = {labels[1] for labels in series}
    assert len(routes) <= 51, json.dumps(sorted(routes))[:300]
    assert len(series) <= 51  # one status class observed per route; no 5xx series made ahead of an error


def test_access_config_validation() -> None:
    assert access_config({"format": "nginx", "nginx_time": "upstream_response_time"}, "x").format == "nginx"
    bad = [
        ({"format": "apache"}, "sources[0].access.format: must be one of"),
        ({"gunicorn_format": '%(h)s "%(r)s" %(s)s'}, "gunicorn_format: needs a duration atom"),
        ({"gunicorn_format": "%(s)s %(D)s"}, "gunicorn_format: needs %(r)s"),
        ({"nginx_format": "$request $status"}, "nginx_format: needs $request_time"),
        ({"max_routes": 0}, "max_routes: must be between 1 and 1000"),
        ({"routes": ["api/x"]}, "routes[0]: a route template starts with /"),
        ({"duration_unit": "minutes"}, "duration_unit: must be one of"),
        ({"colour": 1}, "sources[0].access.colour: unknown key"),
    ]
    for raw, message in bad:
        with pytest.raises(ConfigError) as e:
            access_config(raw, "sources[0].access")
        assert message in str(e.value)
