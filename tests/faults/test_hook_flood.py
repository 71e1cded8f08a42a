"""A real daemon under a hook cardinality flood: worker state and series stay within their budgets, RSS from /proc.

Each datagram carries 700 request rows never seen before, spread over every method and status class, plus new
exception names: the shape that once took the daemon from 58 MB to 2 GB and made 224,953 series.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from dbwatch import metrics as m
from dbwatch.hook import wire
from tests.faults.harness import DaemonProcess, rss_bytes

MAX_SERIES = 2000
MAX_WORKER_SERIES = 2000
MAX_TRACKED_SERIES = 3000
ROWS = 700
# README's "Bounds under hostile input": bytes per hook state entry and per series (held + rendered), and headroom.
STATE_ENTRY_BYTES = 600
SERIES_BYTES = 200 + 300
HEADROOM = 16 * 2**20


def flood_datagram(worker: str, seq: int, start: int) -> bytes:
    n = len(wire.LAYOUTS["request"]) + 1
    requests = []
    exceptions = []
    for i in range(start, start + ROWS):
        method = wire.METHODS[i % len(wire.METHODS)]
        sc = wire.STATUS_CLASSES[(i // len(wire.METHODS)) % len(wire.STATUS_CLASSES)]
        requests.append([f"/f/r{i}", method, sc, [1] + [0] * (n - 1), 0.001])
        if i % 7 == 0:
            exceptions.append([f"/f/r{i}", f"Err{i}", "other", 1])
    doc: dict[str, Any] = {
        "v": 1,
        "app": "shop",
        "worker": worker,
        "seq": seq,
        "dropped": {"queue_full": 0, "send_failed": 0},
        "layouts": {k: list(v) for k, v in wire.LAYOUTS.items()},
        "requests": requests,
        "exceptions": exceptions,
    }
    data = json.dumps(doc, separators=(",", ":")).encode()
    assert len(data) <= wire.MAX_DATAGRAM
    return data


def _counts(text: str, spec: m.MetricSpec) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = spec.name + ("_total{" if spec.type is m.MetricType.COUNTER else "{")
    for ln in text.splitlines():
        if ln.startswith(prefix):
            label, value = ln[len(prefix) :].rsplit("} ", 1)
            out[label.split('"')[1]] = float(value)
    return out


def _store_series(text: str) -> int:
    """Sample lines from the store: all but comments, process/platform metrics and the overflow counter itself."""
    skip = ("#", "process_", "python_", m.SERIES_DROPPED.name)
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith(skip))


@pytest.mark.timeout(120)
def test_hook_flood_stays_within_worker_state_series_budget_and_rss() -> None:
    """Three workers flood new keys: each stops at max_worker_series, all at max_tracked_series; /metrics holds at
    most max_series store series; RSS grows by less than README's bound for this config."""
    sock_dir = Path(tempfile.mkdtemp(prefix="dbwf-"))
    path = str(sock_dir / "h.sock")
    d = DaemonProcess(
        {
            "max_series": MAX_SERIES,
            "hook": {
                "listen": f"unix:{path}",
                "max_worker_series": MAX_WORKER_SERIES,
                "max_tracked_series": MAX_TRACKED_SERIES,
            },
        }
    )
    try:
        d.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)  # a Unix datagram socket blocks the sender when the daemon falls behind: nothing is lost
            s.send(flood_datagram("w:0", 1, 0))
            d.get("/metrics")
            base = rss_bytes(d.pid)
            sent = 1
            for k in range(1, 400):
                s.send(flood_datagram(f"w:{k % 3}", k, k * ROWS))
                sent += 1
        deadline = time.monotonic() + 30
        while True:
            text = d.get("/metrics")[1]
            results = _counts(text, m.HOOK_DATAGRAMS)
            if sum(results.values()) >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        grown = rss_bytes(d.pid) - base
        print(f"RSS grew {grown / 2**20:.1f} MiB over {sent} datagrams of {ROWS} new rows; results {results}")
        assert sum(results.values()) == sent
        assert results["over_limit"] > 0
        # Worker state: at most 2 datagrams' worth of keys per worker fit under 2000, and 3000 over all.
        assert results["accepted"] <= MAX_TRACKED_SERIES // ROWS + 1
        series = _store_series(text)
        print(f"store series {series} (max_series {MAX_SERIES})")
        assert series <= MAX_SERIES
        assert sum(_counts(text, m.SERIES_DROPPED).values()) > 0
        assert grown < MAX_TRACKED_SERIES * STATE_ENTRY_BYTES + MAX_SERIES * SERIES_BYTES + HEADROOM, grown
        assert d.alive()
    finally:
        d.stop()
        out = d.output()
        d.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert sum('"series_budget_reached"' in ln for ln in out.splitlines()) == 1
