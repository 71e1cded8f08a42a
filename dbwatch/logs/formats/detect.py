"""Which format a file is in, from its first lines: CRI, docker json-file, JSON lines or plain text."""

from __future__ import annotations

import json
from typing import Final

from dbwatch.logs.formats.cri import CRI_RE

__all__ = ["SNIFF_BYTES", "sniff"]

SNIFF_BYTES: Final = 64 * 1024
SNIFF_LINES: Final = 50


def _kind(line: bytes) -> str:
    if CRI_RE.match(line):
        return "cri"
    if line.startswith(b"{"):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return "json"
        if isinstance(obj, dict) and isinstance(obj.get("log"), str) and "stream" in obj:
            return "docker"
        return "json"
    return "plain"


def sniff(head: bytes, *, final: bool = False) -> str | None:
    """The format of a file that starts with `head`; None while too little is there to tell (unless `final`)."""
    end = head.rfind(b"\n")
    lines = [ln.strip() for ln in head[: end + 1].split(b"\n") if ln.strip()][:SNIFF_LINES]
    if not lines:
        return "plain" if final else None
    votes: dict[str, int] = {}
    for ln in lines:
        k = _kind(ln)
        votes[k] = votes.get(k, 0) + 1
    best = max(votes.items(), key=lambda kv: (kv[1], kv[0] != "plain"))
    return best[0]
