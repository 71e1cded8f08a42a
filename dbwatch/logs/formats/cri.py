"""Kubernetes CRI log files: `<RFC3339Nano> <stream> <P|F> <text>`, partial `P` records joined until `F`."""

from __future__ import annotations

import re
from typing import Final

from dbwatch.logs.formats.container import ContainerLines
from dbwatch.logs.prefilter import marker_lines

__all__ = ["CRI_RE", "CriLines"]

CRI_RE: Final = re.compile(rb"^(\S+) (stdout|stderr) ([PF])(?: (.*))?$", re.DOTALL)
_SPLIT: Final = (b" stdout P", b" stderr P")  # a split line's stream and tag, right after its timestamp


class CriLines(ContainerLines):
    """One CRI record per physical line; the text inside is plain or JSON, per stream."""

    name = "cri"

    def _parse(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        match = CRI_RE.match
        for raw in lines:
            n, off = self._line, self._off
            self._line += 1
            self._off += len(raw) + 1
            m = match(raw.rstrip(b"\r"))
            if m is None:
                if raw.strip():
                    self._stats.unmatched += 1
                continue
            stamp, stream, tag, text = m.groups()
            self._join.part(stream.decode(), text or b"", tag == b"F", n, stamp.decode("ascii", "replace"), off)
        self._stats.lines += len(lines)

    def _hits(self, data: bytes) -> list[int] | None:
        hits = marker_lines(data)
        for needle in _SPLIT:  # a split line: its text goes on in the stream's next line
            i = data.find(needle)
            while i >= 0:
                ls = data.rfind(b"\n", 0, i) + 1
                if data.find(b" ", ls, i + 1) == i:
                    hits.append(ls)
                i = data.find(needle, i + 1)
        return sorted(set(hits))

    def _line_of(self, raw: bytes) -> tuple[str, bytes, bool] | None:
        m = CRI_RE.match(raw.rstrip(b"\r"))
        if m is None:
            return None
        return m.group(2).decode(), m.group(4) or b"", m.group(3) == b"F"

    def _needle(self, stream: str) -> bytes | None:
        return f" {stream} ".encode()
