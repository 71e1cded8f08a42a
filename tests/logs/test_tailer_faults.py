"""The tailer under faults: cancellation racing a wake-up, short writes of positions, corrupt positions, symlinks,
several rotated copies. Real files, real inotify; the faults come from the kernel (RLIMIT_FSIZE) or from the disk."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.logs.positions import Positions
from dbwatch.logs.source import SourceTailer
from dbwatch.store import Store
from tests.faults.test_log_input import TB
from tests.helpers import REPO, eventually

LINE = b"2026-01-02 03:04:05,678 INFO [app] hello\n"


def _tailer(path: Path, state: Path | None = None, **source: object) -> tuple[SourceTailer, Store]:
    logs: dict[str, object] = {"sources": [{"name": "app", "path": str(path), "format": "plain", **source}]}
    if state is not None:
        logs["state_dir"] = str(state)
    cfg = from_mapping({"logs": logs})
    store = Store()
    return SourceTailer(cfg.logs.sources[0], cfg.logs, store), store


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_cancel_in_the_turn_the_wakeup_lands_stops_the_tailer(tmp_path: Path, turns: int) -> None:
    """A wake-up (inotify) and the cancellation `turns` loop turns apart: the task ends either way (3.11 too)."""
    path = tmp_path / "app.log"
    path.write_bytes(LINE)
    tailer, _store = _tailer(path)
    task = asyncio.create_task(tailer.run())
    await eventually(lambda: tailer.cycles >= 1 and tailer.follower.inotify is not None)
    await asyncio.sleep(0.05)  # the first cycle is done: the task waits for a change
    assert tailer.follower.inotify is not None
    tailer.follower.inotify.changed.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done, "the cancellation was swallowed: the tailer keeps running"


# Saves positions with the file-size limit set: the kernel makes the write short, then refuses the rest (EFBIG).
_SHORT_WRITE = """
import resource, signal, sys
from dbwatch.logs.positions import Positions
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
entry = {"dev": 1, "offset": 10, "line": 2, "fp": "0a", "format": "plain"}
entries = [{"path": "/var/log/app-%d.log" % i, "ino": i, **entry} for i in range(100)]
resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
try:
    Positions(sys.argv[1], "app").save(entries)
except OSError as exc:
    print("refused", exc.errno)
else:
    print("saved")
"""


def _counted(store: Store) -> float:
    return sum(v for k, v in store._counters.get(m.LOG_EXCEPTIONS, {}).items() if k[0] == "app")


def test_a_short_write_never_leaves_a_corrupt_positions_file(tmp_path: Path) -> None:
    """A save cut short by the kernel (RLIMIT_FSIZE: a short write, then EFBIG) fails whole: the old file stays."""
    good = [{"path": "/var/log/app.log", "dev": 1, "ino": 2, "offset": 3, "line": 4, "fp": "0a", "format": "plain"}]
    Positions(str(tmp_path), "app").save(good)
    out = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path)], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.split()[0] == "refused", out.stdout + out.stderr
    p = Positions(str(tmp_path), "app")
    assert p.load() == good
    assert not p.corrupt
    assert sorted(x.name for x in tmp_path.iterdir()) == ["app.positions.json"]  # no temp file left behind


def test_the_temp_file_is_never_a_planted_symlink(tmp_path: Path) -> None:
    """A symlink at the temp name (a shared state volume) is replaced, never written through."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "app.positions.json.tmp").symlink_to(victim)
    Positions(str(tmp_path), "app").save([])
    assert victim.read_text() == "keep me"
    assert json.loads((tmp_path / "app.positions.json").read_text())["files"] == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_shape", "symlink"])
async def test_a_corrupt_positions_file_never_causes_a_recount(tmp_path: Path, damage: str) -> None:
    """500 tracebacks counted, the positions file damaged, a restart: nothing counted again, the damage counted,
    the file set aside, and what is written afterwards is counted."""
    path = tmp_path / "app.log"
    path.write_text(TB * 500)
    state = tmp_path / "state"
    state.mkdir()
    tailer, store = _tailer(path, state)
    await tailer.cycle()
    await asyncio.sleep(0.02)
    await tailer.cycle()
    tailer.save(force=True)
    assert _counted(store) == 500
    saved = state / "app.positions.json"
    body = saved.read_bytes()
    if damage == "truncated":
        saved.write_bytes(body[: len(body) // 2])
    elif damage == "garbage":
        saved.write_bytes(os.urandom(200))
    elif damage == "wrong_shape":
        saved.write_text(json.dumps({"version": 1, "files": [{"dev": "x"}]}))
    else:
        saved.unlink()
        saved.symlink_to(tmp_path / "elsewhere.json")
        (tmp_path / "elsewhere.json").write_bytes(body)
    tailer, store = _tailer(path, state)  # a restarted dbwatch
    await tailer.cycle()
    await asyncio.sleep(0.02)
    await tailer.cycle()
    assert _counted(store) == 0
    assert store.counter_value(m.LOG_POSITIONS_RESET, ("app",)) == 1
    assert (state / "app.positions.json.corrupt").exists()
    with path.open("a") as f:
        f.write(TB)
    await tailer.cycle()
    await asyncio.sleep(0.02)
    await tailer.cycle()
    assert _counted(store) == 1
    tailer.save(force=True)
    assert Positions(str(state), "app").load()[0]["offset"] == path.stat().st_size


async def test_a_symlink_in_a_watched_folder_is_followed_only_where_the_source_opts_in(tmp_path: Path) -> None:
    """`logs/*.log` with `evil.log -> outside/secret.log`: skipped (and warned once) by default, read with
    `follow_symlinks: true`; the real file is read either way."""
    d = tmp_path / "logs"
    d.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.log").write_text(TB * 3)
    (d / "evil.log").symlink_to(outside / "secret.log")
    (d / "app.log").write_text(TB)
    for follow, want in ((False, 1), (True, 4)):
        tailer, store = _tailer(d / "*.log", follow_symlinks=follow)
        with capture_logs() as logs:
            await tailer.cycle()
            await asyncio.sleep(0.02)
            await tailer.cycle()
        assert _counted(store) == want
        skipped = [e for e in logs if e["event"] == "log_symlink_skipped"]
        assert len(skipped) == (0 if follow else 1)
        assert store.counter_value(m.LOG_FILE_ERRORS, ("app",)) == 0


async def test_copytruncate_with_copies_sharing_a_first_line_reads_the_newest(tmp_path: Path) -> None:
    """Every period starts with the same banner, so three rotated copies share a first line; at each truncate the
    lines appended after the last read come from the newest copy (dateext names: the oldest sorts first)."""
    banner = "2026-01-02 03:04:05,000 INFO [app] service starting\n"
    path = tmp_path / "app.log"
    tailer, store = _tailer(path)
    written = 0
    for k in range(1, 4):
        read_now, later = TB * (10 - k), TB * (2 * k)
        path.write_text(banner + read_now)
        written += 10 - k
        await tailer.cycle()
        with path.open("a") as f:
            f.write(later)  # appended after the last read: only the copy has it once truncated
        written += 2 * k
        copy = tmp_path / f"app.log-2026010{k}"
        shutil.copyfile(path, copy)
        os.utime(copy, ns=(k * 10**18, k * 10**18))
        os.truncate(path, 0)
        await tailer.cycle()
    await asyncio.sleep(0.02)
    await tailer.cycle()
    assert _counted(store) == written
