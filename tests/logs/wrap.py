"""Wrap real log output the way container runtimes write it: CRI (containerd) and docker json-file."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

CHUNK = 16 * 1024  # both runtimes split lines longer than 16 KiB


def _stamp(i: int) -> str:
    t = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC) + dt.timedelta(microseconds=i)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def cri(lines: Iterable[tuple[str, str]], chunk: int = CHUNK) -> str:
    """(stream, line) pairs -> CRI records; a line over `chunk` bytes becomes P records and a final F."""
    out = []
    for i, (stream, line) in enumerate(lines):
        raw = line.encode()
        parts = [raw[k : k + chunk] for k in range(0, len(raw), chunk)] or [b""]
        for j, part in enumerate(parts):
            tag = "F" if j == len(parts) - 1 else "P"
            out.append(f"{_stamp(i)} {stream} {tag} {part.decode('utf-8', 'ignore')}")
    return "\n".join(out) + "\n"


def docker(lines: Iterable[tuple[str, str]], chunk: int = CHUNK) -> str:
    """(stream, line) pairs -> docker json-file records; a line over `chunk` bytes spans records."""
    out = []
    for i, (stream, line) in enumerate(lines):
        raw = (line + "\n").encode()
        for k in range(0, len(raw), chunk):
            part = raw[k : k + chunk].decode("utf-8", "ignore")
            out.append(json.dumps({"log": part, "stream": stream, "time": _stamp(i)}))
    return "\n".join(out) + "\n"


def physical_map(lines: list[tuple[str, str]], kind: str, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """For each wrapped input line, its (first, last) physical line in the wrapped file (1-based)."""
    spans = []
    n = 1
    for _stream, line in lines:
        size = len(line.encode()) + (1 if kind == "docker" else 0)
        parts = max(1, -(-size // chunk))
        spans.append((n, n + parts - 1))
        n += parts
    return spans
