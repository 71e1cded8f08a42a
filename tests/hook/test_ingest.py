"""The sidecar's ingest: accepts only what parses, bounds everything, never loses or double-counts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import pytest
import structlog

from dbwatch import metrics as m
from dbwatch.config import ConfigError, HookConfig, from_mapping
from dbwatch.hook import wire
from dbwatch.ingest import RESULTS, Ingest
from dbwatch.secret import Secret
from dbwatch.store import Store
from tests.helpers import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _engine(checkouts: int = 0, waiting: int = 0, name: str = "primary") -> dict[str, Any]:
    counters = dict.fromkeys(wire.COUNTERS, 0)
    counters["checkouts"] = checkouts
    hists = {k: [0] * (len(b) + 1) + [0.0] for k, b in wire.HISTS.items()}
    hists["checkout_wait"][0] = checkouts
    hists["checkout_wait"][-1] = checkouts * 0.00005
    return {
        "engine": name,
        "pool_class": "AsyncAdaptedQueuePool",
        "settings": {"size": 5.0, "pre_ping": 0.0},
        "gauges": {"checked_out": 1, "idle": 2, "overflow": 0, "waiting": waiting},
        "counters": counters,
        "hists": hists,
        "errors": {},
        "findings": [],
    }


def _doc(worker: str = "host:1:abc", seq: int = 1, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "app": "shop",
        "worker": worker,
        "seq": seq,
        "interval": 5.0,
        "dropped": {"queue_full": 0, "send_failed": 0},
        "layouts": {k: list(v) for k, v in wire.LAYOUTS.items()},
        "engines": [_engine()],
    }
    doc.update(kw)
    return doc


def _send(ingest: Ingest, doc: object) -> str:
    return ingest.receive(json.dumps(doc).encode())


def _ingest(**kw: Any) -> tuple[Ingest, Store, Clock]:
    store, clock = Store(), Clock()
    return Ingest(HookConfig(**kw), store, clock=clock), store, clock


def test_cumulative_totals_become_increments_without_double_counting() -> None:
    """Repeated, reordered and later datagrams: each checkout counted once; a worker's counts survive its expiry."""
    ingest, store, clock = _ingest(worker_expiry=30.0)
    labels = ("shop", "primary")
    assert _send(ingest, _doc(seq=1, engines=[_engine(10)])) == "accepted"
    assert _send(ingest, _doc(seq=1, engines=[_engine(10)])) == "accepted"  # duplicate
    assert _send(ingest, _doc(seq=3, engines=[_engine(25)])) == "accepted"
    assert _send(ingest, _doc(seq=2, engines=[_engine(18)])) == "accepted"  # late, older
    assert store.counter_value(m.APP_POOL_CHECKOUTS, labels) == 25
    assert store.histogram_value(m.APP_POOL_CHECKOUT_WAIT, labels)[0] == 25
    assert _send(ingest, _doc(worker="host:2:def", engines=[_engine(5, waiting=2)])) == "accepted"
    assert store.counter_value(m.APP_POOL_CHECKOUTS, labels) == 30
    assert store.gauge_value(m.APP_POOL_CHECKED_OUT, labels) == 2  # summed over both workers
    assert store.gauge_value(m.APP_POOL_WAITING, labels) == 2
    assert store.gauge_value(m.APP_HOOK_WORKERS, ("shop",)) == 2
    clock.now += 31
    _send(ingest, _doc(worker="host:2:def", seq=2, engines=[_engine(6)]))
    assert ingest.expire() == 1
    assert store.gauge_value(m.APP_HOOK_WORKERS, ("shop",)) == 1
    assert store.gauge_value(m.APP_POOL_CHECKED_OUT, labels) == 1
    assert store.counter_value(m.APP_POOL_CHECKOUTS, labels) == 31  # the expired worker's 25 stay


