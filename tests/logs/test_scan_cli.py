"""`dbwatch scan` end to end: the JSON report's exact shape, the text report, --help, exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.helpers import run_cli
from tests.logs import corpus

EVENT_KEYS = {
    "first_line",
    "last_line",
    "timestamp",
    "logger",
    "final_class",
    "root_class",
    "chain",
    "category",
    "location",
    "leaves",
}


def test_scan_json_shape(log_corpus: dict[str, Path]) -> None:
    proc = run_cli("scan", "--json", str(log_corpus["plain"]), str(log_corpus["cri"]))
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert set(report) == {"files", "summary"}
    assert set(report["summary"]) == {"by_category", "by_final_class", "by_root_class"}
    for name, fmt in ((log_corpus["plain"], "plain"), (log_corpus["cri"], "cri")):
        f = report["files"][str(name)]
        assert set(f) == {"format", "lines", "events"}
        assert f["format"] == fmt
        assert f["lines"] == len(name.read_text().splitlines())
        assert len(f["events"]) == len(corpus.ORDER)
        for ev in f["events"]:
            assert set(ev) == EVENT_KEYS
            assert set(ev["location"]) == {"path", "line", "function", "label"}
            for leaf in ev["leaves"]:
                assert set(leaf) == {"class", "category", "location"}
        group = f["events"][2]
        assert group["final_class"] == "ExceptionGroup"
        assert [lf["class"] for lf in group["leaves"]] == ["TypeError"] * 3
    # per counted unit: 2 groups x 3 leaves + 4 plain events, all in category other
    assert report["summary"]["by_category"]["other"] == 2 * (2 * 3 + 4)
    assert report["summary"]["by_final_class"] == {"ValueError": 6, "ExceptionGroup": 4, "RuntimeError": 2}
    assert report["summary"]["by_category"]["missing_greenlet"] == 0


def test_scan_text_report_and_progress_only_on_a_tty(log_corpus: dict[str, Path]) -> None:
    proc = run_cli("scan", str(log_corpus["docker"]), "--app-root", str(Path(corpus.__file__).parent))
    assert proc.returncode == 0
    assert "format docker" in proc.stdout
    assert "by category:" in proc.stdout
    assert "sampleapp.py" in proc.stdout
    assert proc.stderr == ""  # not a terminal: no progress bar


def test_scan_help_and_bad_usage(tmp_path: Path) -> None:
    proc = run_cli("scan", "--help")
    assert proc.returncode == 0
    assert "--app-package" in proc.stdout
    assert "--json" in proc.stdout
    assert run_cli("scan").returncode == 2
    missing = run_cli("scan", str(tmp_path / "nope.log"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


def test_progress_bar_on_stderr_when_it_is_a_terminal(tmp_path: Path, log_corpus: dict[str, Path]) -> None:
    """A file over 8 MB scanned with stderr on a pty: a bar that reaches 100%; stdout keeps the report."""
    big = tmp_path / "big.log"
    with big.open("wb") as f:
        f.write(log_corpus["plain"].read_bytes())
        f.write(b"2026-01-02 03:04:05,000 INFO [app.access] GET /items 200\n" * 160_000)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dbwatch", "scan", str(big)],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        err = b""
        while True:
            try:
                piece = os.read(master, 65536)
            except OSError:  # EIO: the pty's other side is closed and drained
                break
            if not piece:
                break
            err += piece
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert "format plain" in proc.stdout
    text = err.decode()
    assert "scan big.log: [" in text
    assert "100.0%" in text


def test_scan_refuses_a_fifo_and_a_device(tmp_path: Path) -> None:
    """A FIFO with no writer and /dev/zero would never end: refused at once with a clear message, exit 1."""
    fifo = tmp_path / "app.fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device or socket"), (tmp_path, "a directory")):
        proc = run_cli("scan", str(path), timeout=20)
        assert proc.returncode == 1
        assert f"dbwatch scan: refusing {path}: {kind}, not a regular file" in proc.stderr
