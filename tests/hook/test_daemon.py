"""The daemon with a `hook:` section: the ingest starts in a cleanup context and its numbers reach /metrics."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy

from dbwatch.hook import instrument
from tests.helpers import eventually, running, sample, value


async def test_hook_numbers_on_metrics_and_promtool_clean() -> None:
    """A sync engine reports over a Unix datagram socket; /metrics shows the pool; promtool lints clean."""
    d = Path(tempfile.mkdtemp(prefix="dbwh-"))
    sock = d / "hook.sock"
    try:
        async with running({"hook": {"listen": f"unix:{sock}", "token": "hook-token-1"}}) as daemon:
            assert sock.exists()
            engine = sqlalchemy.create_engine("sqlite://")
            assert instrument(engine, "lite", app="web", sidecar=f"unix:{sock}", token="hook-token-1", interval=0.05)
            for _ in range(4):
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))

            async def checkouts() -> str | None:
                text = await daemon.metrics()
                done = sample(text, "dbwatch_app_pool_checkouts_total", {"app": "web", "engine": "lite"}) == 4
                return text if done else None

            text = await eventually(checkouts, timeout=10)
            assert sample(text, "dbwatch_app_hook_workers", {"app": "web"}) == 1
            assert value(text, "dbwatch_hook_datagrams_total", {"result": "accepted"}) >= 1
            assert sample(text, "dbwatch_app_pool_info", {"app": "web", "pool_class": "SingletonThreadPool"}) == 1
            assert "hook-token-1" not in text
            promtool = shutil.which("promtool")
            assert promtool
            cmd = [promtool, "check", "metrics"]
            lint = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
            assert lint.returncode == 0, lint.stdout + lint.stderr
            engine.dispose()
        assert not sock.exists()  # removed on shutdown
    finally:
        shutil.rmtree(d, ignore_errors=True)
