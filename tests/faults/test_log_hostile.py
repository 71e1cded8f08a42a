"""Hostile log records against the stated bounds (README, Log watching: bounds): a real daemon, RSS from /proc.

- 300 distinct ~1 MB tracebacks: the daemon's RSS grows by at most RSS_PER_SOURCE; `dbwatch scan` peaks under
  SCAN_PEAK (nothing is kept per event but its verdict, and the JSON report is streamed).
- exception groups 700 deep (~1 MB each): /healthz keeps answering within 100 ms while they are read.
- a group 1,000 deep (past MAX_GROUP_DEPTH) under a 4 MiB record cap: a parse error, and the next record counts.
- anything one record raises is a parse error, logged once, and reading goes on past it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

import yaml
from structlog.testing import capture_logs

from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.logs.formats import Splitter
from dbwatch.logs.positions import Positions
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.source import SourceTailer
from dbwatch.logs.traceback import MAX_GROUP_DEPTH
from dbwatch.store import Store
from tests.faults.harness import DaemonProcess, rss_bytes
from tests.faults.test_log_input import TB, _scan_stdin

MIB = 1 << 20
RSS_PER_SOURCE = 48 * MIB  # README: RSS per log source at the default caps
SCAN_PEAK = 64 * MIB  # README: `dbwatch scan` peak RSS at the default caps
HEALTHZ_BUDGET = 0.1


def big_traceback(i: int) -> bytes:
    """A distinct traceback of ~0.97 MB (under the 1 MiB record cap): 50 frames, a message of 7 long lines."""
    frames = "".join(f'  File "/srv/app/mod{k}.py", line {i + k}, in f{k}\n    call_{k}({i})\n' for k in range(50))
    line = f"{i:06d} " + "y" * 139_990
    return (
        f"2026-01-02 03:04:05,678 ERROR [app.jobs] job {i} failed\n"
        "Traceback (most recent call last):\n"
        f"{frames}app.errors.JobFailed: {line}\n" + f"{line}\n" * 6 + f"2026-01-02 03:04:06,000 INFO [app] after {i}\n"
    ).encode()


def deep_group(depth: int) -> bytes:
    """An exception group nested `depth` levels (one sub-exception each), as Python's traceback module draws it."""
    out = [
        "2026-01-02 03:04:05,678 ERROR [app.tasks] task group failed",
        "  + Exception Group Traceback (most recent call last):",
        '  |   File "/srv/app/tasks.py", line 5, in run',
        "  |     async with asyncio.TaskGroup() as tg:",
        f"  | ExceptionGroup: level {depth} (1 sub-exception)",
    ]
    for d in range(1, depth):
        pad = " " * (2 * d)
        out.append(f"{pad}+-+---------------- 1 ----------------")
        out.append(f"{pad}  | ExceptionGroup: level {depth - d} (1 sub-exception)")
    pad = " " * (2 * depth)
    out += [f"{pad}+-+---------------- 1 ----------------", f"{pad}  | ValueError: leaf", f"{pad}  +" + "-" * 36]
    return ("\n".join(out) + "\n").encode()


def _daemon(tmp: Path, **logs: object) -> tuple[DaemonProcess, Path]:
    d = DaemonProcess({})
    (d.dir / "state").mkdir()
    log = d.dir / "app.log"
    log.write_bytes(TB.encode() * 20)  # warms every path once, so the baseline RSS includes the code
    cfg: dict[str, object] = {
        "state_dir": str(d.dir / "state"),
        "sources": [{"name": "app", "path": str(log), "format": "plain"}],
    }
    cfg.update(logs)
    d.config_path.write_text(d.config_path.read_text() + yaml.safe_dump({"logs": cfg}))
    return d, log


def _sample(body: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == name and s.labels.get("source") == "app"
    )


def _wait(d: DaemonProcess, name: str, value: float, timeout: float, during: object = None) -> None:
    deadline = time.monotonic() + timeout
    while _sample(d.get("/metrics")[1], name) < value:
        if callable(during):
            during()
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        time.sleep(0.05)


def test_300_distinct_1mb_tracebacks_keep_the_daemon_within_its_rss_bound(tmp_path: Path) -> None:
    """The parse cache is bounded in bytes and skips texts over 64 KiB: ~300 MB of distinct tracebacks, flat RSS."""
    d, log = _daemon(tmp_path)
    try:
        d.start()
        _wait(d, "dbwatch_log_exceptions_total", 20, 10)
        base = rss_bytes(d.pid)
        peak = base

        def watch() -> None:
            nonlocal peak
            peak = max(peak, rss_bytes(d.pid))

        with log.open("ab") as f:
            for i in range(300):
                f.write(big_traceback(i))
                if i % 10 == 0:
                    watch()
        _wait(d, "dbwatch_log_exceptions_total", 320, 120, during=watch)
        watch()
        grew = peak - base
        print(f"RSS base {base / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, growth {grew / MIB:.1f} MiB")
        assert grew <= RSS_PER_SOURCE, f"RSS grew by {grew / MIB:.1f} MiB (bound {RSS_PER_SOURCE / MIB:.0f} MiB)"
    finally:
        d.cleanup()


