"""dbwatch's HTTP/1.1 server: asyncio streams with h11 parsing; bounded connections, head and idle timeouts, TLS.

A small server for a handful of GET routes, instead of aiohttp's: `import aiohttp` loads its client too, 14.5 MiB of
RSS in every sidecar (bench/memory.py), where h11 takes 0.3. h11 (python-hyper) does all HTTP parsing
and framing; this module only owns sockets, timeouts, the connection cap and shutdown. Per connection: the first
request head must arrive whole within `header_timeout` of the connection's start (a TLS handshake within the same),
each later head within `header_timeout` of its first byte; between requests a keep-alive connection may stay silent
for `idle_timeout`. Connections beyond `max_connections` are closed at once. Rejections are reported through
`on_reject(reason)`.

Shutdown follows aiohttp's sequence: stop listening, close connections with no request in progress, let requests in
progress finish (answered with `Connection: close`) for up to `grace` seconds, then cancel what is left.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final

import h11
import structlog

__all__ = ["REJECT_REASONS", "HTTPLimits", "HTTPServer", "Handler", "Middleware", "Request", "Response"]

log = structlog.get_logger("dbwatch")

REJECT_REASONS: Final = ("connection_limit", "header_timeout")  # what on_reject is called with
READ_SIZE: Final = 8192
# Request line and headers: a head still incomplete beyond this is answered 431 and closed, so a connection never
# buffers more than MAX_HEAD + READ_SIZE bytes.
MAX_HEAD: Final = 16384
MAX_BODY: Final = 8192  # a GET carries no body worth reading; more is answered 413 and closed
METHODS: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    """Bounds on the HTTP server's connections, so idle or slow clients cannot hold it.

    header_timeout: a request head (request line and headers) must arrive whole within this many seconds of its first
    byte, or of the connection's start (also the TLS handshake's limit). idle_timeout: a keep-alive connection with
    no request in progress is closed after this long; a client that reads no response bytes for this long, too.
    max_connections: connections beyond are closed at once.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    max_connections: int = 512


