"""`dbwatch scan`: read log files once and report every traceback found (post-mortem, no daemon needed)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import IO, Any, Final

from dbwatch.logs.classify import AppRules, Category, Classified, Classifier
from dbwatch.logs.formats import ParseCache, Splitter
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.traceback import Chain, Frame

__all__ = [
    "FileReport",
    "JsonWriter",
    "Tally",
    "scan_file",
    "scan_files",
    "summary",
    "to_json",
    "to_text",
    "write_json",
]

READ_SIZE: Final = 1 << 20
STDIN: Final = "-"
PROGRESS_MIN_BYTES: Final = 8 << 20
MAX_KEYS: Final = 1000  # distinct classes / code lines tallied per table; later ones are counted under OTHER
OTHER: Final = "(other)"
EXAMPLE_CHARS: Final = 150
MEMO_SIZE: Final = 256  # verdicts whose report rows and JSON are kept
_NONE: Final = Chain(())


def _bump(table: Counter[str], key: str, n: int = 1) -> None:
    table[key if key in table or len(table) < MAX_KEYS else OTHER] += n


class _Memo:
    """What is derived from one verdict (its report rows, its JSON), by the verdict's identity: the classifier hands
    out the same Classified for the same traceback, so a traceback logged again costs a lookup. Holds MEMO_SIZE
    verdicts (oldest out first), and each entry keeps its verdict alive, so an id is never reused while held."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[int, tuple[Classified, Any]] = {}

    def get(self, c: Classified, make: Callable[[Classified], Any]) -> Any:
        hit = self._items.get(id(c))
        if hit is not None and hit[0] is c:
            return hit[1]
        value = make(c)
        if len(self._items) >= MEMO_SIZE:
            del self._items[next(iter(self._items))]
        self._items[id(c)] = (c, value)
        return value


def _rows(c: Classified, rules: AppRules) -> tuple[str, list[tuple[str, str]], list[str], dict[str, str]]:
    """A verdict's rows in the report: final class, (category, code line) per counted unit, root classes, and the
    example line per category."""
    counted: list[tuple[str, str]] = []
    example: dict[str, str] = {}
    for v in c.counted:
        loc = f"{rules.label(v.location)} in {v.location.function}" if v.location else "(no app frame)"
        counted.append((v.category.value, loc))
        first = c.message.split("\n", 1)[0][:EXAMPLE_CHARS] if c.message else ""
        example.setdefault(v.category.value, f"{v.exception}: {first}")
    roots = [v.exception for v in c.leaves] if c.leaves else [c.root_class]
    return c.final_class, counted, roots, example


@dataclass(slots=True)
class Tally:
    """The report's totals, kept as events go by: its size depends on the distinct keys (capped), not on events."""

    events: int = 0
    by_category: Counter[str] = field(default_factory=lambda: Counter({c.value: 0 for c in Category}))
    by_final: Counter[str] = field(default_factory=Counter)
    by_root: Counter[str] = field(default_factory=Counter)
    where: dict[str, Counter[str]] = field(default_factory=dict)  # category -> code line -> count
    example: dict[str, str] = field(default_factory=dict)  # category -> first `class: message line`
    memo: _Memo = field(default_factory=_Memo, repr=False, compare=False)

    def add(self, c: Classified, rules: AppRules) -> None:
        final, counted, roots, example = self.memo.get(c, partial(_rows, rules=rules))
        self.events += 1
        _bump(self.by_final, final)
        for cat, loc in counted:
            self.by_category[cat] += 1
            _bump(self.where.setdefault(cat, Counter()), loc)
            if cat not in self.example:
                self.example[cat] = example[cat]
        for root in roots:
            _bump(self.by_root, root)

    def merge(self, other: Tally) -> None:
        self.events += other.events
        self.by_category.update(other.by_category)
        for mine, theirs in ((self.by_final, other.by_final), (self.by_root, other.by_root)):
            for k, n in theirs.items():
                _bump(mine, k, n)
        for cat, locs in other.where.items():
            table = self.where.setdefault(cat, Counter())
            for k, n in locs.items():
                _bump(table, k, n)
        for cat, ex in other.example.items():
            self.example.setdefault(cat, ex)


