"""docker json-file logs: `{"log": "...", "stream": ..., "time": ...}` per line; lines over 16 KiB span records."""

from __future__ import annotations

import json

from dbwatch.logs.formats.container import StreamJoiner
from dbwatch.logs.record import LineInfo, RecordHook, Sink, Stats

__all__ = ["DockerLines"]


class DockerLines:
    """One docker record per physical line; a record whose `log` lacks the final newline continues in the next."""

    name = "docker"

    def __init__(
        self,
        sink: Sink,
        stats: Stats,
        *,
        max_line_bytes: int = 1 << 20,
        max_record_bytes: int = 1 << 20,
        on_record: RecordHook | None = None,
        start_line: int = 1,
    ) -> None:
        self._stats = stats
        self._line = start_line
        self._off = 0
        self._join = StreamJoiner(
            sink, stats, max_line_bytes=max_line_bytes, max_record_bytes=max_record_bytes, on_record=on_record
        )

    @property
    def pending(self) -> bool:
        return self._join.pending

    def hold(self) -> tuple[int, int] | None:
        return self._join.hold()

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
