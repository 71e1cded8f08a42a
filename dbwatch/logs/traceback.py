"""Python tracebacks from log text: find where one ends (`Reader`), then build its structure (`parse`).

Handles chains ("direct cause" / "during handling"), exception groups in Python's boxed `| ` rendering
(nested, truncated), frames without a source line, 3.11+ position markers (`~~~^^^`) and foreign lines of
another process interleaved between frames. The result is data (`Chain`, `Exc`, `Frame`), as structlog's
`tracebacks` module builds it from live exceptions; classification happens elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

__all__ = [
    "GROUP_HEADER",
    "SEPARATORS",
    "TB_HEADER",
    "Chain",
    "Exc",
    "Frame",
    "Reader",
    "Verdict",
    "from_dicts",
    "parse",
]

TB_HEADER: Final = "Traceback (most recent call last):"
GROUP_HEADER: Final = "Exception Group Traceback (most recent call last):"
SEP_CAUSE: Final = "The above exception was the direct cause of the following exception:"
SEP_CONTEXT: Final = "During handling of the above exception, another exception occurred:"
_SEPS: Final = {SEP_CAUSE: "cause", SEP_CONTEXT: "context"}
SEPARATORS: Final = frozenset(_SEPS)

FRAME_RE: Final = re.compile(r'^\s*File "(.*)", line (\d+)(?:, in (.*))?$')
# A class name as Python prints it (module.Qualname, `<locals>` allowed), then `: message` or nothing.
EXC_LINE_RE: Final = re.compile(r"^([A-Za-z_]\w*(?:\.(?:[A-Za-z_]\w*|<locals>))*)(?::(?: (.*))?)?$")
_GROUP_TOP_RE: Final = re.compile(r"^( *)\+ Exception Group Traceback \(most recent call last\):$")
_CLOSE_RE: Final = re.compile(r"^ *\+-{36}$")
_MORE_RE: Final = re.compile(r"^and (\d+) more exceptions?$")

_SUB_RE: Final = re.compile(r"\((\d+) sub-exceptions?\)$")  # how str() of an ExceptionGroup ends
MAX_MESSAGE_LINES: Final = 200
MAX_FOREIGN_LINES: Final = 500


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame as printed: path, line, function; source is None when the file had none (.pyx)."""

    path: str
    line: int
    function: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Exc:
    """One exception of a chain: class as printed, message, frames; sub-exception chains for a group."""

    cls: str
    message: str
    frames: tuple[Frame, ...] = ()
    group: tuple[Chain, ...] = ()
    more: int = 0  # sub-exceptions Python left out ("and N more exceptions")
    is_group: bool = False


@dataclass(frozen=True, slots=True)
class Chain:
    """A logged exception with its chain, outermost (the one logged) first; `links[i]` ties exc i to i+1."""

    excs: tuple[Exc, ...]
    links: tuple[str, ...] = field(default=())  # "cause" | "context", len(excs) - 1

    @property
    def final(self) -> Exc:
        return self.excs[0]

    @property
    def root(self) -> Exc:
        return self.excs[-1]

    @property
    def lost(self) -> int:
        """Sub-exceptions of groups that the log does not show (Python's "and N more", a dict form without them)."""
        return sum(exc.more + sum(sub.lost for sub in exc.group) for exc in self.excs)

    def leaves(self) -> list[Chain]:
        """The chains counted for this event: a group's leaves (recursively), else the chain itself."""
        for exc in self.excs:
            if exc.is_group and exc.group:
                out: list[Chain] = []
                for sub in exc.group:
                    out.extend(sub.leaves())
                return out
        return [self]


class Verdict(Enum):
    """What a line is to the traceback being read."""

    ACCEPT = "accept"  # part of the traceback
    FOREIGN = "foreign"  # an interleaved line of something else; skip it, keep reading
    END = "end"  # the traceback ended before this line; the line is not part of it


class _St(Enum):
    FRAMES = 1
    MESSAGE = 2
    BLANK = 3
    SEP = 4
    GROUP = 5
    GROUP_DONE = 6


def _never(line: str) -> bool:
    return False


