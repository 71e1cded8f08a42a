"""Shared test helpers: the sentinel password, polling, the daemon harness, CLI runs, stopping a child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from dbwatch.config import Config, from_mapping
from dbwatch.daemon import serve
from dbwatch.pgcluster import Cluster
from dbwatch.store import Store
from dbwatch.webconfig import WebConfig

# A password that must never show up in any output of the suite (checked in conftest.py).
SENTINEL = "Xq7#sentinel%PW-zebra"
SENTINEL_FORMS = (SENTINEL, urllib.parse.quote(SENTINEL, safe=""), urllib.parse.quote_plus(SENTINEL))
REPO = Path(__file__).resolve().parent.parent


@dataclass
class PG:
    """A test cluster plus the app role whose password is the sentinel."""

    cluster: Cluster
    user: str = "app"
    password: str = field(default=SENTINEL, repr=False)
    database: str = "appdb"

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.user, self.password, self.database)

    @property
    def port(self) -> int:
        return self.cluster.port


# The `pg_factory` fixture: makes a private cluster (Cluster's keyword arguments), removed after the test.
PGFactory = Callable[..., PG]


async def eventually(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll cond (sync or async) until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


@dataclass
class Daemon:
    """A running in-process dbwatch on 127.0.0.1 with a real HTTP socket."""

    config: Config
    store: Store
    port: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    session: aiohttp.ClientSession | None = None
    scheme: str = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        assert self.session is not None
        async with self.session.get(self.base + path, **kw) as r:
            return r.status, await r.text()

    async def metrics(self) -> str:
        status, body = await self.get("/metrics")
        assert status == 200
        return body


@contextlib.asynccontextmanager
async def running(raw_config: dict[str, Any], web_config: WebConfig | None = None) -> AsyncIterator[Daemon]:
    """Start dbwatch on 127.0.0.1:0 from a config mapping (and a web config); stop it on exit."""
    raw = {"listen": "127.0.0.1:0", **raw_config}
    config = from_mapping(raw)
    d = Daemon(config=config, store=Store(), scheme="https" if web_config and web_config.tls else "http")
    started = asyncio.Event()

    async def on_started(host: str, port: int) -> None:
        d.port = port
        started.set()

    task = asyncio.create_task(serve(config, store=d.store, web_config=web_config, stop=d.stop, on_started=on_started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        async with aiohttp.ClientSession() as s:
            d.session = s
            yield d
    finally:
        d.stop.set()
        await asyncio.wait_for(task, 15)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, then SIGKILL if the process is still running `timeout` seconds later; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Value of one sample in an exposition text, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                return float(s.value)
    return None


def value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Value of one sample that must be in the exposition text."""
    found = sample(text, name, labels)
    assert found is not None, f"no sample {name} {labels or ''}"
    return found


def demo_process(*args: str, stderr: int = subprocess.STDOUT) -> subprocess.Popen[str]:
    """`dbwatch demo ARGS` as a child with line-buffered text output on its stdout (stderr merged unless told)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dbwatch", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m dbwatch ARGS` and echo its output into the test's captured output."""
    proc = subprocess.run(
        [sys.executable, "-m", "dbwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        check=False,
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc
