"""Log formats: one module each, picked by name from this table (or sniffed), fed through one line splitter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from dbwatch.logs.formats.cri import CriLines
from dbwatch.logs.formats.detect import SNIFF_BYTES, sniff
from dbwatch.logs.formats.docker import DockerLines
from dbwatch.logs.formats.plain import PlainScanner
from dbwatch.logs.formats.structlog_json import JsonLines
from dbwatch.logs.record import LineInfo, RecordHook, Sink, Stats

__all__ = ["FORMATS", "SNIFF_BYTES", "Parser", "Splitter", "make_parser", "sniff"]


class Parser(Protocol):
    """A format's reader: complete lines in (`data` ends with a newline), events out through its sink."""

    name: str

    @property
    def pending(self) -> bool: ...

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None: ...

    def flush(self) -> None: ...


def _plain(sink: Sink, stats: Stats, max_line: int, max_record: int, hook: RecordHook | None) -> Parser:
    return PlainScanner(sink, stats, max_record_bytes=max_record, on_record=hook)


def _json(sink: Sink, stats: Stats, max_line: int, max_record: int, hook: RecordHook | None) -> Parser:
    return JsonLines(sink, stats, max_record_bytes=max_record, on_record=hook)


def _cri(sink: Sink, stats: Stats, max_line: int, max_record: int, hook: RecordHook | None) -> Parser:
    return CriLines(sink, stats, max_line_bytes=max_line, max_record_bytes=max_record, on_record=hook)


def _docker(sink: Sink, stats: Stats, max_line: int, max_record: int, hook: RecordHook | None) -> Parser:
    return DockerLines(sink, stats, max_line_bytes=max_line, max_record_bytes=max_record, on_record=hook)


FORMATS: Final[dict[str, Callable[[Sink, Stats, int, int, RecordHook | None], Parser]]] = {
    "plain": _plain,
    "json": _json,
    "cri": _cri,
    "docker": _docker,
}


def make_parser(
    fmt: str, sink: Sink, stats: Stats, *, max_line_bytes: int, max_record_bytes: int, on_record: RecordHook | None
) -> Parser:
    """A parser for a format named in FORMATS."""
    return FORMATS[fmt](sink, stats, max_line_bytes, max_record_bytes, on_record)


class Splitter:
    """Bytes in any pieces -> complete lines for a parser; a line over `max_line_bytes` keeps its head (truncated).

    Memory stays within about max_line_bytes plus one read, however long a line without newline runs.
    With format `auto` the first lines decide the parser (see detect.sniff).
    """

    def __init__(
        self,
        fmt: str,
        sink: Sink,
        stats: Stats,
        *,
        max_line_bytes: int = 1 << 20,
        max_record_bytes: int = 1 << 20,
        on_record: RecordHook | None = None,
    ) -> None:
        self.format = fmt
        self._sink, self._stats, self._hook = sink, stats, on_record
        self._max_line = max_line_bytes
        self._max_record = max_record_bytes
        self.parser: Parser | None = None if fmt == "auto" else self._make(fmt)
        self._head = b""  # waiting for enough lines to sniff
        self._partial = b""
        self._skipping = False  # inside the rest of an over-long line

    def _make(self, fmt: str) -> Parser:
        self.format = fmt
        return make_parser(
            fmt,
            self._sink,
            self._stats,
            max_line_bytes=self._max_line,
            max_record_bytes=self._max_record,
            on_record=self._hook,
        )

    @property
    def pending(self) -> bool:
        """Data held back: a partial line, sniffing, or an unfinished record."""
        return bool(self._partial or self._head or (self.parser is not None and self.parser.pending))

    def feed(self, chunk: bytes) -> None:
        """Any bytes, as read."""
        self._stats.bytes += len(chunk)
        nl = chunk.rfind(b"\n")
        if nl < 0:
            self._add_partial(chunk)
            return
        first = chunk.find(b"\n")
        head_line = chunk[: first + 1]
        if self._skipping:
            self._skipping = False
            lines = self._partial + b"\n"  # the kept head of the long line
            self._partial = b""
            lines += chunk[first + 1 : nl + 1]
        else:
            if self._partial and len(self._partial) + len(head_line) > self._max_line + 1:
                lines = (self._partial + head_line)[: self._max_line] + b"\n"
                self._stats.truncated += 1
                lines += chunk[first + 1 : nl + 1]
            else:
                lines = self._partial + chunk[: nl + 1] if self._partial else chunk[: nl + 1]
            self._partial = b""
        self._add_partial(chunk[nl + 1 :])
        self._lines(lines, final=False)

    def _add_partial(self, piece: bytes) -> None:
        if not piece:
            return
        if self._skipping:
            return
        room = self._max_line - len(self._partial)
        if len(piece) > room:
            self._partial += piece[: max(room, 0)]
            self._skipping = True
            self._stats.truncated += 1
        else:
            self._partial += piece

    def _lines(self, data: bytes, *, final: bool) -> None:
        if self.parser is None:
            self._head += data
            fmt = sniff(self._head, final=final or len(self._head) >= SNIFF_BYTES)
            if fmt is None:
                return
            self.parser = self._make(fmt)
            data, self._head = self._head, b""
        self.parser.feed(data, final=final)

    def flush(self, *, eof: bool = True) -> None:
        """Input is over (or quiet): a trailing partial line counts as a line, pending records finish."""
        data = b""
        if eof and (self._partial or self._skipping):
            data = self._partial + b"\n"
            self._partial, self._skipping = b"", False
        self._lines(data, final=True)
        if self.parser is not None:
            self.parser.flush()
