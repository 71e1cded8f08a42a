"""Python tracebacks from log text: find where one ends (`Reader`), then build its structure (`parse`).

Handles chains ("direct cause" / "during handling"), exception groups in Python's boxed `| ` rendering
(nested, truncated), frames without a source line, 3.11+ position markers (`~~~^^^`) and foreign lines of
another process interleaved between frames. The result is data (`Chain`, `Exc`, `Frame`), as structlog's
`tracebacks` module builds it from live exceptions; classification happens elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

__all__ = [
    "GROUP_HEADER",
    "SEPARATORS",
    "TB_HEADER",
    "Builder",
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


@dataclass(frozen=True, slots=True, weakref_slot=True)
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
        total = 0
        todo = [self]
        while todo:  # no recursion: a group may be nested as deep as the log makes it
            for exc in todo.pop().excs:
                total += exc.more
                todo.extend(exc.group)
        return total

    def leaves(self) -> list[Chain]:
        """The chains counted for this event: a group's leaves (at any depth, in order), else the chain itself."""
        out: list[Chain] = []
        todo = [self]
        while todo:
            chain = todo.pop()
            group = next((e.group for e in chain.excs if e.is_group and e.group), None)
            if group is None:
                out.append(chain)
            else:
                todo.extend(reversed(group))
        return out


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


def _is_marker(text: str) -> bool:
    return bool(text) and set(text) <= {"^", "~", " ", "-"}


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
        if st is _St.GROUP_DONE and line[:1] == " " and line.lstrip(" ")[:1] in ("|", "+"):
            st = _St.GROUP  # a box after the closing line: the group goes on
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
                # Python prints one closing line, at the deepest last box: the group may end here, or go on
                # (a box line at any depth after it) when that box was not its last
                self._st = _St.GROUP_DONE if _CLOSE_RE.match(line) else _St.GROUP
                self.complete = self._st is _St.GROUP_DONE
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


MAX_GROUP_DEPTH: Final = 100  # Python prints 10 levels (traceback's max_group_depth); deeper is not a real traceback
MAX_EXCS: Final = 256  # exceptions kept per record (chained and grouped); later sub-exceptions count in `more`
MAX_FRAMES: Final = 1000  # frames kept per exception: the outermost 100 and the innermost 900
_HEAD_FRAMES: Final = 100
MAX_MESSAGE_CHARS: Final = 64 * 1024  # of an exception's message (the categories look at its start)
# What one record may hand on to classification, whatever max_record_bytes allows: the work to classify and count
# an event is bounded by these, not by the size of its text.
MAX_RECORD_FRAMES: Final = 10_000
MAX_RECORD_MESSAGE_CHARS: Final = 64 * 1024


class _Budget:
    """Frames and message characters a record may still keep."""

    __slots__ = ("chars", "frames")

    def __init__(self) -> None:
        self.frames = MAX_RECORD_FRAMES
        self.chars = MAX_RECORD_MESSAGE_CHARS


class _Sec:
    """One exception being read, line by line: header, frames (each with its source line), then the message."""

    __slots__ = ("built", "cls", "frames", "is_group", "more", "msg", "msg_chars", "pending", "subs")

    def __init__(self) -> None:
        self.cls: str | None = None
        self.frames: list[Frame] = []
        self.msg: list[str] = []
        self.msg_chars = 0
        self.pending: list[Any] | None = None  # [path, line, function, source] of the frame being read
        self.more = 0
        self.subs: list[Chain] | None = None  # a group's sub-exception chains, once its first box opens
        self.is_group = False
        self.built: Exc | None = None  # a whole exception handed in (a top-level group's box)

    def line(self, line: str) -> None:
        if self.cls is not None:
            if self.msg_chars < MAX_MESSAGE_CHARS:
                part = line[: MAX_MESSAGE_CHARS - self.msg_chars]
                self.msg.append(part)
                self.msg_chars += len(part) + 1
            return
        if self.pending is not None and line.startswith("    "):
            text = line.strip()
            if self.pending[3] is None and text and not _is_marker(text):
                self.pending[3] = text
            return
        self._end_frame()
        if line.startswith("  File"):
            fm = FRAME_RE.match(line)
            if fm:
                self.pending = [fm.group(1), int(fm.group(2)), fm.group(3) or "?", None]
                return
        if line.startswith(" ") or not line.strip():
            return
        em = EXC_LINE_RE.match(line)
        if em:
            self.cls = em.group(1)
            self.line(em.group(2) or "")

    def _end_frame(self) -> None:
        p = self.pending
        if p is None:
            return
        self.pending = None
        frames = self.frames
        frames.append(Frame(p[0], p[1], p[2], p[3]))
        if len(frames) >= 2 * MAX_FRAMES:  # drop from the middle: amortised O(1) per frame
            del frames[_HEAD_FRAMES : len(frames) - (MAX_FRAMES - _HEAD_FRAMES)]

    def exc(self, budget: _Budget) -> Exc | None:
        if self.built is not None:
            return self.built
        self._end_frame()
        if self.cls is None:
            return None
        frames = self.frames
        if len(frames) > MAX_FRAMES:
            frames = frames[:_HEAD_FRAMES] + frames[len(frames) - (MAX_FRAMES - _HEAD_FRAMES) :]
        if len(frames) > budget.frames:  # the record's budget is spent: keep the innermost frames it allows
            frames = frames[len(frames) - budget.frames :] if budget.frames else []
        budget.frames -= len(frames)
        msg = self.msg
        while msg and not msg[-1].strip():
            msg.pop()
        message = "\n".join(msg).strip("\n")[: budget.chars]
        budget.chars -= len(message)
        if self.subs is None and not self.is_group:
            return Exc(self.cls, message, tuple(frames))
        return Exc(self.cls, message, tuple(frames), tuple(self.subs or ()), self.more, is_group=True)


