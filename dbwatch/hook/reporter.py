"""The hook's one sender per process and sidecar: a daemon thread that packs sources into datagrams and sends them.

The app's threads only update counters in memory; this thread reads them on an interval, queues the datagrams
(bounded; oldest dropped and counted) and sends each with a non-blocking send. A sidecar that is away costs the app
one failed syscall per interval, counted as `send_failed`; nothing here ever raises into the app.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any, Final, Protocol

from dbwatch.hook import wire

__all__ = ["Reporter", "Source", "get_reporter", "resolve"]

log = logging.getLogger("dbwatch.hook")

DEFAULT_INTERVAL: Final = 5.0
MAX_QUEUE: Final = 64


class Source(Protocol):
    """Something that reports: an instrumented engine or an ASGI middleware."""

    def report(self) -> wire.Part:
        """What to send this interval; read-only on the app's state."""
        ...

    def alive(self) -> bool:
        """False once the thing measured is gone; the source is dropped after one last report."""
        ...

    def after_fork(self) -> None:
        """Forget everything counted before a fork (the child is a new worker)."""
        ...


class Reporter:
    """Packs every registered source's report into datagrams on an interval and sends them to one sidecar."""

    def __init__(self, addr: wire.Address, app: str, token: str | None, interval: float, *, named: bool = True) -> None:
        self.addr = addr
        self.app = app
        self.named = named  # False: the default app name, which the first name given in this process replaces
        self._token = token
        self.interval = interval
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._sources: list[Source] = []
        self._queue: deque[bytes] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._reset_identity()

    def _reset_identity(self) -> None:
        self.worker = _worker_id()
        self.seq = 0
        self.sent = 0
        self.dropped = dict.fromkeys(wire.DROP_REASONS, 0)
        self._queue.clear()
        self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None

    def add(self, source: Source) -> None:
        """Register a source and make sure the sender thread runs."""
        with self._lock:
            self._sources.append(source)
        self._ensure_thread()

    def sources(self) -> list[Source]:
        """The registered sources, as a copy."""
        with self._lock:
            return list(self._sources)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="dbwatch-hook-sender", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.tick()

    def tick(self) -> None:
        """Build this interval's datagrams, queue them, send what the socket takes; never raises."""
        try:
            with self._tick_lock:
                self._tick()
        except Exception as exc:  # noqa: BLE001 - the sender thread must outlive any bug; logged once per class
            _log_once("sender_error", "dbwatch hook: sender error %s", type(exc).__name__)

    def _tick(self) -> None:
        for dgram in self._build():
            if len(self._queue) >= MAX_QUEUE:
                self._queue.popleft()
                self.dropped["queue_full"] += 1
            self._queue.append(dgram)
        self._flush()

    def _build(self) -> Iterator[bytes]:
        with self._lock:
            sources = list(self._sources)
        engines: list[wire.EngineReport] = []
        rows: list[wire.RequestRow | wire.ExceptionRow] = []
        gone: list[Source] = []
        for src in sources:
            part = src.report()
            engines.extend(part.engines)
            rows.extend(part.requests)
            rows.extend(part.exceptions)
            if not src.alive():
                gone.append(src)
        if gone:
            with self._lock:
                self._sources = [s for s in self._sources if s not in gone]
        head = self._head(tuple(engines))
        batch: list[wire.RequestRow | wire.ExceptionRow] = []
        size = len(wire.encode(head)) + 64
        for row in rows:
            n = wire.row_size(row)
            if size + n > wire.MAX_DATAGRAM and (batch or head.engines is not None):
                yield wire.encode(_with_rows(head, batch))
                head = self._head(None)
                batch = []
                size = len(wire.encode(head)) + 64
            batch.append(row)
            size += n
        yield wire.encode(_with_rows(head, batch))

    def _head(self, engines: tuple[wire.EngineReport, ...] | None) -> wire.Report:
        self.seq += 1
        return wire.Report(
            app=self.app,
            worker=self.worker,
            seq=self.seq,
            interval=self.interval,
            dropped=dict(self.dropped),
            engines=engines,
            token=self._token or None,
        )

    def _flush(self) -> None:
        while self._queue:
            sock = self._socket()
            if sock is None:
                self.dropped["send_failed"] += len(self._queue)
                self._queue.clear()
                return
            try:
                sock.send(self._queue[0])
            except BlockingIOError:
                return  # the socket buffer is full: try again next interval (the queue is bounded)
            except OSError:
                # Sidecar away (ECONNREFUSED, ENOENT, …): drop this datagram, reconnect next time.
                self._queue.popleft()
                self.dropped["send_failed"] += 1
                self._close_socket()
            else:
                self._queue.popleft()
                self.sent += 1

    def _socket(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        try:
            if self.addr.is_unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                target: Any = self.addr.path
            else:
                info = socket.getaddrinfo(self.addr.host, self.addr.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                target = info[4]
            sock.setblocking(False)
            try:
                sock.connect(target)  # connected: the kernel reports a missing sidecar as ECONNREFUSED
            except OSError:
                sock.close()
                return None
        except OSError:
            return None
        self._sock = sock
        return sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def flush(self) -> None:
        """Send a report now (tests, and at interpreter exit)."""
        self.tick()

    def after_fork(self) -> None:
        """In a forked child: new worker identity, no thread yet, counts start from zero."""
        self._lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._wake = threading.Event()
        self._reset_identity()
        for src in self._sources:
            src.after_fork()
        if self._sources:
            self._ensure_thread()


def _with_rows(head: wire.Report, rows: list[wire.RequestRow | wire.ExceptionRow]) -> wire.Report:
    requests = tuple(r for r in rows if isinstance(r, wire.RequestRow))
    exceptions = tuple(r for r in rows if isinstance(r, wire.ExceptionRow))
    return dataclasses.replace(head, requests=requests, exceptions=exceptions)


_SAFE_RE: Final = re.compile(r"[^A-Za-z0-9_.:-]")


def _worker_id() -> str:
    host = _SAFE_RE.sub("_", socket.gethostname())[:48] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


_logged: set[str] = set()


def _log_once(key: str, msg: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(msg, *args)


# One reporter per (sidecar, app, token) in this process; the hook's only process-wide state.
_reporters: dict[tuple[str, str, str | None], Reporter] = {}
_reporters_lock = threading.Lock()
_all: weakref.WeakSet[Reporter] = weakref.WeakSet()


def resolve(
    sidecar: str | None, app: str | None, token: str | None, interval: float | None
) -> tuple[wire.Address, str, str | None, float]:
    """Arguments first, then DBWATCH_HOOK_* environment variables, then defaults; bad values fall back, logged."""
    text = sidecar or os.environ.get("DBWATCH_HOOK_ADDR") or wire.DEFAULT_ADDR
    try:
        addr = wire.parse_address(text)
    except wire.AddressError as exc:
        _log_once(f"addr:{text}", "dbwatch hook: bad sidecar address (%s); using %s", exc, wire.DEFAULT_ADDR)
        addr = wire.parse_address(wire.DEFAULT_ADDR)
    name = app or os.environ.get("DBWATCH_HOOK_APP") or "app"
    if not wire.NAME_RE.fullmatch(name):
        fixed = (_SAFE_RE.sub("_", name).lstrip("_.:-") or "app")[:63]
        _log_once(f"app:{name}", "dbwatch hook: app name is not label-safe; using %s", fixed)
        name = fixed
    if token is None:
        token = os.environ.get("DBWATCH_HOOK_TOKEN") or None
        path = os.environ.get("DBWATCH_HOOK_TOKEN_FILE")
        if token is None and path:
            try:
                with open(path, encoding="utf-8") as f:
                    token = f.read().strip() or None
            except OSError:
                _log_once("token_file", "dbwatch hook: cannot read DBWATCH_HOOK_TOKEN_FILE")
    if interval is None:
        try:
            interval = float(os.environ.get("DBWATCH_HOOK_INTERVAL", DEFAULT_INTERVAL))
        except ValueError:
            interval = DEFAULT_INTERVAL
    return addr, name, token, max(0.05, interval)


def get_reporter(
    sidecar: str | None = None, app: str | None = None, token: str | None = None, interval: float | None = None
) -> Reporter:
    """The process's reporter for this sidecar and app, created on first use.

    A process reports as one app: a source given no app name (argument or DBWATCH_HOOK_APP) joins the app this
    process named (`instrument(engine, app="myapp")` plus a bare `DbwatchASGIMiddleware` is one app, `myapp`, in
    either order of set-up); only with no name anywhere is it `app`.
    """
    addr, name, tok, ival = resolve(sidecar, app, token, interval)
    explicit = bool(app or os.environ.get("DBWATCH_HOOK_APP"))
    with _reporters_lock:
        peers = [r for (a, _n, t), r in _reporters.items() if a == str(addr) and t == tok]
        named = [r for r in peers if r.named]
        rep = _reporters.get((str(addr), name, tok))
        if not explicit and len(named) == 1:
            rep = named[0]
        elif rep is None:
            unnamed = next((r for r in peers if not r.named), None)
            if explicit and unnamed is not None and not named:  # the first name given takes over the default one
                del _reporters[(str(addr), unnamed.app, tok)]
                unnamed.app = name
                rep = unnamed
            else:
                rep = Reporter(addr, name, tok, ival, named=explicit)
                _all.add(rep)
            _reporters[(str(addr), name, tok)] = rep
        rep.named = rep.named or explicit
        rep.interval = min(rep.interval, ival)
        return rep


def _after_fork_in_child() -> None:
    global _reporters_lock  # noqa: PLW0603 - a lock held by another thread at fork time must be replaced
    _reporters_lock = threading.Lock()
    for rep in list(_all):
        rep.after_fork()


def _at_exit() -> None:
    deadline = time.monotonic() + 0.5
    for rep in list(_all):
        if time.monotonic() > deadline:
            break
        rep.flush()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
