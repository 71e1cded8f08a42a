"""What CRI and docker json-file share: per-stream joining of split records, then an inner text/JSON reader."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbwatch.logs.formats.plain import ParseCache
from dbwatch.logs.formats.structlog_json import JsonLines
from dbwatch.logs.record import LineInfo, RecordHook, Sink, Stats

__all__ = ["StreamJoiner"]


@dataclass(slots=True)
class _Stream:
    inner: JsonLines
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    first: int = 0
    first_off: int = 0
    time: str | None = None
    truncated: bool = False
    out: list[bytes] = field(default_factory=list)
    infos: list[LineInfo] = field(default_factory=list)


class StreamJoiner:
    """Joins partial records per stream (stdout and stderr apart) into inner lines for that stream's reader.

    Each stream has its own reader, so a traceback on stderr is assembled across stdout lines in between.
    A line longer than `max_line_bytes` keeps its head and counts as truncated.
    """

    def __init__(
        self,
        sink: Sink,
        stats: Stats,
        *,
        max_line_bytes: int,
        max_record_bytes: int,
        on_record: RecordHook | None,
        cache: ParseCache | None = None,
    ) -> None:
        self._sink, self._stats = sink, stats
        self._cache = cache
        self._max_line = max_line_bytes
        self._max_record = max_record_bytes
        self._on_record = on_record
        self._streams: dict[str, _Stream] = {}

    def _stream(self, name: str) -> _Stream:
        st = self._streams.get(name)
        if st is None:
            if len(self._streams) >= 8:  # stream names come from the file: bound them
                name = "other"
                st = self._streams.get(name)
            if st is None:
                inner = JsonLines(
                    self._sink,
                    self._stats,
                    mapped=True,
                    strict=False,
                    max_record_bytes=self._max_record,
                    on_record=self._on_record,
                    cache=self._cache,
                )
                st = self._streams[name] = _Stream(inner)
        return st

    def part(self, stream: str, text: bytes, last: bool, line: int, time: str | None, offset: int) -> None:
        """One record's text (without its newline); `last` when it ends the logical line."""
        st = self._stream(stream)
        if not st.parts and not st.truncated:
            st.first, st.time, st.first_off = line, time, offset
        if st.size + len(text) > self._max_line:
            room = self._max_line - st.size
            if room > 0:
                st.parts.append(text[:room])
                st.size += room
            st.truncated = True
        else:
            st.parts.append(text)
            st.size += len(text)
        if last:
            if st.truncated:
                self._stats.truncated += 1
            st.out.append(b"".join(st.parts).replace(b"\n", b" "))
            st.infos.append(LineInfo(st.first, line, st.time, st.first_off))
            st.parts, st.size, st.truncated = [], 0, False

    def push(self, *, final: bool = False) -> None:
        """Hand the joined lines of every stream to its reader."""
        for st in self._streams.values():
            if final and (st.parts or st.truncated):
                self.part_end(st)
            if st.out:
                st.inner.feed(b"\n".join(st.out) + b"\n", st.infos, final=final)
                st.out, st.infos = [], []
            elif final:
                st.inner.flush()

    def part_end(self, st: _Stream) -> None:
        """Input ended inside a split line: keep what arrived as the line."""
        self._stats.truncated += 1
        st.out.append(b"".join(st.parts))
        st.infos.append(LineInfo(st.first, st.first, st.time, st.first_off))
        st.parts, st.size, st.truncated = [], 0, False

    def hold(self) -> tuple[int, int] | None:
        """The earliest (offset, line) still held by any stream: an open split line or an unfinished record."""
        holds = []
        for st in self._streams.values():
            if st.parts or st.truncated:
                holds.append((st.first_off, st.first))
            h = st.inner.hold()
            if h is not None:
                holds.append(h)
        return min(holds) if holds else None

    @property
    def pending(self) -> bool:
        return any(st.parts or st.inner.pending for st in self._streams.values())


class ContainerLines:
    """Shared state of the container formats (CRI, docker): line counter, offset, and the per-stream joiner."""

    name = "container"

    def __init__(
        self,
        sink: Sink,
        stats: Stats,
        *,
        max_line_bytes: int = 1 << 20,
        max_record_bytes: int = 1 << 20,
        on_record: RecordHook | None = None,
        start_line: int = 1,
        cache: ParseCache | None = None,
    ) -> None:
        self._stats = stats
        self._line = start_line
        self._off = 0
        self._join = StreamJoiner(
            sink,
            stats,
            max_line_bytes=max_line_bytes,
            max_record_bytes=max_record_bytes,
            on_record=on_record,
            cache=cache,
        )

    @property
    def pending(self) -> bool:
        return self._join.pending

    def hold(self) -> tuple[int, int] | None:
        return self._join.hold()
