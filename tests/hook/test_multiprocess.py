"""A real gunicorn with uvicorn workers (--preload: instrumented before the fork) reporting to one ingest."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from sqlalchemy.engine import URL

from dbwatch import metrics as m
from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.ingest import running_ingest
from dbwatch.pgcluster import free_port
from dbwatch.store import Store
from tests.helpers import REPO, eventually

WORKERS = 3


def _exceptions(store: Store, route: str, category: str) -> float:
    return sum(
        s.value
        for fam in store.families()
        if fam.name == m.APP_EXCEPTIONS.name
        for s in fam.samples
        if s.labels["route"] == route and s.labels["category"] == category
    )


async def test_gunicorn_workers_aggregated_per_app_and_engine(sa_url: URL) -> None:
    """3 workers + master each report; checkouts, requests and exceptions add up exactly; workers expire."""
    d = Path(tempfile.mkdtemp(prefix="dbwh-"))
    store = Store()
    config = HookConfig(listen=wire.Address(path=str(d / "hook.sock")), worker_expiry=2.0)
    port = free_port()
    env = {
        **os.environ,
        "DBWATCH_TEST_URL": sa_url.render_as_string(hide_password=False),
        "DBWATCH_HOOK_ADDR": f"unix:{d / 'hook.sock'}",
        "DBWATCH_HOOK_APP": "gapp",
        "DBWATCH_HOOK_INTERVAL": "0.1",
    }
    gunicorn = [sys.executable, "-m", "gunicorn", "--preload", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}"]
    cmd = [*gunicorn, "-k", "uvicorn.workers.UvicornWorker", "--graceful-timeout", "5", "tests.hook.sample_app:app"]
    labels = ("gapp", "primary")
    async with running_ingest(config, store) as (ingest, _):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: ASYNC220 - Popen returns at once; the workers run beside the loop
        try:
            await eventually(lambda: ingest.workers("gapp") == WORKERS + 1, timeout=30)
            pids: set[str] = set()
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{port}"

                async def get(path: str) -> int:
                    async with http.get(base + path) as r:
                        body = await r.text()
                        if r.status == 200:
                            pids.add(body.split()[0])
                        return r.status

                statuses = await asyncio.gather(*(get(f"/users/{i}") for i in range(40)))
                statuses += [await get("/boom") for _ in range(2)]
            assert statuses.count(200) == 40
            assert statuses.count(500) == 2
            await eventually(lambda: store.counter_value(m.APP_POOL_CHECKINS, labels) == 42, timeout=15)
            assert store.counter_value(m.APP_POOL_CHECKOUTS, labels) == 42
            await eventually(lambda: store.counter_value(m.HTTP_REQUESTS, ("gapp", "/users/{id}", "GET", "2xx")) == 40)
            # SQLAlchemy 2.0 raises DataError here, 2.1 a plain DBAPIError: count by route and category.
            await eventually(lambda: _exceptions(store, "/boom", "other_db") == 2)
            # connects: at most pool_size per worker that served requests, never more than checkouts.
            connects = store.counter_value(m.APP_POOL_CONNECTS, (*labels, "ok"))
            assert 1 <= connects <= 2 * WORKERS
            assert store.gauge_value(m.APP_HOOK_WORKERS, ("gapp",)) == WORKERS + 1
            assert store.gauge_value(m.APP_POOL_CHECKED_OUT, labels) == 0
            assert len(pids) >= 1
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            sys.stdout.write(out.decode(errors="replace")[-4000:])
        # Stopped workers expire; their counts stay.
        await eventually(lambda: ingest.expire() >= 0 and ingest.workers("gapp") == 0, timeout=15)
        assert store.gauge_value(m.APP_HOOK_WORKERS, ("gapp",)) == 0
        assert store.counter_value(m.APP_POOL_CHECKOUTS, labels) == 42
    shutil.rmtree(d, ignore_errors=True)
