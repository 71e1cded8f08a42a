"""Log formats: one module each, picked by name from this table (or sniffed), fed through one line splitter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from dbwatch.logs.formats.cri import CriLines
from dbwatch.logs.formats.detect import SNIFF_BYTES, sniff
from dbwatch.logs.formats.docker import DockerLines
from dbwatch.logs.formats.plain import ParseCache, PlainScanner
from dbwatch.logs.formats.structlog_json import JsonLines
from dbwatch.logs.record import LineInfo, RecordHook, Sink, Stats

__all__ = ["FORMATS", "SNIFF_BYTES", "Caps", "ParseCache", "Parser", "Splitter", "make_parser", "sniff"]


class Parser(Protocol):
    """A format's reader: complete lines in (`data` ends with a newline), events out through its sink."""

    name: str

    @property
    def pending(self) -> bool: ...

    def hold(self) -> tuple[int, int] | None: ...  # (input offset, line) where held data starts

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Caps:
    """What bounds a parser's memory: the longest line kept, the largest record assembled, the source's cache; and
    whether it may parse only the lines that could hold a traceback (`prefilter`: bad JSON is then counted only
    among those)."""

    max_line_bytes: int = 1 << 20
    max_record_bytes: int = 1 << 20
    cache: ParseCache | None = None  # shared by the files of one source; None: the parser makes its own
    prefilter: bool = False


def _plain(sink: Sink, stats: Stats, caps: Caps, hook: RecordHook | None, line: int) -> Parser:
    return PlainScanner(
        sink, stats, max_record_bytes=caps.max_record_bytes, on_record=hook, start_line=line, cache=caps.cache
    )


def _json(sink: Sink, stats: Stats, caps: Caps, hook: RecordHook | None, line: int) -> Parser:
    return JsonLines(
        sink,
        stats,
        max_record_bytes=caps.max_record_bytes,
        on_record=hook,
        start_line=line,
        cache=caps.cache,
        prefilter=caps.prefilter,
    )


def _container(
    cls: type[CriLines] | type[DockerLines],
) -> Callable[[Sink, Stats, Caps, RecordHook | None, int], Parser]:
    def make(sink: Sink, stats: Stats, caps: Caps, hook: RecordHook | None, line: int) -> Parser:
        return cls(
            sink,
            stats,
            max_line_bytes=caps.max_line_bytes,
            max_record_bytes=caps.max_record_bytes,
            on_record=hook,
            start_line=line,
            cache=caps.cache,
            prefilter=caps.prefilter,
        )

    return make


FORMATS: Final[dict[str, Callable[[Sink, Stats, Caps, RecordHook | None, int], Parser]]] = {
    "plain": _plain,
    "json": _json,
    "cri": _container(CriLines),
    "docker": _container(DockerLines),
}


def make_parser(
    fmt: str, sink: Sink, stats: Stats, caps: Caps, on_record: RecordHook | None = None, start_line: int = 1
) -> Parser:
    """A parser for a format named in FORMATS."""
    return FORMATS[fmt](sink, stats, caps, on_record, start_line)


class Splitter:
    """Bytes in any pieces -> complete lines for a parser; a line over `max_line_bytes` keeps its head (truncated).

    Memory stays within about max_line_bytes plus one read, however long a line without newline runs.
    With format `auto` the first lines decide the parser (see detect.sniff). `hold()` says where the data not
    yet final starts, for a position that is safe to resume from.
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
        start_offset: int = 0,
        start_line: int = 1,
        cache: ParseCache | None = None,
        prefilter: bool = False,
    ) -> None:
        self.format = fmt
        self._sink, self._stats, self._hook = sink, stats, on_record
        self._caps = Caps(max_line_bytes, max_record_bytes, cache, prefilter)
        self._start_offset, self._start_line = start_offset, start_line
        self.parser: Parser | None = None if fmt == "auto" else self._make(fmt)
        self._head = b""  # waiting for enough lines to sniff
        self._partial = b""
        self._skipping = False  # inside the rest of an over-long line
        self._taken = 0  # bytes taken in
        self._fed = 0  # bytes handed to the parser (or to _head), in input terms
        self._lines0 = stats.lines  # the parser counts the lines it is given; we read the count from there

    def _make(self, fmt: str) -> Parser:
        self.format = fmt
        return make_parser(fmt, self._sink, self._stats, self._caps, self._hook, self._start_line)

    @property
    def pending(self) -> bool:
        """Data held back: a partial line, sniffing, or an unfinished record."""
        return bool(self._partial or self._skipping or self._head or (self.parser is not None and self.parser.pending))

    def hold(self) -> tuple[int, int]:
        """(file offset, line) from which reading again loses nothing and counts nothing twice."""
        if self.parser is not None:
            h = self.parser.hold()
            if h is not None:
                return self._start_offset + h[0], h[1]
        line = self._start_line + self._stats.lines - self._lines0
        if self._head:
            return self._start_offset + self._fed - len(self._head), line
        if self._partial or self._skipping:
            return self._start_offset + self._fed, line
        return self._start_offset + self._taken, line

    def feed(self, chunk: bytes) -> None:
        """Any bytes, as read. The chunk's own complete lines go on as a view: no copy of a large read."""
        self._stats.bytes += len(chunk)
        self._taken += len(chunk)
        nl = chunk.rfind(b"\n")
        if nl < 0:
            self._add_partial(chunk)
            return
        start = 0  # where the lines that lie wholly in this chunk begin
        line = b""
        if self._skipping or self._partial:  # the chunk's first line ends the one carried over
            start = chunk.find(b"\n") + 1
            if self._skipping:
                self._skipping = False
                line = self._partial + b"\n"  # the kept head of the long line
            elif len(self._partial) + start > self._caps.max_line_bytes + 1:
                line = (self._partial + chunk[:start])[: self._caps.max_line_bytes] + b"\n"
                self._stats.truncated += 1
            else:
                line = self._partial + chunk[:start]
            self._partial = b""
        # input bytes the carried line stands for: what was taken before this chunk and not yet fed, plus its end
        head_span = self._taken - len(chunk) + start - self._fed
        self._add_partial(chunk[nl + 1 :])
        if line:
            self._lines(line, head_span, final=False)
            head_span = 0
        if start <= nl:
            self._lines(memoryview(chunk)[start : nl + 1], head_span + nl + 1 - start, final=False)

    def _add_partial(self, piece: bytes) -> None:
        if not piece or self._skipping:
            return
        room = self._caps.max_line_bytes - len(self._partial)
        if len(piece) > room:
            self._partial += piece[: max(room, 0)]
            self._skipping = True
            self._stats.truncated += 1
        else:
            self._partial += piece

    def _lines(self, data: bytes | memoryview, span: int, *, final: bool) -> None:
        self._fed += span
        if self.parser is None:
            self._head += data
            fmt = sniff(self._head, final=final or len(self._head) >= SNIFF_BYTES)
            if fmt is None:
                return
            self.parser = self._make(fmt)
            data, self._head = self._head, b""
        if isinstance(data, memoryview) and not isinstance(self.parser, PlainScanner):
            data = bytes(data)
        self.parser.feed(data, final=final)  # type: ignore[arg-type]

    def flush(self, *, eof: bool = True) -> None:
        """Input is over (`eof`) or quiet: pending records finish; at eof a trailing partial line counts as a line."""
        data = b""
        span = 0
        if eof and (self._partial or self._skipping):
            data = self._partial + b"\n"
            span = self._taken - self._fed
            self._partial, self._skipping = b"", False
        self._lines(data, span, final=True)
        if self.parser is not None:
            self.parser.flush()
