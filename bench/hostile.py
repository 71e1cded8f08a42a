"""Hostile clients against one `dbwatch run` at its default bounds (issue 14): hook key flood, half-sent HTTP heads,
a wrong-password flood. Prints RSS (from /proc), series, /metrics size, connections left open, status counts and
scrape latency; never asserts. README's "Bounds under hostile input" states the bounds these figures sit under.

Run: .venv/bin/python bench/hostile.py [--datagrams 2000] [--connections 1000] [--wrong 200]
Loopback only; every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dbwatch import metrics as m  # the repo root is on sys.path first (ruff's E402 allows sys.path edits)
from dbwatch.pgcluster import free_port
from tests.faults.harness import rss_bytes
from tests.faults.test_hook_flood import ROWS, flood_datagram  # one generator for the test and the bench

MIB = 2**20
HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: half"


class Daemon:
    """`dbwatch run` on a free loopback port, with an optional web config; output kept in a file."""

    def __init__(self, config: dict[str, Any], web: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dbwatch-hostile-"))
        self.port = free_port()
        cfg = self.dir / "dbwatch.yaml"
        cfg.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{self.port}", **config}))
        argv = [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)]
        if web is not None:
            (self.dir / "web.yml").write_text(yaml.safe_dump(web))
            argv += ["--web.config.file", str(self.dir / "web.yml")]
        self.log = (self.dir / "out.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.get("/healthz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dbwatch did not start: " + (self.dir / "out.log").read_text())
            time.sleep(0.1)

    def get(self, path: str, auth: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": auth or ""})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback URL
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _series(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith(("#", "process_", "python_")))


def _sample_sum(text: str, spec: m.MetricSpec) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = spec.name + "_total{"
    for ln in text.splitlines():
        if ln.startswith(prefix):
            label, value = ln[len(prefix) :].rsplit("} ", 1)
            out[label.split('"')[1]] = float(value)
    return out


def hook_flood(datagrams: int) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="dbwh-"))
    path = str(sock_dir / "h.sock")
    d = Daemon({"hook": {"listen": f"unix:{path}"}})
    try:
        print(f"== hook key flood: {datagrams} datagrams of {ROWS} new request rows (+100 exception rows), 3 workers")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)  # blocks when the daemon falls behind: nothing is lost
            base = rss_bytes(d.proc.pid)
            print(f"RSS at start {base / MIB:.1f} MiB")
            t0 = time.perf_counter()
            for k in range(datagrams):
                s.send(flood_datagram(f"w:{k % 3}", k + 1, k * ROWS))
                if (k + 1) % (datagrams // 4) == 0:
                    body = d.get("/metrics")[1]
                    rss = rss_bytes(d.proc.pid)
                    print(
                        f"after {k + 1:5d}: RSS {rss / MIB:6.1f} MiB (+{(rss - base) / MIB:.1f})"
                        f", series {_series(body.decode())}, /metrics {len(body) / 1024:.0f} KiB"
                    )
            text = d.get("/metrics")[1].decode()
            print(f"sent in {time.perf_counter() - t0:.1f} s; results {_sample_sum(text, m.HOOK_DATAGRAMS)}")
            print(f"series dropped by max_series: {sum(_sample_sum(text, m.SERIES_DROPPED).values()):.0f}")
    finally:
        d.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def half_heads(connections: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, connections + 256)), hard))
    d = Daemon({})
    try:
        print(f"== {connections} connections sending half a request head, then nothing")
        conns = []
        for _ in range(connections):
            r, w = await asyncio.open_connection("127.0.0.1", d.port)
            w.write(HALF_HEAD)
            conns.append((r, w))
        t0 = time.monotonic()

        closed: set[int] = set()

        async def open_after(seconds: float) -> int:
            await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic()))
            for i, (r, _) in enumerate(conns):
                if i in closed:
                    continue
                try:
                    if r.at_eof() or await asyncio.wait_for(r.read(1), 0.001) == b"":
                        closed.add(i)
                except ConnectionError:
                    closed.add(i)  # reset: refused over the connection cap
                except TimeoutError:
                    pass
            return len(conns) - len(closed)

        for t in (1.0, 5.0, 12.0):
            print(f"open after {t:4.1f} s: {await open_after(t)} (RSS {rss_bytes(d.proc.pid) / MIB:.1f} MiB)")
        print(f"rejections: {_sample_sum(d.get('/metrics')[1].decode(), m.HTTP_REJECTED)}")
        for _, w in conns:
            w.close()
    finally:
        d.close()


async def auth_flood(wrong: int) -> None:
    password = "scrape-pw-not-secret"  # bench credentials, loopback only
    web = {"basic_auth_users": {"prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()}}
    d = Daemon({}, web)
    good = "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()
    try:
        print(f"== {wrong} wrong passwords at once (cost 10), a third over 72 bytes; scrapes with cached credentials")
        assert d.get("/metrics", good)[0] == 200
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

            async def get(auth: str) -> tuple[int, float]:
                t = time.perf_counter()
                async with s.get(f"http://127.0.0.1:{d.port}/metrics", headers={"Authorization": auth}) as r:
                    await r.read()
                    return r.status, time.perf_counter() - t

            flood = [
                asyncio.create_task(
                    get("Basic " + base64.b64encode(f"prometheus:w{i}{'x' * 90 * (i % 3 == 0)}".encode()).decode())
                )
                for i in range(wrong)
            ]
            scrapes = []
            while not all(f.done() for f in flood) and len(scrapes) < 200:
                scrapes.append(await get(good))
            answers = await asyncio.gather(*flood)
            took = max(t for _, t in answers)  # every request of the flood started at t0
        lat = sorted(t for _, t in scrapes)
        print(f"flood answered within {took * 1000:.0f} ms: {dict(Counter(st for st, _ in answers))}")
        print(
            f"{len(scrapes)} scrapes during it: statuses {dict(Counter(st for st, _ in scrapes))}, "
            f"p50 {statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms"
        )
    finally:
        d.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--wrong", type=int, default=200)
    args = ap.parse_args()
    hook_flood(args.datagrams)
    asyncio.run(half_heads(args.connections))
    asyncio.run(auth_flood(args.wrong))


if __name__ == "__main__":
    main()
