"""A tiny WSGI app for gunicorn/nginx access-log tests: /api/login, /api/users/<id>, /slow, anything else 404."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    status = "404 Not Found"
    if path == "/api/login":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        status = "200 OK" if b'"ok"' in body else "401 Unauthorized"
    elif path.startswith("/api/users/") or path.startswith("/api/items/"):
        status = "200 OK"
    elif path == "/slow":
        time.sleep(0.3)
        status = "200 OK"
    elif path == "/boom":
        status = "500 Internal Server Error"
    start_response(status, [("Content-Type", "application/json")])
    return [b"{}"]
