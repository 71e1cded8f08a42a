"""docker json-file logs: `{"log": "...", "stream": ..., "time": ...}` per line; lines over 16 KiB span records."""

from __future__ import annotations

import json
from typing import Final

from dbwatch.logs.formats.container import ContainerLines
from dbwatch.logs.prefilter import marker_lines

__all__ = ["DockerLines"]

_STREAMS: Final = (b"stdout", b"stderr")


class DockerLines(ContainerLines):
    """One docker record per physical line; a record whose `log` lacks the final newline continues in the next."""

    name = "docker"

    def _parse(self, data: bytes) -> None:
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

    def _hits(self, data: bytes) -> list[int] | None:
        lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        # Vouched for when every line holds docker's own key sequence for a whole line of stdout or stderr (a `log`
        # ending in a newline, then `stream`): then no line is split, and each stream's lines can be found by its
        # name. Counted, not searched line by line; a log ending in an escaped backslash and `n` is not vouched for.
        whole = sum(data.count(b'\\n","stream":"' + s + b'","') for s in _STREAMS)
        if whole != lines or b'\\\\n","stream":"' in data:
            return None  # parsed whole
        return marker_lines(data)

    def _line_of(self, raw: bytes) -> tuple[str, bytes, bool] | None:
        s = raw.strip()
        if not s.startswith(b"{"):
            return None
        try:
            obj = json.loads(s)
        except (ValueError, RecursionError):
            return None
        log = obj.get("log") if isinstance(obj, dict) else None
        if not isinstance(log, str):
            return None
        stream = obj.get("stream")
        text = log.encode("utf-8", "replace")
        last = text.endswith(b"\n")
        return stream if isinstance(stream, str) else "stdout", text[:-1] if last else text, last

    def _may_start(self, data: bytes, ls: int) -> bool:
        return not data.startswith(b'{"log":" ', ls)  # a text starting with a blank (a frame) starts no record

    def _needle(self, stream: str) -> bytes | None:
        return b'"stream":"' + stream.encode() + b'"' if stream.encode() in _STREAMS else None
