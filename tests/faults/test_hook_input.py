"""Hostile hook datagrams: every malformed one is counted as a rejection, none escapes, nothing unstructured is printed.

A valid datagram (with a token, engines, request and exception rows) is taken apart: one of its values, at any depth,
is replaced by a value of another JSON type (a list or an object where a string is expected, a string in a layout,
null where a count is). Each such datagram must be rejected, counted under one `result`, and leave no app metric.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbwatch import metrics as m
from dbwatch.config import HookConfig
from dbwatch.hook import wire
from dbwatch.ingest import RESULTS, Ingest, running_ingest
from dbwatch.secret import Secret
from dbwatch.store import Store
from tests.faults.harness import DaemonProcess

TOKEN = "hook-t0ken-sentinel"  # a test token, checked never to be logged


def valid_doc() -> dict[str, Any]:
    """One datagram the ingest accepts, touching every part of the schema."""
    n = len(wire.LAYOUTS["request"]) + 1
    return {
        "v": 1,
        "token": TOKEN,
        "app": "shop",
        "worker": "host:1:abc",
        "seq": 1,
        "interval": 5.0,
        "dropped": {"queue_full": 0, "send_failed": 0},
        "layouts": {k: list(v) for k, v in wire.LAYOUTS.items()},
        "engines": [
            {
                "engine": "primary",
                "pool_class": "AsyncAdaptedQueuePool",
                "settings": {"size": 5.0, "pre_ping": 0.0},
                "gauges": {"checked_out": 1, "idle": 2, "overflow": 0, "waiting": 0},
                "counters": dict.fromkeys(wire.COUNTERS, 1),
                "hists": {k: [1] + [0] * len(b) + [0.5] for k, b in wire.HISTS.items()},
                "errors": {"IntegrityError": 1},
                "findings": ["expire_on_commit"],
            }
        ],
        "requests": [["/users/{id}", "GET", "2xx", [1] + [0] * (n - 1), 0.01]],
        "exceptions": [["/users/{id}", "KeyError", "other", 1]],
    }


def _paths(node: object, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


def _kind(value: object) -> str:
    if value is None or isinstance(value, bool | str | list | dict):
        return type(value).__name__
    return "number"


_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
)
_PATHS = _paths(valid_doc())


@st.composite
def hostile(draw: st.DrawFn) -> tuple[tuple[str | int, ...], bytes]:
    """A valid datagram with one value, anywhere in it, replaced by a value of another JSON type."""
    doc = valid_doc()
    path = draw(st.sampled_from(_PATHS))
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    old = parent[path[-1]]
    parent[path[-1]] = draw(_JSON.filter(lambda v: _kind(v) != _kind(old)))
    return path, json.dumps(doc).encode()


def _ingest() -> tuple[Ingest, Store]:
    store = Store()
    return Ingest(HookConfig(token=Secret(TOKEN)), store), store


def test_the_base_datagram_is_accepted() -> None:
    """The datagram the mutations start from is itself valid (else every mutation would be rejected trivially)."""
    ingest, _ = _ingest()
    assert ingest.receive(json.dumps(valid_doc()).encode()) == "accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile())
def test_every_retyped_value_is_a_counted_rejection(case: tuple[tuple[str | int, ...], bytes]) -> None:
    """A value of the wrong JSON type anywhere: rejected (never raised), counted once, no app metric touched."""
    path, data = case
    ingest, store = _ingest()
    result = ingest.receive(data)
    assert result in RESULTS, path
    assert result != "accepted", path
    assert sum(store.counter_value(m.HOOK_DATAGRAMS, (r,)) for r in RESULTS) == 1
    assert store.counter_value(m.HOOK_DATAGRAMS, (result,)) == 1
    assert ingest.workers("shop") == 0, path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=256) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    """Any bytes or any JSON value at all: a result from the closed set, counted once."""
    ingest, store = _ingest()
    assert ingest.receive(data) in RESULTS
    assert sum(store.counter_value(m.HOOK_DATAGRAMS, (r,)) for r in RESULTS) == 1


def _crafted() -> list[bytes]:
    """The shapes that escaped validation before: wrong types where a string, a number or a layout is expected."""
    out: list[bytes] = []
    edits: list[tuple[tuple[str | int, ...], object]] = [
        (("exceptions", 0, 2), ["a"]),  # unhashable category
        (("exceptions", 0, 2), {"a": 1}),
        (("engines", 0, "findings"), [["x"]]),  # unhashable finding
        (("engines", 0, "findings"), [{"x": 1}]),
        (("layouts", "request", 0), "0.005"),  # non-numeric layout
        (("layouts", "request", 0), {}),
        (("layouts", "held"), [True]),
        (("requests", 0, 1), ["GET"]),
        (("requests", 0, 2), {"2xx": 1}),
        (("token",), "\ud800"),  # a lone surrogate: not encodable
        (("v",), True),
        (("interval",), [5]),
    ]
    for path, value in edits:
        doc: Any = valid_doc()
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
        out.append(json.dumps(doc).encode())
    return out


@pytest.mark.timeout(60)
def test_daemon_counts_crafted_datagrams_and_prints_only_structured_lines() -> None:
    """A real daemon on a UDP port: every crafted datagram counted as rejected; its output is JSON lines only."""
    d = DaemonProcess({"hook": {"listen": "127.0.0.1:0", "token": TOKEN}})
    try:
        d.start()
        port = _hook_port(d)
        crafted = _crafted()
        rounds = 20
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(rounds):
                for data in crafted:
                    s.sendto(data, ("127.0.0.1", port))
                    time.sleep(0.0005)  # keep under the loopback receive buffer; every datagram must arrive
        want = rounds * len(crafted)
        deadline = time.monotonic() + 10
        while True:
            counts = _datagram_counts(d.get("/metrics")[1])
            if sum(counts.values()) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert counts.get("accepted", 0) == 0
        assert sum(counts.values()) == want, counts
        assert d.alive()
    finally:
        d.stop()
        out = d.output()
        d.cleanup()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        json.loads(ln)  # an asyncio traceback or any unstructured stderr line fails here
    assert "Traceback" not in out
    assert TOKEN not in out
    assert sum('"hook_datagram_rejected"' in ln for ln in lines) <= len(RESULTS)


def _hook_port(d: DaemonProcess) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for ln in d.output().splitlines():
            if '"hook_listening"' in ln:
                return int(json.loads(ln)["listen"].rsplit(":", 1)[1])
        time.sleep(0.05)
    raise AssertionError("no hook_listening line:\n" + d.output())


def _datagram_counts(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    prefix = m.HOOK_DATAGRAMS.name + '_total{result="'
    for ln in text.splitlines():
        if ln.startswith(prefix):
            result, value = ln[len(prefix) :].split('"} ')
            counts[result] = float(value)
    return counts


_SWAP: dict[str, str] = {}  # armed by the test below: socket path -> file a symlink swapped in points to


def _attacker(event: str, args: tuple[Any, ...]) -> None:
    """An audit hook playing another user of a shared volume: swaps a symlink in just before any chmod of the path."""
    if event == "os.chmod" and args and isinstance(args[0], str) and args[0] in _SWAP:
        victim = _SWAP.pop(args[0])
        os.unlink(args[0])
        os.symlink(victim, args[0])


sys.addaudithook(_attacker)  # audit hooks cannot be removed; this one acts only while armed


async def test_unix_socket_gets_its_mode_at_bind_and_no_symlink_is_followed() -> None:
    """The socket is 0666 from bind(); a symlink swapped in at the path during start-up leaves its target alone."""
    d = Path(tempfile.mkdtemp(prefix="dbwh-"))
    victim = d / "victim"
    victim.write_text("private")
    victim.chmod(0o600)
    path = str(d / "hook.sock")
    _SWAP[path] = str(victim)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        async with running_ingest(HookConfig(listen=wire.Address(path=path)), Store()) as (_, bound):
            assert stat.S_IMODE(victim.stat().st_mode) == 0o600
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o666
            assert bound.path == path
        after = os.umask(umask)
        assert after == umask  # the umask is put back after bind()
    finally:
        _SWAP.clear()
        shutil.rmtree(d, ignore_errors=True)