class _ChainB:
    """The sections of one chain (the top level, or the content of one box), split at the chain separators."""

    __slots__ = ("budget", "links", "more_box", "secs")

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.secs = [_Sec()]
        self.links: list[str] = []
        self.more_box = -1  # for a box: N of "and N more exceptions" (-1: not that box, 0: undecided)

    def line(self, line: str) -> None:
        link = _SEPS.get(line)
        if link is not None:
            self.links.append(link)
            self.secs.append(_Sec())
            return
        self.secs[-1].line(line)

    def chain(self) -> Chain | None:
        excs: list[Exc] = []
        kept: list[str] = []
        for i, sec in enumerate(self.secs):
            exc = sec.exc(self.budget)
            if exc is None:
                continue
            if excs and i > 0:
                kept.append(self.links[i - 1])
            excs.append(exc)
        if not excs:
            return None
        # Python prints the innermost (root) first; we keep the outermost first.
        return Chain(tuple(reversed(excs)), tuple(reversed(kept)))


class _Box:
    """An open box of a group rendering: its bar column, its content, and the group section it belongs to."""

    __slots__ = ("col", "content", "first", "owner")

    def __init__(self, col: int, owner: _Sec | None, budget: _Budget) -> None:
        self.col = col
        self.content = _ChainB(budget)
        self.owner = owner  # the group whose sub-exception this box holds; None for a top-level group's box
        self.first = True  # no content line yet


class Builder:
    """Builds a Chain from a traceback's lines one at a time: one pass, no recursion, bounded work per line.

    Exception groups are read with a stack of open boxes (`+-+` opens a sub-exception one bar deeper, `+---- N`
    starts the next, `+-----` closes), so depth costs nothing extra; deeper than MAX_GROUP_DEPTH is refused.
    """

    __slots__ = ("_boxes", "_budget", "_excs", "_top", "failed", "truncated")

    def __init__(self) -> None:
        self._budget = _Budget()
        self._top = _ChainB(self._budget)
        self._boxes: list[_Box] = []
        self._excs = 0  # exceptions (sections) kept so far
        self.failed = False  # not a traceback we can build (too deep)
        self.truncated = False  # sub-exceptions past MAX_EXCS were left out (counted in `more`)

    def add(self, line: str) -> None:
        """One line of the traceback (header first; foreign lines already removed)."""
        if self.failed:
            return
        boxes = self._boxes
        if not boxes:
            m = _GROUP_TOP_RE.match(line)
            if m:
                self._open(len(m.group(1)), None)
                self._boxes[-1].content.line(GROUP_HEADER)
                return
            self._section_line(self._top, line)
            return
        stripped = line.lstrip(" ")
        j = len(line) - len(stripped)
        ch = stripped[:1]
        if ch not in ("|", "+") or j < boxes[0].col:  # text outside every box: the boxes ended untidily
            while boxes:
                self._close()
            self.add(line)
            return
        while len(boxes) > 1 and boxes[-1].col > j:  # a box left without its closing line
            self._close()
        box = boxes[-1]
        if ch == "|" or j > box.col:
            self._content(box, line[box.col + 2 :])
        elif stripped.startswith("+-+"):  # the group just read opens its first sub-exception, one bar deeper
            sec = box.content.secs[-1]
            if sec.subs is None:
                sec.subs = []
            self._open(j + 2, sec)
        elif _CLOSE_RE.match(line):
            self._close()
        else:  # `+---- N ----`: the next sub-exception of the same group
            owner = box.owner
            self._close()
            self._open(j, owner)

    def _section_line(self, chain: _ChainB, line: str) -> None:
        if line in _SEPS:
            self._count()
            if self.truncated:
                return  # no more sections: what follows is read as the message of the last one (capped)
        chain.line(line)

    def _content(self, box: _Box, text: str) -> None:
        if box.first and text.strip():
            box.first = False
            mm = _MORE_RE.match(text.strip())
            if mm:
                box.content.more_box = int(mm.group(1))
                return
        if box.content.more_box < 0:
            self._section_line(box.content, text)

    def _count(self) -> None:
        self._excs += 1
        if self._excs > MAX_EXCS:
            self.truncated = True

    def _open(self, col: int, owner: _Sec | None) -> None:
        if len(self._boxes) >= MAX_GROUP_DEPTH:
            self.failed = True
            return
        self._count()
        self._boxes.append(_Box(col, owner, self._budget))

    def _close(self) -> None:
        box = self._boxes.pop()
        owner = box.owner
        if box.content.more_box >= 0:
            if owner is not None:
                owner.more += box.content.more_box
            return
        if owner is None:  # a top-level group's box: its exception is one section of the top chain
            chain = box.content.chain()
            if chain is not None:
                g = chain.excs[0]
                self._top.secs[-1].built = Exc(g.cls, g.message, g.frames, g.group, g.more, is_group=True)
        elif self.truncated:
            owner.more += 1  # past MAX_EXCS: left out, like Python's "and N more exceptions"
        else:
            chain = box.content.chain()
            if chain is not None:
                if owner.subs is None:
                    owner.subs = []
                owner.subs.append(chain)

    def finish(self) -> Chain | None:
        """The chain read, or None when the lines hold none (or it was refused)."""
        while self._boxes and not self.failed:
            self._close()
        if self.failed:
            return None
        return self._top.chain()


def parse(lines: Iterable[str]) -> Chain | None:
    """The chain from a traceback's lines (header first; foreign lines already removed), or None if it is none."""
    b = Builder()
    for line in lines:
        b.add(line)
    return b.finish()


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
