"""Plain text logs as stdlib logging, gunicorn and uvicorn write them; multi-line tracebacks after the message line.

The scan works on large buffers: `bytes.find` jumps from one traceback header to the next, and only the lines of a
traceback (and the few before it, to find the record's message line) are decoded. Everything else costs one
memchr-speed pass. The same scanner reads the text inside CRI/docker records, with a per-line map back to the
physical lines of the file.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from dbwatch.logs.record import LINE_NEEDLE, Event, LineInfo, RecordHook, Sink, Stats, line_event, warn
from dbwatch.logs.traceback import GROUP_HEADER, SEPARATORS, TB_HEADER, Builder, Chain, Reader, Verdict

__all__ = ["ParseCache", "PlainScanner", "is_record_start", "record_meta"]

_TB_B: Final = TB_HEADER.encode()
_GROUP_B: Final = b"  + " + GROUP_HEADER.encode()
# Both headers end in the same words and end their line: one search for the words and the line's end skips every
# mention inside a line (`query="Traceback (most recent call last):"`) at memchr speed. A file with CR bytes also
# gets the CR form (the header's line then ends in `\r\n`).
_TAIL: Final = _TB_B + b"\n"
_TAIL_CR: Final = _TB_B + b"\r"
BLOCK_KEY: Final = 512  # bytes of a traceback's start that key the cache of whole texts
BLOCK_MAX: Final = 64 * 1024  # longer texts are not cached
CACHE_BYTES: Final = 8 << 20  # what the cache of known tracebacks may hold (text and parsed chain), per log source
CACHE_COST: Final = 4  # bytes held per byte of cached text: the text, the reader state, the parsed chain
ONCE_KEYS: Final = 1024  # keys of texts seen once (BLOCK_KEY bytes each)
_LEVELS: Final = "DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL|EXCEPTION"
# The first line of a log record: a leading timestamp (logging's asctime, ISO 8601, gunicorn's bracketed one,
# syslog's), a leading level (uvicorn's `ERROR:    `, basicConfig's `ERROR:root:`), or an access line in Common/
# Combined Log Format (gunicorn's and nginx's `host ident user [dd/Mon/yyyy:hh:mm:ss +zzzz] "`), which a server
# writes right after the traceback of a failed request.
_START_RE: Final = re.compile(
    r"(?:\[?(?P<ts>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s?(?:Z|[+-]\d{2}:?\d{2}|UTC))?)\]?"
    r"|(?P<sys>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2})"
    rf"|(?P<lvl>(?:{_LEVELS})(?::|\s))"
    r"|(?P<clf>\S+ \S+ \S+ \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] \"))"
)
_LOGGER_RES: Final = (
    re.compile(rf"\[(?!(?:{_LEVELS})\])(?P<name>[A-Za-z_][\w.\-]*)\]"),  # `... ERROR [app.auth] msg`
    re.compile(rf" - (?P<name>[A-Za-z_][\w.\-]*) - (?:{_LEVELS}) - "),  # `... - app.auth - ERROR - msg`
    re.compile(rf"^(?:{_LEVELS}):(?P<name>[A-Za-z_][\w.\-]*):"),  # basicConfig `ERROR:app.auth:msg`
)
BACK_LINES: Final = 50  # how far above a traceback header its record's message line is looked for
CONTEXT_BYTES: Final = 16 * 1024  # text kept from the previous buffer to find that line across a boundary


class ParseCache:
    """Tracebacks seen before, by their text: the same stack logged again costs a comparison, not a parse.

    Bounded in bytes (CACHE_BYTES, least recently used out first), and one per log source, shared by its files: a
    text is kept from its second sighting on and only when under BLOCK_MAX, so hostile logs of distinct large
    tracebacks cost nothing here.
    """

    __slots__ = ("_blocks", "_once", "budget", "size")

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.size = 0
        # key (a text's first bytes) -> [(text, reader state before the line that ended it, chain, last line offset)]
        self._blocks: OrderedDict[bytes, list[tuple[bytes, Reader, Chain | None, int]]] = OrderedDict()
        self._once: OrderedDict[bytes, None] = OrderedDict()

    def get(self, key: bytes) -> list[tuple[bytes, Reader, Chain | None, int]]:
        entries = self._blocks.get(key)
        if entries is None:
            return []
        self._blocks.move_to_end(key)
        return entries

    def seen_before(self, key: bytes) -> bool:
        """True from a key's second sighting on; records the first."""
        if key in self._blocks:
            return True
        if key in self._once:
            del self._once[key]
            return True
        self._once[key] = None
        if len(self._once) > ONCE_KEYS:
            self._once.popitem(last=False)
        return False

    def full(self, key: bytes) -> bool:
        return len(self._blocks.get(key, ())) >= 4

    def put(self, key: bytes, entry: tuple[bytes, Reader, Chain | None, int]) -> None:
        cost = CACHE_COST * len(entry[0]) + 2 * BLOCK_KEY
        if cost > self.budget // 8:
            return
        self._blocks.setdefault(key, []).append(entry)
        self._blocks.move_to_end(key)
        self.size += cost
        while self.size > self.budget:
            _k, old = self._blocks.popitem(last=False)
            self.size -= sum(CACHE_COST * len(e[0]) + 2 * BLOCK_KEY for e in old)


