"""Which lines of a block a reader must parse: those that could hold a traceback or a line event; the rest are counted.

A record can hold a traceback only where its bytes hold a marker: a header's words followed by the end of their line
(in any escaping: raw text, a JSON string, a JSON string inside docker's `log`), structlog's `exc_type` key, or the
one-line event's sentence. JSON writers escape no ASCII letter, so no escape hides a marker (the readers' own checks
on the raw bytes rely on the same). Each marker is found by one search over the whole block in C (`bytes.find`, or
one compiled pattern whose literal start the regex engine jumps to); Python runs only at the hits.
"""

from __future__ import annotations

import re
from typing import Final

from dbwatch.logs.record import LINE_NEEDLE

__all__ = ["HEADER_RE", "json_candidates", "marker_lines"]

# A header's words, then what can end its line once escapes are undone: a raw control byte (a line end) or space,
# any escape but `\"` (`\n`, `\r`, `\u2028`, `\t`, or the doubled backslash of JSON inside docker's `log`), a
# non-ASCII byte (U+0085, U+2028, non-breaking spaces), or the end of a JSON string. Mentions inside a line
# (`query="Traceback (most recent call last):" n=2`, in raw text or JSON) are not hits.
HEADER_RE: Final = re.compile(rb'most recent call last\):(?=[ \x00-\x1f\x80-\xff]|\\[^"]|\\?"(?:[ \t]|\\t)*[,}\]])')
_NEEDLES: Final = (b"exc_type", LINE_NEEDLE)  # structlog's dict_tracebacks key; the one-line event
_NOT_OBJECT: Final = re.compile(rb"\n(?=[^{])")  # a line that does not start with `{` (blank lines too)


def marker_lines(data: bytes, start: int = 0, end: int | None = None) -> list[int]:
    """Start offsets, ascending and distinct, of the lines of data[start:end] that hold a marker."""
    end = len(data) if end is None else end
    starts = {data.rfind(b"\n", 0, m.start()) + 1 for m in HEADER_RE.finditer(data, start, end)}
    for needle in _NEEDLES:
        i = data.find(needle, start, end)
        while i >= 0:
            starts.add(data.rfind(b"\n", 0, i) + 1)
            stop = data.find(b"\n", i, end)
            i = -1 if stop < 0 else data.find(needle, stop, end)
    return sorted(starts)


def json_candidates(data: bytes, lines: int | None = None) -> list[int]:
    """Start offsets, ascending, of the lines of `data` a JSON reader must parse: a line holding a marker, a line
    not starting with `{`. Every other line is an object with no traceback in it, whatever it parses to.

    `lines`: the number of lines in `data` (its newlines, plus one for a last line without one), when known."""
    if lines is None:
        lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    objects = data.count(b"\n{") + (1 if data[:1] == b"{" else 0)
    if objects == lines:  # every line starts with `{`: one count tells, no per-line search
        return marker_lines(data)
    starts = set(marker_lines(data))
    if data[:1] != b"{":
        starts.add(0)
    starts.update(m.start() + 1 for m in _NOT_OBJECT.finditer(data))
    return sorted(starts)
