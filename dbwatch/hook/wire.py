"""The hook's datagram format (version 1), shared by the in-app sender and the sidecar's ingest; stdlib only.

One datagram is one UTF-8 JSON object. Counters and histogram buckets are cumulative since the worker process
started, so a lost datagram loses nothing: the next one carries the totals. README.md documents every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from dbwatch import labels
from dbwatch.metrics import (
    HTTP_BUCKETS,
    POOL_AGE_BUCKETS,
    POOL_CONNECT_BUCKETS,
    POOL_HELD_BUCKETS,
    POOL_WAIT_BUCKETS,
)

__all__ = [
    "COUNTERS",
    "DEFAULT_ADDR",
    "FINDINGS",
    "GAUGES",
    "HISTS",
    "LAYOUTS",
    "NAME_RE",
    "SETTINGS",
    "VERSION",
    "Address",
    "AddressError",
    "parse_address",
]

VERSION: Final = 1
DEFAULT_PORT: Final = 9840
DEFAULT_ADDR: Final = f"127.0.0.1:{DEFAULT_PORT}"
# Largest datagram the hook sends; the sidecar accepts up to its hook.max_datagram_bytes.
MAX_DATAGRAM: Final = 60_000

# App, engine and worker names: label-safe, bounded length.
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
WORKER_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

GAUGES: Final = ("checked_out", "idle", "overflow", "waiting")
COUNTERS: Final = (
    "connects_ok",
    "connects_error",
    "checkouts",
    "checkins",
    "invalidations_hard",
    "invalidations_soft",
    "resets",
    "checkout_timeouts",
)
SETTINGS: Final = ("size", "max_overflow", "timeout_seconds", "recycle_seconds", "pre_ping")
FINDINGS: Final = ("static_pool_async", "expire_on_commit", "pre_ping_off_recycle", "null_pool_under_load")
DROP_REASONS: Final = ("queue_full", "send_failed")
# Method and status-class values a datagram may carry ("other" from a hook older than the shared label policy).
METHODS: Final = (*labels.METHODS, labels.OTHER, "other")
STATUS_CLASSES: Final = labels.STATUS_CLASSES
MAX_ROUTE_LEN: Final = labels.MAX_ROUTE_LEN
# Histogram name in the payload -> its bucket upper bounds (the +Inf bucket is implied: len(bounds) + 1 counts).
HISTS: Final = {
    "checkout_wait": POOL_WAIT_BUCKETS,
    "connect": POOL_CONNECT_BUCKETS,
    "held": POOL_HELD_BUCKETS,
    "age": POOL_AGE_BUCKETS,
}
LAYOUTS: Final = {**HISTS, "request": HTTP_BUCKETS}


class AddressError(ValueError):
    """A sidecar address that is neither host:port nor unix:PATH."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where the sidecar listens: a UDP host/port, or a Unix datagram socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTPORT_RE: Final = re.compile(r"^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$")


def parse_address(text: str) -> Address:
    """`host:port`, `[::1]:port` or `unix:/path/to/socket`."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/") or len(path) > 100:
            raise AddressError("unix socket path must be absolute and at most 100 characters")
        return Address(path=path)
    m = _HOSTPORT_RE.fullmatch(text)
    if not m:
        raise AddressError(f"expected host:port or unix:/path, e.g. {DEFAULT_ADDR}")
    port = int(m.group(3))
    if not 0 <= port < 65536:
        raise AddressError("port out of range")
    return Address(host=m.group(1) or m.group(2), port=port)