def _bad_docs() -> list[tuple[str, object]]:
    base = _doc()
    cases: list[tuple[str, object]] = [("bad_json", b"{not json"), ("bad_json", b"\xff\xfe"), ("bad_schema", [1])]
    mutations: list[tuple[str, Any]] = [
        ("bad_schema", lambda d: d.update(v=2)),
        ("bad_schema", lambda d: d.update(app="bad app")),
        ("bad_schema", lambda d: d.update(app="x" * 64)),
        ("bad_schema", lambda d: d.update(worker="")),
        ("bad_schema", lambda d: d.update(seq=-1)),
        ("bad_schema", lambda d: d.update(seq=True)),
        ("bad_schema", lambda d: d["engines"][0].update(engine="a/b")),
        ("bad_schema", lambda d: d["engines"][0]["counters"].update(checkouts=-5)),
        ("bad_schema", lambda d: d["engines"][0]["counters"].update(checkouts=1.5)),
        ("bad_schema", lambda d: d["engines"][0]["counters"].pop("resets")),
        ("bad_schema", lambda d: d["engines"][0]["counters"].update(extra=1)),
        ("bad_schema", lambda d: d["engines"][0]["gauges"].update(idle="2")),
        ("bad_schema", lambda d: d["engines"][0]["hists"]["held"].append(0)),
        ("bad_schema", lambda d: d["engines"][0].update(findings=["made_up"])),
        ("bad_schema", lambda d: d["engines"][0].update(pool_class="Queue Pool; drop")),
        ("bad_schema", lambda d: d["engines"][0].update(errors={"bad name": 1})),
        ("bad_schema", lambda d: d.update(requests=[["/x", "GET", "2xx", [1], 0.1]])),
        (
            "bad_schema",
            lambda d: d.update(requests=[["/x\n", "GET", "2xx", [0] * (len(wire.LAYOUTS["request"]) + 1), 0.1]]),
        ),
        (
            "bad_schema",
            lambda d: d.update(requests=[["/x", "BREW", "2xx", [0] * (len(wire.LAYOUTS["request"]) + 1), 0.1]]),
        ),
        ("bad_schema", lambda d: d.update(exceptions=[["/x", "KeyError", "made_up", 1]])),
        ("bad_schema", lambda d: d.update(engines=[_engine(name=f"e{i}") for i in range(21)])),
        ("bad_schema", lambda d: d.update(engines=[_engine(), _engine(checkouts=3)])),  # one engine name twice
        ("bucket_mismatch", lambda d: d["layouts"].update(held=[1.0, 2.0])),
        ("bucket_mismatch", lambda d: d.pop("layouts")),
    ]
    for result, mutate in mutations:
        d = copy.deepcopy(base)
        mutate(d)
        cases.append((result, d))
    nan = json.dumps(base).replace('"interval": 5.0', '"interval": NaN').encode()
    cases.append(("bad_json", nan))
    cases.append(("too_large", b" " * 70000))
    return cases


@pytest.mark.parametrize(("result", "doc"), _bad_docs())
def test_rejects_what_does_not_parse(result: str, doc: object) -> None:
    """Each malformed datagram is rejected whole, counted by reason, and changes no app metric."""
    ingest, store, _ = _ingest()
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    assert ingest.receive(data) == result
    assert store.counter_value(m.HOOK_DATAGRAMS, (result,)) == 1
    assert store.counter_value(m.APP_POOL_CHECKOUTS, ("shop", "primary")) == 0
    assert ingest.workers("shop") == 0
    for r in RESULTS:
        assert store.counter_value(m.HOOK_DATAGRAMS, (r,)) == (1 if r == result else 0)


def test_each_kind_of_rejection_logged_once_and_all_counted() -> None:
    """A flood of bad datagrams logs one warning per kind of rejection, and counts every datagram."""
    ingest, store, _ = _ingest()
    with structlog.testing.capture_logs() as events:
        for _ in range(50):
            assert ingest.receive(b"{not json") == "bad_json"
            assert ingest.receive(b" " * 70000) == "too_large"
        assert _send(ingest, _doc(v=2)) == "bad_schema"
        assert _send(ingest, _doc()) == "accepted"
    rejected = [e for e in events if e["event"] == "hook_datagram_rejected"]
    assert sorted(e["result"] for e in rejected) == ["bad_json", "bad_schema", "too_large"]
    assert store.counter_value(m.HOOK_DATAGRAMS, ("bad_json",)) == 50
    assert store.counter_value(m.HOOK_DATAGRAMS, ("too_large",)) == 50
    assert store.counter_value(m.HOOK_DATAGRAMS, ("bad_schema",)) == 1