class Reader:
    """Decides line by line where a traceback ends; made with its header line, fed the lines after it.

    `is_record_start` recognises the first line of a new log record of the surrounding format: inside the frames it
    marks an interleaved foreign line, after the exception line it ends the traceback.
    """

    __slots__ = ("_blank_run", "_col", "_foreign", "_is_start", "_msg", "_st", "complete")

    def __init__(self, header: str | None, is_record_start: Callable[[str], bool] = _never) -> None:
        self._is_start = is_record_start
        self._msg = 0
        self._foreign = 0
        self._blank_run = 0
        m = _GROUP_TOP_RE.match(header) if header is not None else None
        if header is None:  # starts with a cause that was never raised: an exception line, no header
            self._st, self._col = _St.SEP, 0
        elif m:
            self._st, self._col = _St.GROUP, len(m.group(1))
        else:
            self._st, self._col = _St.FRAMES, 0
        self.complete = False  # True once the text read so far is a whole traceback

    def copy(self) -> Reader:
        """The same reader state, to try a line on without changing this one."""
        other = Reader.__new__(Reader)
        for name in Reader.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def feed(self, line: str) -> Verdict:
        st = self._st
        if st is _St.FRAMES:
            if line.startswith("  ") or not line.strip():
                return Verdict.ACCEPT
            if line == TB_HEADER:  # a new traceback: this one never got its exception line
                return Verdict.END
            if self._is_start(line) or not EXC_LINE_RE.match(line):
                return self._skip()
            self._st, self._msg, self.complete = _St.MESSAGE, 0, True
            return Verdict.ACCEPT
        if st is _St.GROUP:
            stripped = line.lstrip(" ")
            if stripped[:1] in ("|", "+") and len(line) - len(stripped) >= self._col:
                if _CLOSE_RE.match(line):
                    self._st, self.complete = _St.GROUP_DONE, True
                return Verdict.ACCEPT
            return self._skip()
        if line in _SEPS:
            self._st, self.complete, self._blank_run = _St.SEP, False, 0
            return Verdict.ACCEPT
        if st is _St.SEP:
            if not line.strip():
                return Verdict.ACCEPT
            if line == TB_HEADER:
                self._st = _St.FRAMES
                return Verdict.ACCEPT
            m = _GROUP_TOP_RE.match(line)
            if m:
                self._st, self._col = _St.GROUP, len(m.group(1))
                return Verdict.ACCEPT
            if EXC_LINE_RE.match(line) and not self._is_start(line):  # a cause that was never raised: no frames
                self._st, self._msg, self.complete = _St.MESSAGE, 0, True
                return Verdict.ACCEPT
            return self._skip()
        # MESSAGE, BLANK, GROUP_DONE: the traceback could end here
        if not line.strip():
            self._st = _St.BLANK
            self._blank_run += 1
            return Verdict.ACCEPT if self._blank_run <= 2 else Verdict.END
        if st is _St.GROUP_DONE or self._is_start(line) or line == TB_HEADER:
            return Verdict.END
        if _GROUP_TOP_RE.match(line):
            return Verdict.END
        # a message may hold blank lines (asyncpg's pgbouncer hint does): a line that starts no record goes on it
        self._st, self._blank_run = _St.MESSAGE, 0
        self._msg += 1
        return Verdict.ACCEPT if self._msg <= MAX_MESSAGE_LINES else Verdict.END

    def _skip(self) -> Verdict:
        self._foreign += 1
        return Verdict.FOREIGN if self._foreign <= MAX_FOREIGN_LINES else Verdict.END


def parse(lines: Sequence[str]) -> Chain | None:
    """The chain from a traceback's lines (header first; foreign lines already removed), or None if it is none."""
    sections: list[list[str]] = [[]]
    links: list[str] = []
    for line in lines:
        link = _SEPS.get(line)
        if link is not None:
            links.append(link)
            sections.append([])
        else:
            sections[-1].append(line)
    excs: list[Exc] = []
    kept: list[str] = []
    for i, sec in enumerate(sections):
        exc = _section(sec)
        if exc is None:
            continue
        if excs and i > 0:
            kept.append(links[i - 1])
        excs.append(exc)
    if not excs:
        return None
    # Python prints the innermost (root) first; we keep the outermost first.
    return Chain(tuple(reversed(excs)), tuple(reversed(kept)))


def _section(lines: list[str]) -> Exc | None:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        return None
    m = _GROUP_TOP_RE.match(lines[0])
    if m:
        return _group(lines, len(m.group(1)))
    return _plain(lines)


