"""Sidecar killed and restarted under a serving app: the app never notices, drops are counted, reporting resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from dbwatch.hook import instrument
from dbwatch.hook.reporter import get_reporter
from dbwatch.pgcluster import free_port
from tests.helpers import REPO, eventually, sample


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dbwatch", "run", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))


async def test_sidecar_killed_and_restarted(sa_url: URL, tmp_path: Path) -> None:
    """UDP sidecar SIGKILLed mid-traffic: every app checkout succeeds, send_failed grows, totals reappear after."""
    udp, http_port = _free_udp_port(), free_port()
    config = tmp_path / "dbwatch.yaml"
    config.write_text(f"listen: 127.0.0.1:{http_port}\nhook:\n  listen: 127.0.0.1:{udp}\n  worker_expiry: 30s\n")
    sidecar = f"127.0.0.1:{udp}"
    engine = create_async_engine(sa_url)
    assert instrument(engine, "primary", app="restart", sidecar=sidecar, interval=0.05)
    reporter = get_reporter(sidecar, "restart")
    done = 0
    stop = asyncio.Event()

    async def serve_app() -> None:
        nonlocal done
        while not stop.is_set():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            done += 1
            await asyncio.sleep(0.01)

    async def checkouts(http: aiohttp.ClientSession) -> float:
        try:
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                body = await r.text()
        except aiohttp.ClientError:
            return -1.0
        labels = {"app": "restart", "engine": "primary"}
        return sample(body, "dbwatch_app_pool_checkouts_total", labels) or 0.0

    proc = _start(config)
    app_task = asyncio.create_task(serve_app())
    outputs: list[bytes] = []
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _positive(checkouts(http)), timeout=20)
            proc.send_signal(signal.SIGKILL)
            outputs.append(proc.communicate(timeout=10)[0])
            failed_before = reporter.dropped["send_failed"]
            done_at_kill = done
            await eventually(lambda: reporter.dropped["send_failed"] >= failed_before + 3, timeout=10)
            await eventually(lambda: done >= done_at_kill + 20, timeout=10)  # the app kept serving
            assert not app_task.done()
            proc = _start(config)
            target = done

            async def caught_up() -> bool:
                return await checkouts(http) >= target

            await eventually(caught_up, timeout=20)  # totals are cumulative: nothing from before is lost
            async with http.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                body = await r.text()
            dropped = sample(body, "dbwatch_app_hook_dropped_total", {"app": "restart", "reason": "send_failed"})
            assert dropped is not None
            assert dropped >= 3
    finally:
        stop.set()
        await app_task
        await engine.dispose()
        proc.send_signal(signal.SIGTERM)
        outputs.append(proc.communicate(timeout=15)[0])
        for out in outputs:
            sys.stdout.write(out.decode(errors="replace")[-3000:])


async def _positive(value: Awaitable[float]) -> bool:
    return await value > 0