def test_request_and_exception_counts_sum_over_workers() -> None:
    """The ASGI middleware's cumulative per-process rows: workers add up, repeats and stale rows do not count."""
    ingest, store, _ = _ingest()
    n = len(wire.LAYOUTS["request"]) + 1

    def rows(fast: int, slow: int, errors: int) -> dict[str, Any]:
        counts = [fast, *([0] * (n - 2)), slow]
        return {
            "requests": [["/users/{id}", "GET", "2xx", counts, fast * 0.001 + slow * 20.0]],
            "exceptions": [["/users/{id}", "MissingGreenlet", "missing_greenlet", errors]],
        }

    web = {k: v for k, v in _doc().items() if k != "engines"}  # a middleware-only process sends no engines
    assert _send(ingest, {**web, "worker": "h:1:a", "seq": 1, **rows(3, 0, 1)}) == "accepted"
    assert _send(ingest, {**web, "worker": "h:1:a", "seq": 2, **rows(5, 1, 2)}) == "accepted"
    assert _send(ingest, {**web, "worker": "h:1:a", "seq": 1, **rows(3, 0, 1)}) == "accepted"  # late repeat
    assert _send(ingest, {**web, "worker": "h:2:b", "seq": 1, **rows(4, 0, 3)}) == "accepted"
    count, total = store.histogram_value(m.HTTP_REQUEST_DURATION, ("shop", "/users/{id}", "GET"))
    assert count == 5 + 1 + 4
    assert total == pytest.approx(0.009 + 20.0)
    assert store.counter_value(m.APP_EXCEPTIONS, ("shop", "/users/{id}", "MissingGreenlet", "missing_greenlet")) == 5
    assert store.gauge_value(m.APP_HOOK_WORKERS, ("shop",)) == 2


def test_token_required_when_configured() -> None:
    """With hook.token set, a datagram without it or with a wrong one is rejected as bad_token."""
    ingest, _, _ = _ingest(token=Secret("s3cret-token"))
    assert _send(ingest, _doc()) == "bad_token"
    assert _send(ingest, _doc(token="wrong")) == "bad_token"
    assert _send(ingest, _doc(token="s3cret-token")) == "accepted"


def test_apps_workers_and_label_values_are_bounded() -> None:
    """Caps: apps and workers beyond the limit are refused; routes and class names beyond it become `__other__`."""
    ingest, store, _ = _ingest(max_apps=1, max_workers=2, max_routes=2, max_label_values=1)
    assert _send(ingest, _doc()) == "accepted"
    assert _send(ingest, _doc(app="other-app")) == "over_limit"
    assert _send(ingest, _doc(worker="w:2")) == "accepted"
    assert _send(ingest, _doc(worker="w:3")) == "over_limit"
    zero = [0] * (len(wire.LAYOUTS["request"]) + 1)
    rows = [[f"/r{i}", "GET", "2xx", [1, *zero[1:]], 0.001] for i in range(4)]
    exc = [["/r0", "KeyError", "other", 1], ["/r0", "ValueError", "other", 2]]
    assert _send(ingest, _doc(seq=2, requests=rows, exceptions=exc)) == "accepted"
    assert store.counter_value(m.HTTP_REQUESTS, ("shop", "/r1", "GET", "2xx")) == 1
    assert store.counter_value(m.HTTP_REQUESTS, ("shop", "__other__", "GET", "2xx")) == 2
    assert store.counter_value(m.APP_EXCEPTIONS, ("shop", "/r0", "KeyError", "other")) == 1
    assert store.counter_value(m.APP_EXCEPTIONS, ("shop", "/r0", "__other__", "other")) == 2