@dataclass(slots=True)
class FileReport:
    """What one file held: its totals, and its events when asked to keep them (the CLI streams them instead)."""

    name: str
    format: str
    stats: Stats
    rules: AppRules = field(default_factory=AppRules)
    events: list[tuple[Event, Classified]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


def _loc(f: Frame | None, rules: AppRules) -> dict[str, Any] | None:
    """A frame in the JSON report: where it is, and `label`, the `location` label /metrics gives it."""
    return None if f is None else {"path": f.path, "line": f.line, "function": f.function, "label": rules.label(f)}


def _progress(out: IO[str] | None, name: str, done: int, total: int, started: float) -> None:
    if out is None or total <= 0:
        return
    frac = min(done / total, 1.0)
    rate = done / max(time.monotonic() - started, 1e-9) / 1e6
    bar = "#" * int(frac * 30)
    out.write(f"\rscan {name}: [{bar:<30}] {100 * frac:5.1f}% {done / 1e6:.0f}/{total / 1e6:.0f} MB {rate:.0f} MB/s")
    out.flush()


def scan_file(
    path: str | Path,
    fmt: str = "auto",
    rules: AppRules | None = None,
    *,
    progress: IO[str] | None = None,
    max_line_bytes: int = 1 << 20,
    max_record_bytes: int = 1 << 20,
    on_event: Callable[[Event, Classified], None] | None = None,
    cache: ParseCache | None = None,
    prefilter: bool = True,
) -> FileReport:
    """Read one file to its end and classify every event; `progress` gets a bar for large files.

    Each event goes to `on_event` when given (then the report keeps only its totals), else into `report.events`.
    With `prefilter`, lines that cannot hold a traceback are counted, not parsed (see dbwatch.logs.prefilter).
    """
    rules = rules or AppRules()
    stats = Stats()
    report = FileReport(str(path), fmt, stats, rules)

    classify = Classifier(rules)

    def sink(event: Event) -> None:
        c = classify(event.chain)
        report.tally.add(c, rules)
        # keep the verdict, not the parsed chain; no message but its first line (it can be 64 KiB)
        kept = Event(event.first_line, event.last_line, event.timestamp, event.logger, _NONE)
        if on_event is not None:
            on_event(kept, c)
        else:
            report.events.append((kept, replace(c, message=c.message.split("\n", 1)[0][:EXAMPLE_CHARS])))

    splitter = Splitter(
        fmt,
        sink,
        stats,
        max_line_bytes=max_line_bytes,
        max_record_bytes=max_record_bytes,
        cache=cache,
        prefilter=prefilter,
    )
    with _open(path) as f:  # unbuffered: reads go straight into each chunk
        # a regular file is read up to its size at open (one that keeps growing still ends); stdin to its EOF
        total = os.fstat(f.fileno()).st_size if str(path) != STDIN else 0
        left = total if total else -1
        show = progress if total >= PROGRESS_MIN_BYTES else None
        started = time.monotonic()
        last = 0.0
        while left and (chunk := f.read(READ_SIZE if left < 0 else min(READ_SIZE, left))):
            left = left - len(chunk) if left > 0 else left
            splitter.feed(chunk)
            now = time.monotonic()
            if show is not None and now - last > 0.2:
                _progress(show, Path(path).name, stats.bytes, total, started)
                last = now
        splitter.flush()
        if show is not None:
            _progress(show, Path(path).name, stats.bytes, total, started)
            show.write("\n")
    report.format = splitter.format if splitter.parser is not None else "plain"
    return report


class NotRegularFile(OSError):
    """A FIFO, device, socket or directory given to scan: reading it may never end, so it is refused."""


def _open(path: str | Path) -> io.FileIO:
    """The file to scan: `-` is standard input; anything else must be a regular file (checked on the open file)."""
    if str(path) == STDIN:
        return io.FileIO(os.dup(sys.stdin.fileno()), "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: opening a FIFO does not wait
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device or socket"
        raise NotRegularFile(f"{kind}, not a regular file (give - to read standard input)")
    os.set_blocking(fd, True)
    return io.FileIO(fd, "rb")


def scan_files(paths: Sequence[str], fmt: str, rules: AppRules, *, progress: IO[str] | None = None) -> list[FileReport]:
    """Scan every file in turn."""
    return [scan_file(p, fmt, rules, progress=progress) for p in paths]


def _total(reports: Sequence[FileReport]) -> Tally:
    t = Tally()
    for r in reports:
        t.merge(r.tally)
    return t


def summary(reports: Sequence[FileReport]) -> dict[str, dict[str, int]]:
    """Totals: by category and root class per counted unit (each leaf of a group), by final class per event."""
    t = _total(reports)
    return {
        "by_category": dict(t.by_category),
        "by_final_class": dict(t.by_final.most_common()),
        "by_root_class": dict(t.by_root.most_common()),
    }


def _event(e: Event, c: Classified, rules: AppRules) -> dict[str, Any]:
    return {
        "first_line": e.first_line,
        "last_line": e.last_line,
        "timestamp": e.timestamp,
        "logger": e.logger,
        **_verdict(c, rules),
    }


def _verdict(c: Classified, rules: AppRules) -> dict[str, Any]:
    return {
        "final_class": c.final_class,
        "root_class": c.root_class,
        "chain": list(c.chain),
        "category": c.category.value,
        "location": _loc(c.location, rules),
        "leaves": [
            {"class": v.exception, "category": v.category.value, "location": _loc(v.location, rules)} for v in c.leaves
        ],
    }


def to_json(reports: Sequence[FileReport]) -> dict[str, Any]:
    """The `--json` report as one object."""
    files = {
        r.name: {"format": r.format, "lines": r.stats.lines, "events": [_event(e, c, r.rules) for e, c in r.events]}
        for r in reports
    }
    return {"files": files, "summary": summary(reports)}


def write_json(reports: Sequence[FileReport], out: IO[str]) -> None:
    """The same object as to_json, written event by event."""
    w = JsonWriter(out)
    for r in reports:
        w.begin(r.name)
        for e, c in r.events:
            w.event(e, c, r.rules)
        w.end(r)
    w.close(reports)


class JsonWriter:
    """The `--json` report written as it is found: each event as soon as it is classified, nothing kept."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._files = 0
        self._events = 0
        self._memo = _Memo()
        self._rules: AppRules | None = None
        out.write('{"files": {')

    def begin(self, name: str) -> None:
        self._out.write(("," if self._files else "") + f"\n {json.dumps(name)}: " + '{"events": [')
        self._files += 1
        self._events = 0

    def event(self, e: Event, c: Classified, rules: AppRules) -> None:
        # json.dumps(_event(...)), with the verdict's part encoded once per verdict
        head = json.dumps(
            {"first_line": e.first_line, "last_line": e.last_line, "timestamp": e.timestamp, "logger": e.logger}
        )
        if rules is not self._rules:  # the verdict's JSON holds labels made by these rules
            self._memo, self._rules = _Memo(), rules
        tail = self._memo.get(c, lambda c: json.dumps(_verdict(c, rules)))
        self._out.write(("," if self._events else "") + "\n  " + head[:-1] + ", " + tail[1:])
        self._events += 1

    def end(self, r: FileReport) -> None:
        self._out.write(f'], "format": {json.dumps(r.format)}, "lines": {r.stats.lines}}}')

    def abandon(self) -> None:
        """A file that failed after its entry was opened: close the entry with what it has."""
        self._out.write('], "format": null, "lines": 0}')

    def close(self, reports: Sequence[FileReport]) -> None:
        self._out.write('},\n "summary": ' + json.dumps(summary(reports)) + "}\n")


def to_text(reports: Sequence[FileReport]) -> str:
    """The human report: per file counts, then totals per category and class with top code lines."""
    out: list[str] = []
    for r in reports:
        s = r.stats
        out.append(
            f"{r.name}: format {r.format}, {s.lines} lines, {r.tally.events} tracebacks"
            f" ({s.unmatched} unmatched lines, {s.parse_errors} parse errors, {s.truncated} truncated)"
        )
    summ = summary(reports)
    total = _total(reports)
    where, example = total.where, total.example
    out.append("")
    out.append("by category:")
    for cat, n in summ["by_category"].items():
        if n:
            out.append(f"  {cat:28} {n:8}   e.g. {example.get(cat, '')[:150]}")
            for loc, k in where.get(cat, Counter()).most_common(5):
                out.append(f"      {k:8}  {loc}")
    if not any(summ["by_category"].values()):
        out.append("  (no tracebacks)")
    out.append("")
    out.append("by final class:")
    out.extend(f"  {k:60} {v:8}" for k, v in summ["by_final_class"].items())
    out.append("by root class:")
    out.extend(f"  {k:60} {v:8}" for k, v in summ["by_root_class"].items())
    return "\n".join(out) + "\n"


def run(paths: Sequence[str], fmt: str, roots: Sequence[str], packages: Sequence[str], as_json: bool) -> int:
    """The `scan` subcommand; returns the exit code (1 when a file cannot be read or is not a regular file)."""
    rules = AppRules(tuple(os.path.abspath(r) for r in roots), tuple(packages))
    progress = sys.stderr if sys.stderr.isatty() else None
    reports: list[FileReport] = []
    failed = False
    cache = ParseCache()  # one for the run, as one for a daemon's source: bounded in bytes
    writer = JsonWriter(sys.stdout) if as_json else None
    for p in paths:
        try:
            if writer is None:
                reports.append(scan_file(p, fmt, rules, progress=progress, cache=cache))
                continue
            with _open(p):  # refused before its entry is written
                pass
            writer.begin(p)
            try:
                report = scan_file(
                    p, fmt, rules, progress=progress, cache=cache, on_event=partial(writer.event, rules=rules)
                )
            except OSError:
                writer.abandon()
                raise
            writer.end(report)
            reports.append(report)
        except NotRegularFile as exc:
            sys.stderr.write(f"dbwatch scan: refusing {p}: {exc}\n")
            failed = True
        except OSError as exc:
            sys.stderr.write(f"dbwatch scan: cannot read {p}: {exc.strerror or type(exc).__name__}\n")
            failed = True
    if writer is not None:
        writer.close(reports)
    else:
        sys.stdout.write(to_text(reports))
    return 1 if failed else 0
