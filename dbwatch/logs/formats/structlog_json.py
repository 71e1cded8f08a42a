"""JSON lines (structlog, python-json-logger): a traceback as a string field or as structlog's dict_tracebacks.

Lines that are not JSON go on to the plain-text scanner, so a raw traceback a crashing process printed into the
same file is still assembled; in a native JSON file they also count as unmatched.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Final

from dbwatch.logs.formats.plain import CACHE_COST, ParseCache, PlainScanner
from dbwatch.logs.prefilter import json_candidates
from dbwatch.logs.record import LINE_NEEDLE, Event, LineInfo, RecordHook, Sink, Stats, line_event, warn
from dbwatch.logs.traceback import GROUP_HEADER, SEPARATORS, TB_HEADER, Chain, from_dicts, parse

__all__ = ["JsonLines", "chain_of", "record_fields"]

EXC_KEYS: Final = ("exception", "exc_info", "exc_text", "stack_trace", "stack", "traceback", "error")
MSG_KEYS: Final = ("event", "message", "msg")
TIME_KEYS: Final = ("timestamp", "time", "@timestamp", "ts", "asctime")
LOGGER_KEYS: Final = ("logger", "logger_name", "name")
TEXT_CACHE_CHARS: Final = 2 << 20  # what a reader's cache of parsed text tracebacks may cost, in characters
TEXT_MAX: Final = 64 * 1024  # longer texts are parsed each time


def _text_chain(text: str, *, whole: bool = False) -> Chain | None:
    """The chain a text traceback in a string holds: from its first header line on, or (`whole`, when a chain
    separator line is there) from the start, as it may open with a cause that has no traceback of its own. No header
    line, no chain (the prefilter finds a traceback by its header)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s == TB_HEADER or s == "+ " + GROUP_HEADER:
            return parse(lines if whole and any(ln in SEPARATORS for ln in lines) else lines[i:])
    return None


class TextChains:
    """Text tracebacks parsed before, by their text: the same traceback logged again costs a lookup, not a parse, and
    hands out the same Chain (so its classification is cached too). Bounded in characters, least recently used out
    first; a text over TEXT_MAX is not kept."""

    __slots__ = ("_chains", "budget", "size")

    def __init__(self, budget: int = TEXT_CACHE_CHARS) -> None:
        self.budget = budget
        self.size = 0
        self._chains: OrderedDict[tuple[str, bool], Chain | None] = OrderedDict()

    def get(self, text: str, *, whole: bool = False) -> Chain | None:
        key = (text, whole)
        if key in self._chains:
            self._chains.move_to_end(key)
            return self._chains[key]
        chain = _text_chain(text, whole=whole)
        if len(text) <= TEXT_MAX:
            self._chains[key] = chain
            self.size += CACHE_COST * len(text)
            while self.size > self.budget:
                (old, _w), _c = self._chains.popitem(last=False)
                self.size -= CACHE_COST * len(old)
        return chain


def chain_of(obj: Mapping[str, Any], texts: TextChains | None = None) -> Chain | None:
    """The traceback a JSON record carries, if any; of several forms (structured and text), the most complete."""
    best: Chain | None = None
    for chain in _chains(obj, texts or TextChains(0)):
        if best is None or chain.lost < best.lost:
            best = chain
        if best.lost == 0:
            break
    return best


def _chains(obj: Mapping[str, Any], texts: TextChains) -> Iterator[Chain]:
    for key in EXC_KEYS:
        value = obj.get(key)
        chain = None
        if isinstance(value, str) and "most recent call last" in value:
            chain = texts.get(value, whole=True)
        elif isinstance(value, list) and value and isinstance(value[0], dict) and "exc_type" in value[0]:
            chain = from_dicts(value)
        if chain is not None:
            yield chain
    for key in MSG_KEYS:
        value = obj.get(key)
        if isinstance(value, str) and "most recent call last" in value:
            chain = texts.get(value)
            if chain is not None:
                yield chain
            return