def test_scan_of_300_distinct_1mb_tracebacks_peaks_within_its_bound() -> None:
    """`dbwatch scan --json -` over the same ~300 MB: every event reported, peak RSS under SCAN_PEAK."""

    def write(pipe: IO[bytes]) -> None:
        for i in range(300):
            pipe.write(big_traceback(i))

    report, rss = _scan_stdin(write)
    events = report["files"]["-"]["events"]
    assert len(events) == 300
    assert {e["final_class"] for e in events} == {"app.errors.JobFailed"}
    print(f"scan peak RSS {rss / MIB:.1f} MiB")
    assert rss < SCAN_PEAK, f"peak RSS {rss / MIB:.1f} MiB"


def test_healthz_answers_in_time_while_700_deep_groups_are_read(tmp_path: Path) -> None:
    """20 groups 700 deep (~1 MB each) appended at once: /healthz polled all along answers within 100 ms."""
    record = deep_group(700)
    assert 0.9 * MIB < len(record) < MIB
    d, log = _daemon(tmp_path)
    try:
        d.start()
        _wait(d, "dbwatch_log_exceptions_total", 20, 10)
        worst = 0.0
        polls = 0
        stop = threading.Event()

        def poll() -> None:
            nonlocal worst, polls
            while not stop.is_set():
                t0 = time.perf_counter()
                with urllib.request.urlopen(d.base + "/healthz", timeout=5) as r:  # noqa: S310 - loopback URL
                    assert r.status == 200
                worst = max(worst, time.perf_counter() - t0)
                polls += 1
                time.sleep(0.01)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with log.open("ab") as f:
                f.write(record * 20 + TB.encode())
            _wait(d, "dbwatch_log_exceptions_total", 21, 60)
        finally:
            stop.set()
            poller.join()
        print(f"/healthz worst {worst * 1000:.1f} ms over {polls} polls")
        assert polls >= 5
        assert worst < HEALTHZ_BUDGET, f"/healthz took {worst * 1000:.0f} ms"
        body = d.get("/metrics")[1]
        assert _sample(body, "dbwatch_log_parse_errors_total") == 20  # deeper than MAX_GROUP_DEPTH: refused
    finally:
        d.cleanup()


async def test_a_1000_deep_group_is_a_parse_error_and_the_next_record_counts(tmp_path: Path) -> None:
    """Past MAX_GROUP_DEPTH under a 4 MiB record cap: one parse error, no RecursionError, the position moves past it."""
    assert MAX_GROUP_DEPTH < 1000
    path = tmp_path / "app.log"
    path.write_bytes(deep_group(1000) + TB.encode())
    state = tmp_path / "state"
    state.mkdir()
    cfg = from_mapping(
        {
            "logs": {
                "state_dir": str(state),
                "max_record_bytes": 4 * MIB,
                "sources": [{"name": "app", "path": str(path), "format": "plain"}],
            }
        }
    )
    store = Store()
    tailer = SourceTailer(cfg.logs.sources[0], cfg.logs, store)
    await tailer.cycle()
    await asyncio.sleep(0.02)
    await tailer.cycle()
    tailer.save(force=True)
    assert store.counter_value(m.LOG_PARSE_ERRORS, ("app",)) == 1
    assert sum(v for k, v in store._counters[m.LOG_EXCEPTIONS].items() if k[1] == "missing_greenlet") == 1
    assert Positions(str(state), "app").load()[0]["offset"] == path.stat().st_size


def test_an_exception_from_one_record_is_a_parse_error_logged_once() -> None:
    """The sink raises on the first two events (a bug anywhere downstream): both counted, one log line, and the
    records after them are still delivered."""
    seen: list[Event] = []

    def sink(event: Event) -> None:
        seen.append(event)
        if len(seen) <= 2:
            raise KeyError("boom")

    stats = Stats()
    with capture_logs() as logs:
        sp = Splitter("plain", sink, stats)
        sp.feed(TB.encode() * 5)
        sp.flush()
    assert len(seen) == 5
    assert stats.parse_errors == 2
    assert [e["event"] for e in logs] == ["log_record_failed"]
    assert logs[0]["error"] == "KeyError"
