"""dbwatch.httpd over real sockets on 127.0.0.1: framing, methods, bad and oversized requests, pipelining, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dbwatch.httpd import MAX_HEAD, READ_SIZE, Handler, HTTPLimits, HTTPServer, Request, Response


async def _hello(req: Request) -> Response:
    return Response.text(200, f"hello {req.header('X-Name')}\n")


async def _fails(req: Request) -> Response:
    raise RuntimeError("boom")


@contextlib.asynccontextmanager
async def serving(routes: dict[str, Handler] | None = None) -> AsyncIterator[tuple[HTTPServer, int, list[str]]]:
    rejected: list[str] = []
    handlers = {"/hello": _hello, "/fails": _fails, **(routes or {})}
    server = HTTPServer(handlers, limits=HTTPLimits(header_timeout=2, idle_timeout=5), on_reject=rejected.append)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port, rejected
    finally:
        await server.stop(grace=1)


async def _exchange(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, read everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_pipelined_requests_head_and_errors() -> None:
    """Three pipelined requests are answered in order; HEAD gets the length without a body; 404, 405, 500."""
    async with serving() as (_, port, rejected):
        raw = await _exchange(
            port,
            b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Name: a\r\n\r\n"
            b"HEAD /hello HTTP/1.1\r\nHost: x\r\nX-Name: bb\r\n\r\n"
            b"GET /hello?q=1 HTTP/1.1\r\nHost: x\r\nX-Name: c\r\nConnection: close\r\n\r\n",
        )
        heads = raw.split(b"HTTP/1.1 ")[1:]
        assert [h.split(b"\r\n", 1)[0] for h in heads] == [b"200 OK"] * 3
        assert heads[0].endswith(b"\r\n\r\nhello a\n")
        assert b"content-length: 9\r\n" in heads[1].lower()
        assert heads[1].endswith(b"\r\n\r\n")  # HEAD: no body
        assert heads[2].endswith(b"hello c\n")
        assert (await _exchange(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        post = await _exchange(port, b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert post.startswith(b"HTTP/1.1 405 ")
        assert b"\r\nAllow: GET, HEAD\r\n" in post
        assert (await _exchange(port, b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
        assert rejected == []


async def test_malformed_and_oversized_requests_are_answered_and_closed() -> None:
    """Garbage gets 400, a head past MAX_HEAD + READ_SIZE 431, a GET body over MAX_BODY 413; each then closes."""
    async with serving() as (_, port, _rejected):
        assert (await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        big = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD + READ_SIZE) + b"\r\n\r\n"
        assert (await _exchange(port, big)).startswith(b"HTTP/1.1 431 ")
        body = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
        assert (await _exchange(port, body)).startswith(b"HTTP/1.1 413 ")


async def test_stop_finishes_requests_in_progress_and_closes_idle_connections() -> None:
    """stop(): an idle keep-alive connection is closed at once; a request in progress is answered, with Connection:
    close; a new connection is refused."""
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(req: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.text(200, "done\n")

    async with serving({"/slow": slow}) as (server, port, _):
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(idle_r.readuntil(b"hello \n"), 5)).startswith(b"HTTP/1.1 200")
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(server.stop(grace=5))
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # closed while the slow request runs
        assert not stopping.done()
        release.set()
        answer = await asyncio.wait_for(busy_r.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"\r\nConnection: close\r\n" in answer
        assert answer.endswith(b"done\n")
        await asyncio.wait_for(stopping, 5)
        for w in (idle_w, busy_w):
            w.close()
