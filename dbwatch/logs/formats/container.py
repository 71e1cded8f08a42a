"""What CRI and docker json-file share: per-stream joining of split records, then an inner text/JSON reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from dbwatch.logs.formats.plain import BACK_LINES, ParseCache, is_record_start
from dbwatch.logs.formats.structlog_json import JsonLines
from dbwatch.logs.record import LineInfo, RecordHook, Sink, Stats

__all__ = ["ContainerLines", "StreamJoiner"]

BATCH_LINES: Final = 16  # lines parsed after a hit or a waited line before looking again
HOLD_BYTES: Final = 256 * 1024  # the most a reader holds unparsed for the next read's look-back


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

    def open_streams(self) -> list[str]:
        """The streams with a split line or an unfinished record: each waits for its own next line."""
        return [name for name, st in self._streams.items() if st.parts or st.truncated or st.inner.pending]


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
        prefilter: bool = False,
    ) -> None:
        self._stats = stats
        self._line = start_line
        self._off = 0
        self._prefilter = prefilter and on_record is None
        self._held = b""  # lines read but not yet parsed nor counted: what a hit in the next read may look back on
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
        return self._join.pending or bool(self._held)

    def hold(self) -> tuple[int, int] | None:
        h = self._join.hold()
        if self._held and (h is None or (self._off, self._line) < h):
            return self._off, self._line
        return h

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None:
        """Complete physical lines; with the prefilter, only the lines near a hit are parsed (see `_fast`)."""
        if not self._prefilter:
            self._parse(data)
            self._join.push(final=final)
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._fast(data, final)

    def flush(self) -> None:
        self.feed(b"", final=True)

    def _parse(self, data: bytes) -> None:
        """Every physical line of `data` to the joiner (counted)."""
        raise NotImplementedError

    def _hits(self, data: bytes) -> list[int] | None:
        """Line starts that must be parsed (a marker, a split line), or None when every line must be."""
        raise NotImplementedError

    def _line_of(self, raw: bytes) -> tuple[str, bytes, bool] | None:
        """One physical line: (stream, text, whether it ends its line), or None if it is not a record."""
        raise NotImplementedError

    def _needle(self, stream: str) -> bytes | None:
        """Bytes every line of `stream` holds, at the place `_at` checks, or None when its lines cannot be found so."""
        raise NotImplementedError

    def _fast(self, data: bytes, final: bool) -> None:
        """Parse the lines around each hit and those an open record waits for; count the rest.

        A line far from every hit changes nothing the full parse reports: it holds no marker, so it starts no event;
        it is not split (split lines are hits); and no open record waits for it (each open stream's next line is
        parsed). Above a hit, parsing starts at the nearest line of its stream that starts a record (the scanner's
        look-back for a traceback's message line stops there), else BACK_LINES physical lines up (it looks no
        further). Lines that are not records are counted as unmatched only among the lines parsed."""
        end = len(data)
        hits = self._hits(data)
        if hits is None:
            self._parse(data)
            self._join.push(final=final)
            return
        pos, k = 0, 0
        while pos < end:
            while k < len(hits) and hits[k] < pos:
                k += 1
            wake = hits[k] if k < len(hits) else end
            if self._join.pending:
                wake = min(wake, self._waited(data, pos, wake))
            if wake >= end:
                break
            # parse from the earliest place a hit near here looks back to (hits beyond BACK_LINES cannot)
            start, j = wake, k
            while j < len(hits) and data.count(b"\n", start, hits[j]) <= BACK_LINES:
                start = min(start, self._window_start(data, hits[j], pos))
                j += 1
            self._skip(data, pos, start)
            stop = wake
            for _ in range(BATCH_LINES):
                stop = data.find(b"\n", stop, end) + 1 or end
                if stop >= end:
                    break
            self._parse(data[start:stop])
            self._join.push()
            pos = stop
        keep = end
        if not final:  # the last lines wait for the next read: a hit there may look back on them
            for _ in range(BACK_LINES):
                if keep <= pos:
                    break
                keep = data.rfind(b"\n", 0, keep - 1) + 1
            keep = max(keep, pos)
        self._skip(data, pos, keep)
        if end - keep > HOLD_BYTES:  # long lines: parse them now rather than hold them (memory stays bounded)
            self._parse(data[keep:])
        else:
            self._held = data[keep:]
        self._join.push(final=final)

    def _skip(self, data: bytes, start: int, stop: int) -> None:
        """Lines counted, not parsed."""
        if stop > start:
            n = data.count(b"\n", start, stop)
            self._line += n
            self._off += stop - start
            self._stats.lines += n

    def _window_start(self, data: bytes, hit: int, pos: int) -> int:
        """Where parsing starts for a hit: see `_fast`."""
        line = self._line_of(data[hit : data.find(b"\n", hit)])
        stream = line[0] if line is not None else None
        w = hit
        for _ in range(BACK_LINES):
            if w <= pos:
                return pos
            prev = data.rfind(b"\n", 0, w - 1) + 1
            above = self._line_of(data[prev : w - 1]) if self._may_start(data, prev) else None
            if (
                stream is not None
                and above is not None
                and above[0] == stream
                and above[2]
                and is_record_start(above[1].decode("utf-8", "replace").rstrip("\r"))
            ):
                return prev
            w = prev
        return max(w, pos)

    def _may_start(self, data: bytes, ls: int) -> bool:
        """False for a line whose text cannot start a record (a cheap look at its bytes)."""
        return True

    def _waited(self, data: bytes, pos: int, limit: int) -> int:
        """The first line in [pos, limit) of a stream whose record or split line is open (limit if none)."""
        best = limit
        for stream in self._join.open_streams():
            needle = self._needle(stream)
            if needle is None:
                return pos
            i = data.find(needle, pos, best)
            while i >= 0:
                ls = data.rfind(b"\n", 0, i) + 1
                le = data.find(b"\n", i)
                line = self._line_of(data[ls : len(data) if le < 0 else le])
                if line is not None and line[0] == stream:
                    best = ls
                    break
                i = -1 if le < 0 else data.find(needle, le, best)
        return best
