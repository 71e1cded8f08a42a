"""Kubernetes CRI log files: `<RFC3339Nano> <stream> <P|F> <text>`, partial `P` records joined until `F`."""

from __future__ import annotations

import re
from typing import Final

from dbwatch.logs.formats.container import ContainerLines
from dbwatch.logs.record import LineInfo

__all__ = ["CRI_RE", "CriLines"]

CRI_RE: Final = re.compile(rb"^(\S+) (stdout|stderr) ([PF])(?: (.*))?$", re.DOTALL)


class CriLines(ContainerLines):
    """One CRI record per physical line; the text inside is plain or JSON, per stream."""

    name = "cri"

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None:
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
        self._join.push(final=final)

    def flush(self) -> None:
        self._join.push(final=True)
