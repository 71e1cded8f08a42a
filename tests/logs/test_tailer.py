"""Tailing: rotation by rename+create and copytruncate (with the cases mtail loses), restarts, the daemon path.

Each scenario runs for every format: 0 lines lost, 0 doubled. The tailer's `cycle()` is driven by the test, so
nothing depends on timing; the daemon test at the end polls /metrics with `eventually`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.logs.source import SourceTailer
from dbwatch.store import Store
from tests.helpers import eventually, running, sample
from tests.logs import corpus, wrap

FORMATS = ("plain", "json", "cri", "docker")
PER_BLOCK = 2 * 3 + 4  # counted exceptions per block: two groups of three leaves, four single exceptions


def _unique(fmt: str, n: int) -> bytes:
    """A first line unique to block n, in the format (a rotated file's identity is its first line)."""
    if fmt == "plain":
        return f"2026-01-02 03:04:{n % 60:02d},000 INFO [app] block {n}\n".encode()
    if fmt == "json":
        return json.dumps({"event": f"block {n}", "level": "info"}).encode() + b"\n"
    if fmt == "cri":
        return wrap.cri([("stdout", f"block {n}")]).encode()
    return wrap.docker([("stdout", f"block {n}")]).encode()


@pytest.fixture(scope="module")
def blocks(log_corpus: dict[str, Path]) -> dict[str, bytes]:
    return {fmt: log_corpus[fmt].read_bytes() for fmt in FORMATS}


class Rig:
    """A source on one file in a temp dir, a store, and a tailer that the test drives cycle by cycle."""

    def __init__(self, tmp: Path, fmt: str, blocks: dict[str, bytes], state: Path | None = None) -> None:
        self.dir = tmp
        self.fmt = fmt
        self.path = tmp / "app.log"
        self.blocks = blocks
        self.n = 0
        self.state = state
        self.stores: list[Store] = []
        self.new_tailer()

    def new_tailer(self) -> None:
        logs: dict[str, object] = {"sources": [{"name": "app", "path": str(self.path), "format": self.fmt}]}
        if self.state is not None:
            logs["state_dir"] = str(self.state)
        cfg = from_mapping({"logs": logs})
        self.stores.append(Store())
        self.tailer = SourceTailer(cfg.logs.sources[0], cfg.logs, self.stores[-1])

    async def settle(self) -> None:
        """A cycle after the file has been quiet a moment: records at its end are final."""
        await asyncio.sleep(0.02)
        await self.tailer.cycle()

    def block(self) -> bytes:
        self.n += 1
        return _unique(self.fmt, self.n) + self.blocks[self.fmt]

    def write(self, data: bytes, path: Path | None = None) -> None:
        with (path or self.path).open("ab") as f:
            f.write(data)

    def counted(self) -> float:
        return sum(v for s in self.stores for k, v in s._counters.get(m.LOG_EXCEPTIONS, {}).items() if k[0] == "app")


@pytest.mark.parametrize("fmt", FORMATS)
async def test_rename_create_reads_the_old_file_to_its_end(tmp_path: Path, fmt: str, blocks: dict[str, bytes]) -> None:
    """Lines appended before the rename and through the old descriptor after it are all read, then the new file."""
    rig = Rig(tmp_path, fmt, blocks)
    rig.write(rig.block())
    await rig.tailer.cycle()
    rig.write(rig.block())  # not read yet when the rotation happens
    old = rig.path.open("ab")
    os.rename(rig.path, tmp_path / "app.log.1")
    old.write(rig.block())  # the app still writes to its old descriptor for a moment
    old.close()
    rig.write(rig.block())  # the new file
    await rig.tailer.cycle()
    await rig.settle()
    assert rig.counted() == 4 * PER_BLOCK
    assert rig.stores[0].counter_value(m.LOG_ROTATIONS, ("app", "rename")) == 1


@pytest.mark.parametrize("fmt", FORMATS)
async def test_copytruncate_recovers_lines_appended_before_the_truncate(
    tmp_path: Path, fmt: str, blocks: dict[str, bytes]
) -> None:
    """logrotate copytruncate: what was appended after our last read is in the copy; we read it from there."""
    rig = Rig(tmp_path, fmt, blocks)
    rig.write(rig.block())
    await rig.tailer.cycle()
    rig.write(rig.block())  # appended just before the rotation: only the copy has it afterwards
    shutil.copyfile(rig.path, tmp_path / "app.log.1")
    os.truncate(rig.path, 0)
    rig.write(rig.block())
    await rig.tailer.cycle()
    await rig.settle()
    assert rig.counted() == 3 * PER_BLOCK
    assert rig.stores[0].counter_value(m.LOG_ROTATIONS, ("app", "truncate")) == 1


@pytest.mark.parametrize("fmt", FORMATS)
async def test_truncate_followed_by_a_longer_write(tmp_path: Path, fmt: str, blocks: dict[str, bytes]) -> None:
    """Truncated, then at once more written than the old file held: the size never looks smaller; all counted."""
    rig = Rig(tmp_path, fmt, blocks)
    rig.write(rig.block())
    await rig.tailer.cycle()
    os.truncate(rig.path, 0)
    rig.write(rig.block() + rig.block() + rig.block())
    await rig.tailer.cycle()
    await rig.settle()
    assert rig.counted() == 4 * PER_BLOCK


@pytest.mark.parametrize("fmt", FORMATS)
async def test_restart_resumes_where_the_unfinished_record_starts(
    tmp_path: Path, fmt: str, blocks: dict[str, bytes]
) -> None:
    """Stopped in the middle of a traceback: the new process re-reads that record only; nothing lost or doubled."""
    state = tmp_path / "state"
    state.mkdir()
    rig = Rig(tmp_path, fmt, blocks, state)
    second = rig.block()
    cut = second.find(b"Traceback (most recent call last)", len(second) // 2) + 60
    rig.write(rig.block() + second[:cut])
    await rig.tailer.cycle()
    rig.tailer.save(force=True)
    saved = json.loads((state / "app.positions.json").read_text())
    assert saved["files"][0]["offset"] < rig.path.stat().st_size  # the unfinished record is not committed
    rig.new_tailer()  # a restarted dbwatch
    rig.write(second[cut:] + rig.block())
    await rig.tailer.cycle()
    await rig.settle()
    rig.tailer.save(force=True)
    assert rig.counted() == 3 * PER_BLOCK
    assert not list(state.glob("*.tmp"))


async def test_daemon_tails_a_source_and_serves_the_counts(tmp_path: Path, log_corpus: dict[str, Path]) -> None:
    """`logs:` in the config: the server's cleanup context runs the tailer; appends show up on /metrics."""
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    raw = {"logs": {"sources": [{"name": "web", "path": str(path)}], "poll_interval": "5s"}}
    async with running(raw) as d:
        body = await d.metrics()
        assert sample(body, "dbwatch_log_exceptions_total", {"source": "web", "category": "missing_greenlet"}) == 0
        with path.open("ab") as f:
            f.write(log_corpus["plain"].read_bytes())

        async def counted() -> bool:
            return _total(await d.metrics(), "web") == PER_BLOCK

        await eventually(counted, timeout=10)
        body = await d.metrics()
        assert sample(body, "dbwatch_log_lines_total", {"source": "web"}) == len(
            log_corpus["plain"].read_text().splitlines()
        )
        assert sample(body, "dbwatch_log_files", {"source": "web"}) == 1
        status, health = await d.get("/healthz")
        assert status == 200, health


def _total(body: str, source: str) -> float:
    """Sum of dbwatch_log_exceptions_total over every series of a source."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == "dbwatch_log_exceptions_total" and s.labels.get("source") == source
    )


def test_sample_app_lines_resolve() -> None:
    assert corpus.sampleapp.marker_line("leaf") > 0


async def test_a_large_backlog_is_read_in_slices_that_yield(tmp_path: Path, blocks: dict[str, bytes]) -> None:
    """16 MB appended at once: other tasks on the loop (scrapes, probes) run between slices; all of it is counted.

    How long a slice takes is shown by bench/logs.py (/metrics latency while a backlog is read), not timed here.
    """
    rig = Rig(tmp_path, "plain", blocks)
    filler = b"2026-01-02 03:04:05,000 INFO [app.access] GET /items 200\n" * 20_000
    n = 0
    while rig.path.exists() is False or rig.path.stat().st_size < 16 << 20:
        rig.write(rig.block() + filler)
        n += 1
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await rig.tailer.cycle()
    finally:
        stop.set()
        await task
    await rig.settle()
    assert rig.counted() == n * PER_BLOCK
    assert ticks >= 16  # at least once per MiB read: the read never holds the loop for the whole backlog
