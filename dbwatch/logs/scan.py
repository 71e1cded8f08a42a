"""`dbwatch scan`: read log files once and report every traceback found (post-mortem, no daemon needed)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from dbwatch.logs.classify import AppRules, Category, Classified, Classifier
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Event, Stats
from dbwatch.logs.traceback import Chain, Frame

__all__ = ["FileReport", "scan_file", "scan_files", "summary", "to_json", "to_text", "write_json"]

READ_SIZE: Final = 1 << 20
STDIN: Final = "-"
PROGRESS_MIN_BYTES: Final = 8 << 20
_NONE: Final = Chain(())


@dataclass(slots=True)
class FileReport:
    """What one file held."""

    name: str
    format: str
    stats: Stats
    rules: AppRules = field(default_factory=AppRules)
    events: list[tuple[Event, Classified]] = field(default_factory=list)


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
) -> FileReport:
    """Read one file to its end and classify every event; `progress` gets a bar for large files."""
    rules = rules or AppRules()
    stats = Stats()
    report = FileReport(str(path), fmt, stats, rules)

    classify = Classifier(rules)

    def sink(event: Event) -> None:
        c = classify(event.chain)  # keep the verdict, not the parsed chain: memory stays small for big files
        report.events.append((Event(event.first_line, event.last_line, event.timestamp, event.logger, _NONE), c))

    splitter = Splitter(fmt, sink, stats, max_line_bytes=max_line_bytes, max_record_bytes=max_record_bytes)
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


def summary(reports: Sequence[FileReport]) -> dict[str, dict[str, int]]:
    """Totals: by category and root class per counted unit (each leaf of a group), by final class per event."""
    by_cat: Counter[str] = Counter({c.value: 0 for c in Category})
    by_final: Counter[str] = Counter()
    by_root: Counter[str] = Counter()
    for r in reports:
        for _event, c in r.events:
            by_final[c.final_class] += 1
            for v in c.counted:
                by_cat[v.category.value] += 1
            if c.leaves:
                for v in c.leaves:
                    by_root[v.exception] += 1
            else:
                by_root[c.root_class] += 1
    return {
        "by_category": dict(by_cat),
        "by_final_class": dict(by_final.most_common()),
        "by_root_class": dict(by_root.most_common()),
    }


def _event(e: Event, c: Classified, rules: AppRules) -> dict[str, Any]:
    return {
        "first_line": e.first_line,
        "last_line": e.last_line,
        "timestamp": e.timestamp,
        "logger": e.logger,
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
    """The same object as to_json, written event by event so a report of many events needs little memory."""
    out.write('{"files": {')
    for i, r in enumerate(reports):
        out.write(("," if i else "") + f"\n {json.dumps(r.name)}: ")
        out.write(f'{{"format": {json.dumps(r.format)}, "lines": {r.stats.lines}, "events": [')
        for k, (e, c) in enumerate(r.events):
            out.write(("," if k else "") + "\n  " + json.dumps(_event(e, c, r.rules)))
        out.write("]}")
    out.write('},\n "summary": ' + json.dumps(summary(reports)) + "}\n")


def to_text(reports: Sequence[FileReport]) -> str:
    """The human report: per file counts, then totals per category and class with top code lines."""
    out: list[str] = []
    for r in reports:
        s = r.stats
        out.append(
            f"{r.name}: format {r.format}, {s.lines} lines, {len(r.events)} tracebacks"
            f" ({s.unmatched} unmatched lines, {s.parse_errors} parse errors, {s.truncated} truncated)"
        )
    summ = summary(reports)
    out.append("")
    out.append("by category:")
    where: dict[str, Counter[str]] = {}
    example: dict[str, str] = {}
    for r in reports:
        for _e, c in r.events:
            for v in c.counted:
                loc = f"{r.rules.label(v.location)} in {v.location.function}" if v.location else "(no app frame)"
                where.setdefault(v.category.value, Counter())[loc] += 1
                example.setdefault(v.category.value, f"{v.exception}: {c.message.splitlines()[0] if c.message else ''}")
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
    for p in paths:
        try:
            reports.append(scan_file(p, fmt, rules, progress=progress))
        except NotRegularFile as exc:
            sys.stderr.write(f"dbwatch scan: refusing {p}: {exc}\n")
            failed = True
        except OSError as exc:
            sys.stderr.write(f"dbwatch scan: cannot read {p}: {exc.strerror or type(exc).__name__}\n")
            failed = True
    if as_json:
        write_json(reports, sys.stdout)
    else:
        sys.stdout.write(to_text(reports))
    return 1 if failed else 0