def _plain(lines: Sequence[str]) -> Exc | None:
    frames: list[Frame] = []
    i = 0
    n = len(lines)
    if i < n and lines[i].strip() in (TB_HEADER, GROUP_HEADER):
        i += 1
    while i < n:
        line = lines[i]
        fm = FRAME_RE.match(line)
        if fm and line.startswith("  File"):
            source = None
            j = i + 1
            while j < n and lines[j].startswith("    "):
                text = lines[j].strip()
                if source is None and text and not _is_marker(text):
                    source = text
                j += 1
            frames.append(Frame(fm.group(1), int(fm.group(2)), fm.group(3) or "?", source))
            i = j
            continue
        if line.startswith(" ") or not line.strip():
            i += 1
            continue
        em = EXC_LINE_RE.match(line)
        if em:
            message = "\n".join([em.group(2) or "", *lines[i + 1 :]]).strip("\n")
            return Exc(em.group(1), message, tuple(frames))
        i += 1
    return None


def _is_marker(text: str) -> bool:
    return bool(text) and set(text) <= {"^", "~", " ", "-"}


def _group(lines: Sequence[str], col: int) -> Exc | None:
    """A group rendered as a box whose own bar is at `col`: own lines, then sub-exceptions one bar deeper."""
    own: list[str] = []
    subs: list[list[str]] = []
    cur: list[str] | None = None
    more = 0
    for idx, line in enumerate(lines):
        stripped = line.lstrip(" ")
        j = len(line) - len(stripped)
        ch = stripped[:1]
        if idx == 0:
            own.append(GROUP_HEADER)
            continue
        if j == col and ch == "|" and cur is None:
            own.append(line[col + 2 :])
        elif j == col and stripped.startswith("+-+"):
            cur = []
            subs.append(cur)
        elif j == col + 2 and ch == "+" and not stripped.startswith("+-+"):
            if _CLOSE_RE.match(line):
                cur = None
            else:
                cur = []
                subs.append(cur)
        elif cur is not None and j >= col + 2:
            cur.append(line)
    head = _plain(own)
    if head is None:
        return None
    chains: list[Chain] = []
    for sub in subs:
        content = [ln[col + 4 :] if len(ln) > col + 4 else "" for ln in sub if ln[col + 2 : col + 3] == "|"]
        first = next((c for c in content if c.strip()), "")
        mm = _MORE_RE.match(first.strip())
        if mm:
            more += int(mm.group(1))
            continue
        if any(ln[col + 2 : col + 5] == "+-+" for ln in sub):  # a nested group (with or without its header)
            body = sub[1:] if first.strip() == GROUP_HEADER else sub
            nested = _group([" " * (col + 2) + "+ " + GROUP_HEADER, *body], col + 2)
            if nested is not None:
                chains.append(Chain((nested,)))
            continue
        chain = parse(content)
        if chain is not None:
            chains.append(chain)
    return Exc(head.cls, head.message, head.frames, tuple(chains), more, is_group=True)


def from_dicts(stacks: Any) -> Chain | None:
    """The chain from structlog's `dict_tracebacks` (a list of stacks, outermost first), or None if malformed."""
    if not isinstance(stacks, list) or not stacks:
        return None
    excs: list[Exc] = []
    links: list[str] = []
    for k, st in enumerate(stacks):
        if not isinstance(st, dict):
            return None
        frames = []
        for f in st.get("frames") or ():
            if isinstance(f, dict):
                lineno = f.get("lineno")
                frames.append(
                    Frame(
                        str(f.get("filename", "?")), lineno if isinstance(lineno, int) else 0, str(f.get("name", "?"))
                    )
                )
        group: list[Chain] = []
        value = str(st.get("exc_value", ""))
        stated = _SUB_RE.search(value) if str(st.get("exc_type", "")).endswith("ExceptionGroup") else None
        for sub in st.get("exceptions") or ():
            chain = from_dicts(sub)
            if chain is not None:
                group.append(chain)
        # structlog before 25.4 (its issue 676) gives a group without its sub-exceptions: what it states is lost
        more = max(0, int(stated.group(1)) - len(group)) if stated else 0
        excs.append(
            Exc(
                str(st.get("exc_type", "?")),
                value,
                tuple(frames),
                tuple(group),
                more,
                is_group=bool(st.get("is_group")) or stated is not None,
            )
        )
        if k > 0:
            links.append("cause" if st.get("is_cause") else "context")
    return Chain(tuple(excs), tuple(links))
