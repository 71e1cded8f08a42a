"""Label policy: the one overflow value, the one capper, and one normaliser per label concept.

Every source of a label value from outside goes through here: the in-app hook (ASGI middleware, pool errors), the
hook ingest, the access-log parser, the log counter and the collectors. So the same request has the same `route`,
`method` and `status_class`, and the same error the same `exception`, in every family, and they join. Standard
library only: the in-app hook imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "MAX_EXCEPTION_LEN",
    "MAX_LOCATION_LEN",
    "MAX_ROUTE_LEN",
    "METHODS",
    "OTHER",
    "PLACEHOLDER",
    "STATUS_CLASSES",
    "UNMATCHED",
    "Capper",
    "exception",
    "location",
    "method",
    "route",
    "status_class",
]

# The value that stands for every value beyond a cap, in every family.
OTHER: Final = "__other__"
# The route of a 404 that matched no route of the app (a scanner's paths must not take route slots).
UNMATCHED: Final = "unmatched"
# The one placeholder for a variable path segment: a framework's `{user_id}`, a configured `{uid}`, or a raw id.
PLACEHOLDER: Final = "{id}"
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx", "unknown")
MAX_ROUTE_LEN: Final = 120
MAX_SEGMENTS: Final = 8
MAX_SEGMENT_LEN: Final = 64
MAX_EXCEPTION_LEN: Final = 80
MAX_LOCATION_LEN: Final = 300

_HEX: Final = frozenset("0123456789abcdefABCDEF")
_TOKEN: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~=%")
_DIGITS: Final = frozenset("0123456789")


class Capper:
    """At most `limit` distinct values of one label; the rest read as `OTHER`.

    Two ways in. `__call__` is for counters: a value keeps its label from its first use on, because a counter's
    series cannot move. `fold` is for a gauge snapshot: a value keeps its slot while it is present, free slots go to
    the largest new values. The empty value (a zero series) is never capped. Not thread-safe: callers that share one
    across threads hold their own lock.
    """

    __slots__ = ("_kept", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept or value == "":
            return value
        if len(self._kept) >= self.limit:
            return OTHER
        self._kept.add(value)
        return value

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, value: str) -> bool:
        return value in self._kept

    def fold(self, weights: Mapping[str, float]) -> tuple[dict[str, str], int]:
        """Map each present value to itself or OTHER; also return how many distinct values were folded."""
        present = set(weights)
        kept = self._kept & present
        for value in sorted(present - kept, key=lambda v: (-weights[v], v)):
            if len(kept) >= self.limit:
                break
            kept.add(value)
        self._kept = kept
        return {v: v if v in kept else OTHER for v in present}, len(present) - len(kept)

    def reset(self) -> None:
        """Forget every kept value (a forked hook worker starts over)."""
        self._kept = set()


def _variable(seg: str) -> bool:
    """An id-like segment: digits, a uuid, a long hex string, an opaque token, or anything too long to be a name."""
    if len(seg) > MAX_SEGMENT_LEN:
        return True
    chars = set(seg)
    if chars and chars <= _DIGITS:
        return True
    if len(seg) >= 8 and chars & _DIGITS and chars <= _HEX | {"-"}:
        return True  # uuids (with or without dashes), hashes, hex ids
    return len(seg) >= 20 and bool(chars & _DIGITS) and chars <= _TOKEN  # opaque tokens


def route(path: str) -> str:
    """The route label of a request path or a route template, the same for both.

    A framework's template (`/users/{user_id}`, `/files/{p:path}`), a configured template (`/users/{uid}`) and a
    raw path (`/users/123?x=1`) give one form: query dropped, every variable segment `{id}` (`{path}` for a
    catch-all converter, which ends the route), at most 8 segments (then `...`) and 120 characters. Not a path: OTHER.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:  # an absolute-form request target: keep its path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path.startswith("/"):
        return OTHER
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments[:MAX_SEGMENTS]:
        if seg.startswith("{") and seg.endswith("}"):
            if seg.endswith(":path}") or seg == "{path}":
                out.append("{path}")
                break
            out.append(PLACEHOLDER)
        elif seg in ("*", "**"):
            out.append("{path}" if seg == "**" else PLACEHOLDER)
            if seg == "**":
                break
        elif _variable(seg):
            out.append(PLACEHOLDER)
        else:
            out.append(seg)
    else:
        if len(segments) > MAX_SEGMENTS:
            out.append("...")
    return ("/" + "/".join(out))[:MAX_ROUTE_LEN]


def method(value: str) -> str:
    """The method label: one of METHODS, else OTHER."""
    value = value.upper()
    return value if value in METHODS else OTHER


def status_class(status: int) -> str:
    """`2xx` for 200..299 and so on; `unknown` outside 100..599 (no response was started)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "unknown"


def exception(name: str) -> str:
    """The exception label: the bare class name (`MissingGreenlet`, not `sqlalchemy.exc.MissingGreenlet`).

    The bare name is what every source knows: a live exception, a plain traceback, structlog's `dict_tracebacks`
    (which give no module). Not an identifier, or longer than 80 characters: OTHER.
    """
    bare = name.rsplit(".", 1)[-1]
    return bare if bare.isidentifier() and bare.isascii() and len(bare) <= MAX_EXCEPTION_LEN else OTHER


def location(where: str) -> str:
    """The location label (`path:line` from `AppRules.label`), bounded in length."""
    return where[:MAX_LOCATION_LEN]
