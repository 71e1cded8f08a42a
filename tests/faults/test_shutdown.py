"""SIGTERM while a scraper keeps its connection open and a watched directory keeps changing: the daemon exits in time.

On Python 3.11 `asyncio.wait_for` returns the inner result instead of raising when the cancellation arrives in the
same loop turn as the inner wait finishing; the tailer's inotify wait used it, so a write during shutdown made the
cancellation vanish and the process never exited. A writer thread here keeps the directory busy for the whole stop.
"""

from __future__ import annotations

import http.client
import subprocess
import threading
import time

from tests.faults.harness import DaemonProcess

# README: "shutdown completes within 10 s" (5 s for requests in flight, then the cleanup steps).
SHUTDOWN_SECONDS = 10.0
SOURCES = 16  # tailers on the same directory: each stop is a chance to lose the cancellation


def test_sigterm_exits_in_time_with_keepalive_scraper_and_writes_during_shutdown() -> None:
    """A keep-alive /metrics client and a line written every ~0.1 ms to the watched file while SIGTERM is handled."""
    d = DaemonProcess({})
    logdir = d.dir / "logs"
    logdir.mkdir()
    (d.dir / "state").mkdir()
    target = logdir / "app.log"
    target.write_text("2026-01-02 03:04:05,678 INFO [app] start\n")
    d.config_path.write_text(
        d.config_path.read_text()
        + f"logs:\n  state_dir: {d.dir / 'state'}\n  poll_interval: 1s\n  sources:\n"
        + "".join(f"  - name: app{i}\n    path: {logdir / '*.log'}\n    format: plain\n" for i in range(SOURCES))
    )
    stop = threading.Event()

    def write() -> None:
        with target.open("a") as f:
            n = 0
            while not stop.is_set():
                f.write(f"2026-01-02 03:04:05,678 INFO [app] line {n}\n")
                f.flush()
                n += 1
                time.sleep(0.00005)

    writer = threading.Thread(target=write)
    try:
        d.start()
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().read()
        writer.start()
        time.sleep(0.3)
        assert d.proc is not None
        started = time.monotonic()
        d.proc.terminate()
        exited = True
        try:
            d.proc.wait(SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            exited = False
        took = time.monotonic() - started
        stop.set()
        conn.close()
        assert exited, f"still running {took:.1f}s after SIGTERM:\n{d.output()[-3000:]}"
        assert d.proc.returncode == 0, d.output()[-3000:]
        assert "server_stopped" in d.output()
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        d.cleanup()
