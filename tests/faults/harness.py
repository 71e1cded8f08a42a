"""Fault tooling shared by tests/faults and bench/soak.py: a port that never answers, an isolated resolver, a daemon.

Everything listens on 127.0.0.1. The DNS fault uses a name under `.invalid` (RFC 6761) and runs dbwatch in a
private mount namespace whose /etc/resolv.conf points at 127.0.0.1, so not even the failing lookup leaves the box.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from dbwatch.pgcluster import free_port
from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[2]
UNRESOLVABLE_HOST = "db.dbwatch-faults.invalid"


class Blackhole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte; closes on client EOF."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="blackhole", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self._sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        self._sel.register(conn, selectors.EVENT_READ)
                        self.accepted += 1
                    continue
                try:
                    data = sock.recv(65536)  # read and drop the startup packet; answer nothing, ever
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(sock)
                    sock.close()


def resolver_isolation() -> list[str] | None:
    """argv prefix running a command with /etc/resolv.conf -> 127.0.0.1 in a private mount namespace, or None."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        return None
    conf = Path(tempfile.gettempdir()) / "dbwatch-faults-resolv.conf"
    conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    prefix = [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{conf}" /etc/resolv.conf && exec "$@"',
        "sh",
    ]
    check = subprocess.run([*prefix, "cat", "/etc/resolv.conf"], capture_output=True, text=True, check=False)
    return prefix if check.returncode == 0 and "127.0.0.1" in check.stdout else None


class DaemonProcess:
    """`dbwatch run` as a child process on a loopback port, its stdout kept in a file."""

    def __init__(self, config: dict[str, Any], *, prefix: list[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dbwatch-faults-"))
        self.port = free_port()
        self.config_path = self.dir / "dbwatch.yaml"
        self.config_path.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{self.port}", **config}))
        self.log_path = self.dir / "dbwatch.log"
        self._prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        argv = [*self._prefix, sys.executable, "-m", "dbwatch", "run", "--config", str(self.config_path)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if self.get("/healthz")[0] == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dbwatch did not start:\n" + self.output())
            time.sleep(0.1)

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:  # noqa: S310 - loopback URL
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit code."""
        if self.proc is None:
            return 0
        return stop_process(self.proc, 15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd"))
