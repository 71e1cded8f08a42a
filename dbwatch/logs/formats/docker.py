"""docker json-file logs: `{"log": "...", "stream": ..., "time": ...}` per line; lines over 16 KiB span records."""

from __future__ import annotations

import json

from dbwatch.logs.formats.container import ContainerLines
from dbwatch.logs.record import LineInfo

__all__ = ["DockerLines"]


class DockerLines(ContainerLines):
    """One docker record per physical line; a record whose `log` lacks the final newline continues in the next."""

    name = "docker"

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for raw in lines:
            n, off = self._line, self._off
            self._line += 1
            self._off += len(raw) + 1
            s = raw.strip()
            if not s:
                continue
            if not s.startswith(b"{"):
                self._stats.unmatched += 1
                continue
            try:
                obj = json.loads(s)
            except (ValueError, RecursionError):
                self._stats.parse_errors += 1
                continue
            log = obj.get("log") if isinstance(obj, dict) else None
            if not isinstance(log, str):
                self._stats.parse_errors += 1
                continue
            stream = obj.get("stream")
            time = obj.get("time")
            text = log.encode("utf-8", "replace")
            last = text.endswith(b"\n")
            self._join.part(
                stream if isinstance(stream, str) else "stdout",
                text[:-1] if last else text,
                last,
                n,
                time if isinstance(time, str) else None,
                off,
            )
        self._stats.lines += len(lines)
        self._join.push(final=final)

    def flush(self) -> None:
        self._join.push(final=True)