@dataclass(slots=True)
class _Rec:
    """A traceback being read, kept across feeds so a long one is read once, not again from its start each time."""

    rs: int  # the record's first line (its message line above the header)
    ls: int  # the header line
    p: int  # where reading goes on
    last_off: int  # the last non-blank line taken
    reader: Reader
    builder: Builder
    headless: bool


def is_record_start(line: str) -> bool:
    """True for the first line of a log record (timestamp or level prefix)."""
    return _START_RE.match(line) is not None


def record_meta(line: str) -> tuple[str | None, str | None]:
    """(timestamp, logger) of a record's first line, where the line shows them."""
    m = _START_RE.match(line)
    ts = m.group("ts") or m.group("sys") if m else None
    if m is not None and m.group("lvl"):
        ts = None
    for rx in _LOGGER_RES:
        lm = rx.search(line[:300])
        if lm:
            return ts, lm.group("name")
    if m is not None and m.group("lvl") and line.startswith(("ERROR:    ", "CRITICAL:    ")):
        return ts, "uvicorn.error"
    return ts, None


def _decode(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")


class PlainScanner:
    """Finds and assembles tracebacks in complete lines of text; keeps an unfinished record for the next feed."""

    name = "plain"

    def __init__(
        self,
        sink: Sink,
        stats: Stats,
        *,
        mapped: bool = False,
        max_record_bytes: int = 1 << 20,
        on_record: RecordHook | None = None,
        start_line: int = 1,
        cache: ParseCache | None = None,
    ) -> None:
        self._sink = sink
        self._stats = stats
        self._mapped = mapped  # inner text of a container format: line numbers come from `infos`
        self._max_record = max_record_bytes
        self._on_record = on_record
        # the text being scanned: carried context or an unfinished record, then the new lines. A bytearray kept at
        # its size (only `_len` bytes are live), so feeding a large read copies once and allocates nothing.
        self._buf = bytearray()
        self._len = 0
        self._fed = 0
        self._infos: list[LineInfo] = []
        self._line0 = start_line  # physical line of _buf[0] when not mapped
        self._base = 0  # offset of _buf[0] in the input when not mapped
        self._buf_lines = 0  # lines in _buf (already counted)
        self._scan = 0  # offset in _buf where the header search resumes
        self._floor = 0  # a record start may not lie before this offset (the previous event's end)
        self._cache = cache if cache is not None else ParseCache()
        self._rec: _Rec | None = None  # the traceback being read when the last feed ended
        self._failed = False  # a record raised: logged once

    @property
    def pending(self) -> bool:
        """True while an unfinished traceback waits for more lines."""
        return self._scan < self._len

    def hold(self) -> tuple[int, int] | None:
        """(input offset, line) where the unfinished record starts, or None when nothing is held."""
        if not self.pending:
            return None
        if self._mapped:
            return (self._infos[0].offset, self._infos[0].first) if self._infos else None
        return self._base, self._line0

    def feed(self, data: bytes | memoryview, infos: list[LineInfo] | None = None, *, final: bool = False) -> None:
        """Take complete lines (`data` ends with a newline, or is empty); `infos` maps them when `mapped`."""
        # the buffer keeps room for recent feeds (a decaying maximum): large reads reuse it, and after a large record
        # a few small feeds give the memory back
        self._fed = max(len(data), self._fed * 3 // 4)
        if data:
            if self._on_record is not None:
                for raw in bytes(data).splitlines():
                    self._on_record(_decode(raw), None)
            self._append(data)
            if infos:
                self._infos.extend(infos)
        if self._len:
            self._process(final)

    def _append(self, data: bytes | memoryview) -> None:
        need = self._len + len(data)
        if need > len(self._buf):
            self._buf += bytes(need + (need >> 2) - len(self._buf))
        with memoryview(self._buf) as view:  # a bytearray's own slice assignment copies a memoryview first
            view[self._len : need] = data
        self._len = need

    def flush(self) -> None:
        """End of input (or the file went quiet): finish what is pending."""
        self.feed(b"", final=True)

    def _line_no(self, idx: int) -> int:
        if self._mapped:
            return self._infos[idx].first if idx < len(self._infos) else 0
        return self._line0 + idx

    def _line_last(self, idx: int) -> int:
        if self._mapped:
            return self._infos[idx].last if idx < len(self._infos) else 0
        return self._line0 + idx

    def _process(self, final: bool) -> None:
        buf = self._buf
        end = self._len
        pos, floor = self._scan, self._floor
        cur_off, cur_idx = 0, 0  # incremental offset -> line index
        pending_from = -1
        needles = (_TAIL, _TAIL_CR) if buf.find(b"\r", pos, end) >= 0 else (_TAIL,)
        found = [-2, -2]  # next match of each needle at or after pos (-2: not searched yet)
        found_line = -2  # next match of LINE_NEEDLE
        rec, self._rec = self._rec, None
        while rec is not None or pos < end:
            if rec is None:
                hit = -1
                for k, needle in enumerate(needles):
                    if found[k] != -1 and found[k] < pos:
                        found[k] = buf.find(needle, pos, end)
                    if found[k] >= 0 and (hit < 0 or found[k] < hit):
                        hit = found[k]
                if found_line != -1 and found_line < pos:
                    found_line = buf.find(LINE_NEEDLE, pos, end)
                if found_line >= 0 and (hit < 0 or found_line < hit):  # a line that is an event on its own comes first
                    start = buf.rfind(b"\n", 0, found_line) + 1
                    stop = buf.find(b"\n", found_line, end)
                    stop = end if stop < 0 else stop
                    chain = line_event(_decode(buf[start:stop])) if start >= floor else None
                    if chain is not None:
                        cur_idx += buf.count(b"\n", cur_off, start)
                        cur_off = start
                        self._emit_line(start, cur_idx, chain)
                        floor = stop + 1
                    pos = stop + 1
                    continue
                if hit < 0:
                    pos = end
                    break
                ls = buf.rfind(b"\n", 0, hit) + 1  # pos starts a line, and the hit lies at or after it
                nl = buf.find(b"\n", hit, end)
                head = bytes(buf[ls:nl]).rstrip(b"\r")
                if ls < max(floor, pos) or head not in (_TB_B, _GROUP_B):
                    pos = nl + 1  # not a header line after all (text before the words)
                    continue
                idx = cur_idx + buf.count(b"\n", cur_off, ls) if self._mapped else 0
                rs, headless = self._record_start(buf, ls, floor, idx)
                known = None if headless else self._known(buf, ls, end)
                if known is None and not final and not headless and self._known_so_far(buf, ls, end):
                    pending_from, pos = rs, ls  # may be a known text still arriving: decide with the next lines
                    break
                if known is not None:  # the same traceback text as before, ending at the same place
                    chain, p, last_off = known
                    cur_idx, cur_off = self._count(buf, cur_off, cur_idx, rs, last_off, chain, False)
                    pos = floor = p
                    continue
                rec = self._start(buf, rs, ls, nl, headless, end)
            try:
                ended, truncated = self._read(buf, rec, end)
                if not (ended or truncated or final):
                    pending_from, pos, self._rec = rec.rs, rec.ls, rec
                    break
                chain = rec.builder.finish()
                truncated = truncated or rec.builder.truncated or (not rec.reader.complete and not ended)
                if ended and not rec.headless and rec.p - rec.ls <= BLOCK_MAX:
                    self._remember(buf, rec, chain)
                cur_idx, cur_off = self._count(buf, cur_off, cur_idx, rec.rs, rec.last_off, chain, truncated)
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the file: counted, logged once
                self._stats.parse_errors += 1
                if not self._failed:
                    self._failed = True
                    warn("log_record_failed", error=type(exc).__name__)
            pos = floor = max(rec.p, buf.find(b"\n", rec.ls, end) + 1)
            rec = None
        # keep an unfinished record, or a little context for a header at the start of the next buffer
        if pending_from >= 0:
            keep = pending_from
            self._scan = pos - keep
        else:
            keep = max(floor, end - CONTEXT_BYTES)
            if keep > 0 and keep < end:
                keep = buf.rfind(b"\n", 0, keep) + 1
                keep = max(keep, floor)
            self._scan = end - keep
        # one newline count over the buffer serves the event line numbers, the line total and the carry
        if keep >= cur_off:
            dropped = cur_idx + buf.count(b"\n", cur_off, keep)
            total = dropped + buf.count(b"\n", keep, end)
        else:
            total = cur_idx + buf.count(b"\n", cur_off, end)
            dropped = total - buf.count(b"\n", keep, end)
        if not self._mapped:
            self._stats.lines += total - self._buf_lines
        self._buf_lines = total - dropped
        self._floor = max(floor - keep, 0)
        if keep:
            buf[: end - keep] = buf[keep:end]  # same length: moves the kept tail to the front, no reallocation
            self._len = end - keep
            if self._rec is not None:
                r = self._rec
                r.rs, r.ls, r.p, r.last_off = r.rs - keep, r.ls - keep, r.p - keep, r.last_off - keep
        if len(buf) > 4 * max(self._len, self._fed, CONTEXT_BYTES):  # after a large record: give the memory back
            self._buf = bytearray(buf[: self._len])
        if self._mapped:
            del self._infos[:dropped]
        else:
            self._line0 += dropped
            self._base += keep

    def _start(self, buf: bytearray, rs: int, ls: int, nl: int, headless: bool, end: int) -> _Rec:
        builder = Builder()
        if headless:  # the chain opens with a cause printed without a traceback, right after the message
            return _Rec(rs, ls, buf.find(b"\n", rs, end) + 1, ls, Reader(None, is_record_start), builder, True)
        header = _decode(buf[ls:nl])
        builder.add(header)
        return _Rec(rs, ls, nl + 1, ls, Reader(header, is_record_start), builder, False)

    def _read(self, buf: bytearray, rec: _Rec, end: int) -> tuple[bool, bool]:
        """Feed the record's lines up to `end` (or its cap) to its reader and builder: (ended, truncated)."""
        reader, add, p, cap = rec.reader, rec.builder.add, rec.p, rec.rs + self._max_record
        try:
            while p < end:
                q = buf.find(b"\n", p, end)
                line = _decode(buf[p:q])
                v = reader.feed(line)
                if v is Verdict.END:
                    return True, False
                if v is Verdict.ACCEPT:
                    add(line)
                    if line.strip():
                        rec.last_off = p
                p = q + 1
                if p > cap:
                    return False, True
            return False, False
        finally:
            rec.p = p

    def _count(
        self, buf: bytearray, cur_off: int, cur_idx: int, rs: int, last_off: int, chain: Chain | None, cut: bool
    ) -> tuple[int, int]:
        """Line numbers, counted forward from the last position (offsets only grow); then the event."""
        cur_idx += buf.count(b"\n", cur_off, rs)
        first_idx = cur_idx
        cur_idx += buf.count(b"\n", rs, last_off)
        self._emit(buf, rs, first_idx, cur_idx, chain, cut)
        return cur_idx, last_off

    def _known(self, buf: bytearray, ls: int, end: int) -> tuple[Chain | None, int, int] | None:
        """A traceback seen before, byte for byte, whose next line ends it again: (chain, end, last line offset)."""
        for block, state, chain, last_rel in self._cache.get(bytes(buf[ls : min(ls + BLOCK_KEY, end)])):
            stop = ls + len(block)
            if stop >= end or not buf.startswith(block, ls, end):
                continue
            q = buf.find(b"\n", stop, end)
            if state.copy().feed(_decode(buf[stop:q])) is Verdict.END:
                return chain, stop, ls + last_rel
        return None

    def _known_so_far(self, buf: bytearray, ls: int, end: int) -> bool:
        """The text from the header to the end of the buffer begins a traceback seen before (its end not read yet)."""
        n = end - ls
        entries = self._cache.get(bytes(buf[ls : min(ls + BLOCK_KEY, end)]))
        return any(n <= len(block) and block.startswith(buf[ls:end]) for block, *_ in entries)

    def _remember(self, buf: bytearray, rec: _Rec, chain: Chain | None) -> None:
        """Keep a finished traceback's text, its chain and the reader's state before the line that ended it."""
        ls, stop = rec.ls, rec.p
        key = bytes(buf[ls : min(ls + BLOCK_KEY, self._len)])  # as _known looks it up
        if not self._cache.seen_before(key) or self._cache.full(key):
            return  # kept from its second sighting on: a text logged once costs nothing more
        state = Reader(_decode(buf[ls : buf.find(b"\n", ls)]), is_record_start)
        p = buf.find(b"\n", ls) + 1
        while p < stop:
            q = buf.find(b"\n", p)
            state.feed(_decode(buf[p:q]))
            p = q + 1
        self._cache.put(key, (bytes(buf[ls:stop]), state, chain, rec.last_off - ls))

    def _record_start(self, buf: bytearray, ls: int, floor: int, idx: int) -> tuple[int, bool]:
        """The record's first line above a header (a record-start line within BACK_LINES lines and CONTEXT_BYTES,
        and for inner lines of a container file within BACK_LINES physical lines; else the header itself), and
        whether a chain separator lies between them (the chain opens with a cause that has no traceback).

        Bounded in bytes (what is kept across reads), so the result never depends on where reads were cut, and in
        physical lines, so a reader that skips lines far from any traceback (`scan`) finds the same line."""
        infos = self._infos if self._mapped and idx < len(self._infos) else None
        reach = infos[idx].last - BACK_LINES if infos is not None else 0  # first physical line within reach
        p = ls
        blank = sep = False
        for _ in range(BACK_LINES):
            if p <= floor or p == 0:
                break
            prev = buf.rfind(b"\n", 0, p - 1) + 1
            idx -= 1
            if prev < floor or ls - prev > CONTEXT_BYTES:
                break
            if infos is not None and (idx < 0 or infos[idx].first < reach):
                break
            line = _decode(buf[prev : p - 1])
            if not line.strip():
                blank = True
            elif line in SEPARATORS:
                sep = True
            elif is_record_start(line):
                if blank and not sep:
                    break  # a blank line between them: that record is not this traceback's
                return prev, sep
            elif blank and not sep:
                break
            p = prev
        return ls, False

    def _emit(
        self, buf: bytearray, rs: int, first_idx: int, last_idx: int, chain: Chain | None, truncated: bool
    ) -> None:
        if truncated:
            self._stats.truncated += 1
        if chain is None:
            self._stats.parse_errors += 1
            return
        nl = buf.find(b"\n", rs)
        ts, logger = record_meta(_decode(buf[rs:nl]))
        if ts is None and self._mapped and first_idx < len(self._infos):
            ts = self._infos[first_idx].time
        self._stats.events += 1
        self._sink(Event(self._line_no(first_idx), self._line_last(last_idx), ts, logger, chain, truncated))

    def _emit_line(self, start: int, idx: int, chain: Chain) -> None:
        """A one-line event (no traceback)."""
        nl = self._buf.find(b"\n", start)
        ts, logger = record_meta(_decode(self._buf[start:nl]))
        if ts is None and self._mapped and idx < len(self._infos):
            ts = self._infos[idx].time
        self._stats.events += 1
        self._sink(Event(self._line_no(idx), self._line_last(idx), ts, logger, chain))
