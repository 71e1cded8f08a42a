"""ASGI middleware: request latency by route template, method and status class, and unhandled exceptions; stdlib only.

The route label is the framework's template when it sets one in the scope (FastAPI/Starlette `scope["route"]`),
otherwise the path; either way through `dbwatch.labels.route`, the access log's normaliser, so `/users/{user_id}`
and `/users/123` are both `/users/{id}`. At most `max_routes` distinct routes are kept; the rest report as
`__other__`, and 404s without a route as `unmatched`, so scanners cannot blow up the label set.
"""

from __future__ import annotations

import bisect
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from dbwatch import labels
from dbwatch.hook import wire
from dbwatch.hook.reporter import get_reporter
from dbwatch.logs.classify import AppRules, classify_event
from dbwatch.logs.traceback import Chain, Exc, Frame

__all__ = ["DbwatchASGIMiddleware", "category", "classified"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MAX_EXCEPTION_CLASSES: Final = 50
_BUCKETS: Final = wire.LAYOUTS["request"]
_MAX_CHAIN: Final = 8
_MAX_GROUP: Final = 20
_MAX_MESSAGE: Final = 2000
_MAX_FRAMES: Final = 64
_NO_APP_FRAMES: Final = AppRules()


def _exc(e: BaseException, depth: int) -> Exc:
    cls = type(e)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(e)[:_MAX_MESSAGE]
    except Exception:  # noqa: BLE001 - a broken __str__ leaves the class to decide
        message = ""
    group: tuple[Chain, ...] = ()
    subs = getattr(e, "exceptions", None) if isinstance(e, BaseExceptionGroup) else None
    if subs and depth < 3:
        group = tuple(_chain(sub, depth + 1) for sub in subs[:_MAX_GROUP])
    # function names let rules that look at where an exception was raised (terminate_cancelled) decide as well
    frames = tuple(
        Frame(f.f_code.co_filename, line, f.f_code.co_name) for f, line in traceback.walk_tb(e.__traceback__)
    )[-_MAX_FRAMES:]
    return Exc(name, message, frames, group=group, is_group=bool(group))


def _chain(exc: BaseException, depth: int = 0) -> Chain:
    """A live exception as the log watcher's `Chain` (outermost first; frames are not needed for the category)."""
    excs: list[Exc] = []
    links: list[str] = []
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < _MAX_CHAIN and cur not in seen:
        if seen:
            links.append("cause" if seen[-1].__cause__ is cur else "context")
        seen.append(cur)
        excs.append(_exc(cur, depth))
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
    return Chain(tuple(excs), tuple(links))


def category(exc: BaseException) -> str:
    """The log-watching category (dbwatch.logs.classify, one closed set) of a live exception and its chain."""
    return classify_event(_chain(exc), _NO_APP_FRAMES).category.value


def classified(exc: BaseException) -> tuple[str, str]:
    """(exception, category) of a live exception as the log watcher has them: the class that decided the category
    (a StatementError wrapping a MissingGreenlet is `sqlalchemy.exc.MissingGreenlet`), and the category."""
    c = classify_event(_chain(exc), _NO_APP_FRAMES)
    name = c.counted[0].exception if len(c.counted) == 1 else type(exc).__name__
    return name, c.category.value


def _scope_route(scope: Scope) -> str | None:
    """The framework's template: FastAPI's `scope["route"]`, else the path with Starlette's path_params put back."""
    route = scope.get("route")
    for attr in ("path_format", "path"):
        value = getattr(route, attr, None)
        if isinstance(value, str) and value:
            return str(scope.get("root_path", "")) + value
    params = scope.get("path_params")
    if isinstance(params, dict) and params:
        by_value = {str(v): k for k, v in params.items() if isinstance(k, str)}
        path = str(scope.get("path", ""))
        return "/".join(f"{{{by_value[seg]}}}" if seg in by_value else seg for seg in path.split("/"))
    return None


class DbwatchASGIMiddleware:
    """Wraps an ASGI app; reports through the same sender as `instrument()` and never changes a response."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        app_name: str | None = None,
        sidecar: str | None = None,
        token: str | None = None,
        interval: float | None = None,
        max_routes: int = 100,
    ) -> None:
        self.app = app
        self.max_routes = max_routes
        self._lock = threading.Lock()
        self._reset()
        get_reporter(sidecar, app_name, token, interval).add(self)

    def _reset(self) -> None:
        self._requests: dict[tuple[str, str, str], list[float]] = {}
        self._exceptions: dict[tuple[str, str, str], int] = {}
        self._routes = labels.Capper(self.max_routes)
        self._names = labels.Capper(_MAX_EXCEPTION_CLASSES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            self._record(scope, status or 500, time.perf_counter() - t0, exc)
            raise
        self._record(scope, status, time.perf_counter() - t0, None)

    def _record(self, scope: Scope, status: int, elapsed: float, exc: BaseException | None) -> None:
        try:
            template = _scope_route(scope)
            method = labels.method(str(scope.get("method", "")))
            status_class = labels.status_class(status)
            i = bisect.bisect_left(_BUCKETS, elapsed)
            with self._lock:
                route = self._route(template, scope, status)
                row = self._requests.get((route, method, status_class))
                if row is None:
                    row = self._requests[(route, method, status_class)] = [0.0] * (len(_BUCKETS) + 2)
                row[i] += 1
                row[-1] += elapsed
                if exc is not None:
                    name, cat = classified(exc)
                    key = (route, self._names(labels.exception(name)), cat)
                    self._exceptions[key] = self._exceptions.get(key, 0) + 1
        except Exception:  # noqa: BLE001, S110 - the middleware never changes what the app does
            pass

    def _route(self, template: str | None, scope: Scope, status: int) -> str:
        """The capped route label (call under the lock)."""
        if template is None and status == 404:
            return labels.UNMATCHED
        return self._routes(labels.route(template if template is not None else str(scope.get("path", ""))))

    # ----- Source protocol ---------------------------------------------------------------------------------

    def report(self) -> wire.Part:
        """Cumulative request histograms and exception counts, as wire rows."""
        with self._lock:
            requests = tuple(
                wire.RequestRow(*k, tuple(int(v) for v in row[:-1]), round(row[-1], 6))
                for k, row in self._requests.items()
            )
            exceptions = tuple(wire.ExceptionRow(*k, n) for k, n in self._exceptions.items())
        return wire.Part(requests=requests, exceptions=exceptions)

    def alive(self) -> bool:
        return True

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._reset()