def record_fields(obj: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(message, timestamp, logger) of a JSON record."""
    msg = next((v for k in MSG_KEYS if isinstance(v := obj.get(k), str)), "")
    ts = next((v for k in TIME_KEYS if isinstance(v := obj.get(k), str)), None)
    logger = next((v for k in LOGGER_KEYS if isinstance(v := obj.get(k), str)), None)
    return msg, ts, logger


class JsonLines:
    """One JSON object per line; non-JSON lines go to a plain scanner (and count as unmatched when `strict`)."""

    name = "json"

    def __init__(
        self,
        sink: Sink,
        stats: Stats,
        *,
        mapped: bool = False,
        strict: bool = True,
        max_record_bytes: int = 1 << 20,
        on_record: RecordHook | None = None,
        start_line: int = 1,
        cache: ParseCache | None = None,
        prefilter: bool = False,
    ) -> None:
        self._sink = sink
        self._stats = stats
        self._mapped = mapped
        self._strict = strict
        self._on_record = on_record
        self._line = start_line  # next physical line when not mapped
        self._off = 0  # input offset of the next line when not mapped
        # parse only lines that could hold a traceback: a file of its own, no access-log hook (it needs every record);
        # bad JSON is then counted only among those lines
        self._prefilter = prefilter and not mapped and strict and on_record is None
        self._text = PlainScanner(
            sink, stats, mapped=True, max_record_bytes=max_record_bytes, on_record=on_record, cache=cache
        )
        self._failed = False  # a record raised: logged once
        self._texts = TextChains()

    @property
    def pending(self) -> bool:
        return self._text.pending

    def hold(self) -> tuple[int, int] | None:
        return self._text.hold()

    def feed(self, data: bytes, infos: list[LineInfo] | None = None, *, final: bool = False) -> None:
        """Take complete lines; `infos` gives their physical lines when `mapped`."""
        other: list[bytes] = []
        other_infos: list[LineInfo] = []
        if self._prefilter:
            self._feed_candidates(data, other, other_infos)
        else:
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            for k, raw in enumerate(lines):
                if self._mapped:
                    info = infos[k] if infos and k < len(infos) else LineInfo(0, 0, None)
                else:
                    info = LineInfo(self._line, self._line, None, self._off)
                    self._line += 1
                    self._off += len(raw) + 1
                    self._stats.lines += 1
                self._line_in(raw, info, other, other_infos)
        self._text.feed(b"\n".join(other) + b"\n" if other else b"", other_infos, final=final)

    def _feed_candidates(self, data: bytes, other: list[bytes], other_infos: list[LineInfo]) -> None:
        """Parse only the lines that could hold a traceback (see prefilter); count every line."""
        n = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        pos, line = 0, self._line
        for start in json_candidates(data, n):
            line += data.count(b"\n", pos, start)
            pos = start
            end = data.find(b"\n", start)
            raw = data[start : len(data) if end < 0 else end]
            self._line_in(raw, LineInfo(line, line, None, self._off + start), other, other_infos)
        self._line += n
        self._off += len(data) + (1 if data and not data.endswith(b"\n") else 0)
        self._stats.lines += n

    def _line_in(self, raw: bytes, info: LineInfo, other: list[bytes], other_infos: list[LineInfo]) -> None:
        """One line: a JSON record, or text for the plain scanner (and unmatched when `strict`)."""
        if raw.startswith(b"{") and (self._record(raw, info) or self._strict):
            return
        if self._strict and raw.strip():
            self._stats.unmatched += 1
        other.append(raw)
        other_infos.append(info)

    def flush(self) -> None:
        self._text.flush()

    def _record(self, raw: bytes, info: LineInfo) -> bool:
        """`record`, with whatever one record raises caught: counted as a parse error, logged once."""
        try:
            return self.record(raw, info)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the file
            self._stats.parse_errors += 1
            if not self._failed:
                self._failed = True
                warn("log_record_failed", error=type(exc).__name__)
            return True

    def record(self, raw: bytes, info: LineInfo) -> bool:
        """One JSON record; False if it is not one (counted as a parse error when `strict`, else read as text)."""
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError covers bad JSON and bad UTF-8
            obj = None
        if not isinstance(obj, dict):
            if self._strict:
                self._stats.parse_errors += 1
            return False
        msg, ts, logger = record_fields(obj)
        if self._on_record is not None:
            self._on_record(msg, obj)
        if LINE_NEEDLE in raw:
            line_chain = line_event(msg)
            if line_chain is not None:
                self._stats.events += 1
                self._sink(Event(info.first, info.last, ts or info.time, logger, line_chain))
                return True
        if b"most recent call last" not in raw and b'"exc_type"' not in raw:
            return True
        chain = chain_of(obj, self._texts)
        if chain is not None:
            self._stats.events += 1
            self._sink(Event(info.first, info.last, ts or info.time, logger, chain))
        return True