@dataclass(frozen=True, slots=True)
class Request:
    """A request head: method, path (query cut off, not decoded), headers with lower-case names (first of repeats)."""

    method: str
    path: str
    headers: Mapping[str, str]
    peer_cert: bool = False  # the TLS client presented a certificate the server verified

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(slots=True)
class Response:
    """What a handler returns; Content-Length and framing are added by the server."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain") -> Response:
        return cls(status, text.encode(), f"{content_type}; charset=utf-8")

    @classmethod
    def json(cls, status: int, payload: Mapping[str, Any]) -> Response:
        return cls.text(status, json.dumps(payload, sort_keys=True), "application/json")


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]


class _Conn:
    """One connection's task and whether a request is in progress on it (shutdown closes the others at once)."""

    __slots__ = ("busy", "closing", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.busy = False
        self.closing = False


class HTTPServer:
    """GET/HEAD routes behind an optional middleware; see the module docstring for the bounds it keeps."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        limits: HTTPLimits | None = None,
        middleware: Middleware | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._routes = dict(routes)
        self._limits = limits or HTTPLimits()
        self._middleware = middleware
        self._on_reject = on_reject
        self._conns: dict[asyncio.Task[Any], _Conn] = {}
        self._server: asyncio.Server | None = None
        self._date = (0, "")
        self._stopping = False

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (TLS with a context); the bound port (the real one for port 0)."""
        self._server = await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self._limits.header_timeout if ssl_context else None,
            reuse_address=True,
            limit=READ_SIZE,
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, close idle connections, give requests in progress `grace` seconds, cancel the rest."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for conn in self._conns.values():
            conn.closing = True
            if not conn.busy:
                conn.task.cancel()
        tasks = list(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Not Server.wait_closed(): from Python 3.12 it also waits for TLS handshakes still running (up to
        # header_timeout); the listening sockets are closed already, and those connections are refused when done.

    def _reject(self, reason: str) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._conns) >= self._limits.max_connections:
            if not self._stopping:
                self._reject("connection_limit")
            writer.transport.abort()
            return
        self._conns[task] = conn = _Conn(task)
        try:
            await self._serve(conn, reader, writer)
        except (asyncio.CancelledError, ConnectionError, TimeoutError, h11.ProtocolError):
            writer.transport.abort()  # shut down, gone, too slow, or a malformed body: nothing more to say
        except Exception:  # a bug here must not end the server's accept loop silently
            log.exception("http_connection_failed")
            writer.transport.abort()
        finally:
            del self._conns[task]
            writer.close()

    async def _serve(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        peer_cert = bool(writer.get_extra_info("peercert"))
        first = True
        while True:
            try:
                request = await self._next_request(h, reader, first)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint  # 400, or 431 for a head over MAX_HEAD
                await self._send(h, writer, "GET", Response.text(status, HTTPStatus(status).phrase + "\n"), True)
                return
            first = False
            if request is None:
                return
            conn.busy = True
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            headers: dict[str, str] = {}
            for name, value in request.headers:
                headers.setdefault(name.decode("ascii"), value.decode("latin-1"))
            req = Request(method, target.partition("?")[0], headers, peer_cert)
            if method not in METHODS:
                resp = Response.text(405, "405: Method Not Allowed\n")
                resp.headers.append(("Allow", "GET, HEAD"))
                await self._send(h, writer, method, resp, True)
                return
            if not await self._read_body(h, reader):
                await self._send(h, writer, method, Response.text(413, "413: Payload Too Large\n"), True)
                return
            resp = await self._respond(req)
            close = conn.closing or h.their_state is not h11.DONE
            await self._send(h, writer, method, resp, close)
            conn.busy = False
            if close or h.our_state is h11.MUST_CLOSE:
                return
            h.start_next_cycle()

    async def _next_request(self, h: h11.Connection, reader: asyncio.StreamReader, first: bool) -> h11.Request | None:
        """The next request head, or None when the peer closed, stayed idle too long or sent its head too slowly."""
        if not first and not h.trailing_data[0]:
            try:
                async with asyncio.timeout(self._limits.idle_timeout):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                return None  # an idle keep-alive connection: closed, as any server does, not counted
            if not data:
                return None
            h.receive_data(data)
        try:
            async with asyncio.timeout(self._limits.header_timeout):
                while True:
                    event = h.next_event()
                    if isinstance(event, h11.Request):
                        return event
                    if event is h11.NEED_DATA:
                        h.receive_data(await reader.read(READ_SIZE))
                        continue
                    return None  # ConnectionClosed
        except TimeoutError:
            self._reject("header_timeout")
            return None

    async def _read_body(self, h: h11.Connection, reader: asyncio.StreamReader) -> bool:
        """Read and drop a request body of up to MAX_BODY bytes (within the head's time); False when larger."""
        size = 0
        async with asyncio.timeout(self._limits.header_timeout):
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await reader.read(READ_SIZE))
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_BODY:
                        return False
                else:
                    return True  # EndOfMessage (or ConnectionClosed: the answer then fails to send)

    async def _respond(self, req: Request) -> Response:
        handler = self._routes.get(req.path, _not_found)
        try:
            if self._middleware is not None:
                return await self._middleware(req, handler)
            return await handler(req)
        except Exception:  # one failing request answers 500; the server serves on
            # The traceback names the handler; the path label is bounded to the routes (a client picks the path).
            log.exception("http_handler_failed", path=req.path if req.path in self._routes else "other")
            return Response.text(500, "500: Internal Server Error\n")

    async def _send(
        self, h: h11.Connection, writer: asyncio.StreamWriter, method: str, resp: Response, close: bool
    ) -> None:
        headers = [
            ("Content-Type", resp.content_type),
            ("Content-Length", str(len(resp.body))),
            ("Date", self._http_date()),
            *resp.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(resp.status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            out = h.send(h11.Response(status_code=resp.status, headers=headers, reason=reason))
            if method != "HEAD" and resp.body:
                out += h.send(h11.Data(data=resp.body))
            out += h.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return  # no answer possible in this state (the head never parsed as HTTP): close
        writer.write(out)
        async with asyncio.timeout(self._limits.idle_timeout):
            await writer.drain()

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:  # English names: Python leaves LC_TIME at "C"
            self._date = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
        return self._date[1]


async def _not_found(req: Request) -> Response:
    return Response.text(404, "404: Not Found\n")
