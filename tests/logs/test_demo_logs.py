"""`dbwatch demo` tails its workload's logs: the live figures show MissingGreenlet/DetachedInstanceError counted at
the workload's own code lines (real SQLAlchemy errors, logged through logging and structlog)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from dbwatch import demo_workload
from tests.helpers import demo_process


def _line(marker: str) -> int:
    for i, text in enumerate(Path(demo_workload.__file__).read_text().splitlines(), 1):
        if marker in text:
            return i
    raise LookupError(marker)


def test_demo_prints_logged_exceptions_with_their_code_lines() -> None:
    """On psycopg 3 (`--driver psycopg`; the other demo tests run on asyncpg): the same categories at the same lines,
    though psycopg's dialect wraps the MissingGreenlet in a StatementError."""
    greenlet = f"missing_greenlet=\\d+ at dbwatch/demo_workload.py:{_line('# MissingGreenlet')}"
    detached = f"lazy_load=\\d+ at dbwatch/demo_workload.py:{_line('# DetachedInstanceError')}"
    proc = demo_process("--listen", "127.0.0.1:0", "--duration", "60", "--interval", "1", "--driver", "psycopg")
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 50
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(greenlet, line) and re.search(detached, line):
                break
            assert time.monotonic() < deadline, "".join(seen[-20:])
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert re.search(greenlet, "".join(seen)), "".join(seen[-20:])
    assert "cluster removed" in rest
    assert any("async SQLAlchemy on psycopg" in line for line in seen)
