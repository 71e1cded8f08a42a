"""Which lines of a block a reader must parse: those that could hold a traceback or a line event; the rest are counted.

A JSON record can hold a traceback only where its bytes hold a marker (the header's words, structlog's `"exc_type"`
key, the one-line event's needle): JSON writers escape no ASCII letter, so no escape hides a marker (the reader's
own check on the raw bytes relies on the same). A line that
is not a JSON object goes to the text scanner. Finding both is a few memchr-speed passes over the whole block.
"""

from __future__ import annotations

import re
from typing import Final

from dbwatch.logs.record import LINE_NEEDLE

__all__ = ["JSON_MARKERS", "json_candidates"]

JSON_MARKERS: Final = (b"most recent call last", b'"exc_type"', LINE_NEEDLE)
_NOT_OBJECT: Final = re.compile(rb"\n(?=[^{])")  # a line that does not start with `{` (blank lines too)


def json_candidates(data: bytes) -> list[int]:
    """Start offsets, ascending, of the lines of `data` a JSON reader must parse: a line holding a marker, a line
    not starting with `{`. Every other line is an object with no traceback in it, whatever it parses to."""
    starts: set[int] = set()
    if data[:1] != b"{":
        starts.add(0)
    starts.update(m.start() + 1 for m in _NOT_OBJECT.finditer(data))
    for needle in JSON_MARKERS:
        i = data.find(needle)
        while i >= 0:
            starts.add(data.rfind(b"\n", 0, i) + 1)
            end = data.find(b"\n", i)
            i = -1 if end < 0 else data.find(needle, end)
    return sorted(starts)
