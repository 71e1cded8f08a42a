"""The HTTP server under hostile clients, on real sockets: half-sent heads, idle or surplus connections, auth floods."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import bcrypt
import pytest
import structlog

from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.daemon import HTTPLimits, serve
from dbwatch.store import Store
from dbwatch.webconfig import WebConfig
from dbwatch.webconfig import from_mapping as web_from_mapping
from tests.helpers import eventually

HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: half"


@dataclass
class Server:
    port: int
    store: Store
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rejected(self, reason: str) -> float:
        return self.store.counter_value(m.HTTP_REJECTED, (reason,))


@contextlib.asynccontextmanager
async def serving(limits: HTTPLimits, web_config: WebConfig | None = None) -> AsyncIterator[Server]:
    """dbwatch's HTTP server on 127.0.0.1:0 with the given limits, in this event loop."""
    store = Store()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_started(host: str, port: int) -> None:
        started.set_result(port)

    srv = Server(0, store)
    config = from_mapping({"listen": "127.0.0.1:0"})
    task = asyncio.create_task(
        serve(config, store=store, web_config=web_config, stop=srv.stop, on_started=on_started, limits=limits)
    )
    try:
        srv.port = await asyncio.wait_for(started, 10)
        yield srv
    finally:
        srv.stop.set()
        await asyncio.wait_for(task, 15)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) before `within` seconds pass."""
    try:
        while await asyncio.wait_for(reader.read(65536), within):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_half_sent_heads_silent_and_idle_connections_are_closed() -> None:
    """Half a head, a head trickled byte by byte, nothing at all, an idle keep-alive: each closed by its timeout."""
    limits = HTTPLimits(header_timeout=0.5, idle_timeout=1.0, max_connections=100)
    with structlog.testing.capture_logs() as events:
        await _heads_and_idle(limits, events)


async def _heads_and_idle(limits: HTTPLimits, events: list[MutableMapping[str, Any]]) -> None:
    async with serving(limits) as srv:
        conns = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(30)]
        for _, writer in conns[:20]:
            writer.write(HALF_HEAD)
        _, trickle = conns[29]  # conns[20:29] send nothing at all

        async def trickle_head() -> None:
            for byte in HALF_HEAD:  # one byte every 50 ms: bytes keep coming, the head never ends
                if trickle.is_closing():
                    return
                trickle.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle_head())
        keep_reader, keep = await asyncio.open_connection("127.0.0.1", srv.port)
        keep.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(keep_reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        closed = await asyncio.gather(*(_closed_by_server(r, 10) for r, _ in conns), _closed_by_server(keep_reader, 10))
        assert all(closed)
        await trickling
        assert srv.rejected("header_timeout") == 30
        closed_logs = [e for e in events if e["event"] == "http_connection_closed"]
        assert [e["reason"] for e in closed_logs] == ["header_timeout"]  # once, however many
        async with aiohttp.ClientSession() as s, s.get(srv.base + "/healthz") as r:
            assert r.status == 200  # the server serves on
        for _, w in [*conns, (keep_reader, keep)]:
            w.close()


async def test_connections_over_the_cap_are_refused_at_once() -> None:
    """With max_connections open, a new connection is closed at once and counted; room comes back as they go."""
    limits = HTTPLimits(header_timeout=30.0, idle_timeout=30.0, max_connections=10)
    async with serving(limits) as srv:
        held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(10)]
        for r, w in held:  # one request each, so the server has surely taken them; they stay open (keep-alive)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        extra = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(5)]
        assert all(await asyncio.gather(*(_closed_by_server(r, 5) for r, _ in extra)))
        assert srv.rejected("connection_limit") == 5
        for _, w in [*held, *extra]:
            w.close()

        async def serves() -> bool:
            async with aiohttp.ClientSession() as s, s.get(srv.base + "/healthz") as r:
                return r.status == 200

        deadline = time.monotonic() + 5
        while not await serves():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


# --- basic auth ----------------------------------------------------------------------------------------------

LONG_PASSWORD = bytes(range(0x21, 0x7F)).decode() + "äöü"  # 94 ASCII + 3 two-byte characters = 100 bytes
SCRAPE_PASSWORD = "scrape-s3cret"  # test credentials


def _crypt(password: bytes, salt: bytes) -> bytes:
    """libxcrypt's crypt(3): the crypt_blowfish that `htpasswd -B` uses, an implementation independent of pyca."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt"))
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out: bytes = lib.crypt(password, salt)
    return out


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.timeout(120)
async def test_auth_flood_long_passwords_and_a_scrape_that_stays_fast() -> None:
    """200 wrong passwords (some over 72 bytes) at once: each 401 or 429, never 500; a scrape answers within 1 s.

    The long password was hashed by crypt_blowfish (as `htpasswd -B` does), which reads its first 72 bytes; it logs
    in. Hashes use cost 10 (about 70 ms each here), so unbounded queueing would hold the scrape for seconds.
    """
    long_hash = _crypt(LONG_PASSWORD.encode(), bcrypt.gensalt(rounds=10))
    assert long_hash.startswith(b"$2b$10$")
    web = web_from_mapping(
        {
            "basic_auth_users": {
                "prometheus": bcrypt.hashpw(SCRAPE_PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode(),
                "long": long_hash.decode(),
            }
        }
    )
    async with serving(HTTPLimits(), web) as srv:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:

            async def get(auth: str, path: str = "/metrics") -> tuple[int, float]:
                t0 = time.perf_counter()
                async with s.get(srv.base + path, headers={"Authorization": auth}) as r:
                    await r.read()
                    return r.status, time.perf_counter() - t0

            assert (await get(_basic("long", LONG_PASSWORD)))[0] == 200
            assert (await get(_basic("long", LONG_PASSWORD[:72])))[0] == 200  # bcrypt's 72 bytes, as everywhere
            assert (await get(_basic("long", LONG_PASSWORD[:71])))[0] == 401
            assert (await get(_basic("prometheus", SCRAPE_PASSWORD)))[0] == 200  # verified once, then cached
            wrong = [
                _basic("prometheus", f"wrong-{i}" + ("x" * 90 if i % 3 == 0 else ""))
                if i % 4
                else _basic(f"nobody-{i}", "y" * 100)
                for i in range(200)
            ]
            flood = [asyncio.create_task(get(a)) for a in wrong]
            await eventually(lambda: srv.rejected("auth_busy") > 0)  # every bcrypt slot and queue place is taken
            scrapes = [await get(_basic("prometheus", SCRAPE_PASSWORD)) for _ in range(3)]
            answers = await asyncio.gather(*flood)
        print(f"scrape latency under the flood: {max(t for _, t in scrapes) * 1000:.1f} ms")
        assert [st for st, _ in scrapes] == [200, 200, 200]
        assert max(t for _, t in scrapes) < 1.0
        statuses = sorted({st for st, _ in answers})
        assert set(statuses) <= {401, 429}, statuses
        assert srv.rejected("auth_busy") == sum(st == 429 for st, _ in answers) > 0