def test_hook_config_section() -> None:
    """hook: is optional; present, it validates listen, token/token_file and caps with key paths."""
    assert from_mapping({}).hook is None
    hook = from_mapping({"hook": {}}).hook
    assert hook is not None
    assert str(hook.listen) == wire.DEFAULT_ADDR
    cfg = from_mapping({"hook": {"listen": "unix:/run/dbwatch/hook.sock", "token": "t0k", "worker_expiry": "2m"}})
    assert cfg.hook is not None
    assert cfg.hook.listen.path == "/run/dbwatch/hook.sock"
    assert cfg.hook.worker_expiry == 120.0
    assert "t0k" in cfg.secrets()
    assert "t0k" not in json.dumps(cfg.redacted())
    bad = [
        ({"hook": {"listen": "nowhere"}}, "hook.listen:"),
        ({"hook": {"listen": "unix:relative"}}, "hook.listen:"),
        ({"hook": {"bogus": 1}}, "hook.bogus: unknown key"),
        ({"hook": {"token": "a", "token_file": "/x"}}, "hook: give at most one"),
        ({"hook": {"token_file": "/no/such/file"}}, "hook.token_file: cannot read"),
        ({"hook": {"max_routes": 0}}, "hook.max_routes: must be between"),
        ({"hook": {"max_datagram_bytes": "big"}}, "hook.max_datagram_bytes: expected a whole number"),
        ({"hook": {"worker_expiry": 0}}, "hook.worker_expiry: must be > 0"),
    ]
    for raw, message in bad:
        with pytest.raises(ConfigError) as err:
            from_mapping(raw)
        assert str(err.value).startswith(message), str(err.value)


_ISOLATION = r"""
import importlib.abc, sys
BLOCKED = ("aiohttp", "prometheus_client", "asyncpg", "structlog", "yaml")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked {name}")
        return None
sys.meta_path.insert(0, Block())
import sqlalchemy
from dbwatch.hook import DbwatchASGIMiddleware, instrument
async def app(scope, receive, send):
    pass
DbwatchASGIMiddleware(app, sidecar="unix:/nonexistent/x.sock")
engine = sqlalchemy.create_engine("sqlite://")
assert instrument(engine, "iso", sidecar="unix:/nonexistent/x.sock", interval=0.05)
with engine.connect() as c:
    c.execute(sqlalchemy.text("SELECT 1"))
from dbwatch.hook.reporter import get_reporter
rep = get_reporter("unix:/nonexistent/x.sock")
rep.flush()
assert rep.dropped["send_failed"] >= 1, rep.dropped
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED + ("dbwatch",)))
"""


def test_hook_imports_only_stdlib_and_sqlalchemy() -> None:
    """With the daemon's dependencies unimportable, the hook imports, instruments, and drops-and-counts."""
    proc = subprocess.run(
        [sys.executable, "-c", _ISOLATION], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = eval(proc.stdout.strip())  # noqa: S307 - our own subprocess printed a list literal
    assert not [x for x in loaded if not x.startswith("dbwatch")]
    assert "dbwatch.ingest" not in loaded


def test_worker_state_is_bounded_per_worker_and_in_total() -> None:
    """A datagram that would take a worker past max_worker_series, or all past max_tracked_series, is over_limit
    whole; known keys keep counting; an expired worker's state is freed."""
    ingest, store, clock = _ingest(max_worker_series=100, max_tracked_series=150, worker_expiry=30.0)
    n = len(wire.LAYOUTS["request"]) + 1

    def rows(start: int, count: int, hits: int = 1) -> list[list[Any]]:
        return [[f"/r{i}", "GET", "2xx", [hits, *([0] * (n - 1))], 0.001 * hits] for i in range(start, start + count)]

    web = {k: v for k, v in _doc().items() if k != "engines"}
    assert _send(ingest, {**web, "worker": "w:1", "requests": rows(0, 90)}) == "accepted"
    assert ingest.tracked_series == 92  # 90 request rows and the 2 drop reasons
    assert _send(ingest, {**web, "worker": "w:1", "seq": 2, "requests": rows(90, 9)}) == "over_limit"
    assert _send(ingest, {**web, "worker": "w:1", "seq": 3, "requests": rows(0, 90, hits=3)}) == "accepted"
    assert store.counter_value(m.HTTP_REQUESTS, ("shop", "/r5", "GET", "2xx")) == 3
    assert _send(ingest, {**web, "worker": "w:2", "requests": rows(500, 57)}) == "over_limit"  # 92 + 59 > 150
    assert _send(ingest, {**web, "worker": "w:2", "requests": rows(500, 56)}) == "accepted"
    assert ingest.tracked_series == 150
    clock.now += 31
    assert _send(ingest, {**web, "worker": "w:2", "seq": 2, "requests": rows(500, 56)}) == "accepted"
    assert ingest.expire() == 1
    assert ingest.tracked_series == 58
