"""How long one hostile log record may hold the event loop: the tailer's work per read, timed per record shape.

Feeds each shape through what the tailer runs between two yields to the loop (Splitter -> scanner -> builder ->
classifier -> counter into a Store), in the tailer's pieces (FEED_BYTES), and prints the longest single piece (the
longest the loop can be held: the tailer yields after any piece once its slice time is used) and the total, with
`max_record_bytes` at its default (1 MiB) and at 4 MiB. The README's bound: no record holds the loop over 50 ms.

    .venv/bin/python bench/log_hold.py [--repeat 3]

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbwatch.logs.classify import AppRules  # noqa: E402 - after the path is set
from dbwatch.logs.formats import ParseCache, Splitter  # noqa: E402
from dbwatch.logs.record import Stats  # noqa: E402
from dbwatch.logs.sinks import ExceptionCounter  # noqa: E402
from dbwatch.logs.source import FEED_BYTES  # noqa: E402
from dbwatch.store import Store  # noqa: E402

MIB = 1 << 20
HEAD = "2026-01-02 03:04:05,678 ERROR [app.jobs] failed\n"
TAIL = "2026-01-02 03:04:06,000 INFO [app] after\n"


def frames(size: int) -> str:
    """A traceback that is nearly all frames (~60 bytes each), none of them the app's."""
    f = '  File "/usr/lib/python3.11/site-packages/lib/m.py", line 1, in f\n    g()\n'
    return HEAD + "Traceback (most recent call last):\n" + f * (size // len(f)) + "RecursionError: deep\n" + TAIL


def chain(size: int) -> str:
    """The longest chain the size allows: short exceptions joined by 'During handling ...'."""
    one = "Traceback (most recent call last):\n" + '  File "/srv/app/a.py", line 3, in a\n    b()\nValueError: x\n'
    sep = "\nDuring handling of the above exception, another exception occurred:\n\n"
    return HEAD + sep.join([one] * (size // (len(one) + len(sep)))) + TAIL


def wide_group(size: int) -> str:
    """A flat group with as many sub-exceptions as the size allows."""
    out = ["  + Exception Group Traceback (most recent call last):", "  | ExceptionGroup: many"]
    n = size // 60
    for i in range(n):
        out.append(f"  {'+-+' if i == 0 else '+--'}-------------- {i + 1} ----------------")
        out.append("    | sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called")
    out.append("    +" + "-" * 36)
    return HEAD + "\n".join(out) + "\n" + TAIL


def deep_group(depth: int) -> str:
    """A group `depth` deep, one sub-exception per level (~1 MB at 700)."""
    out = ["  + Exception Group Traceback (most recent call last):", f"  | ExceptionGroup: level {depth}"]
    for d in range(1, depth):
        out += [f"{' ' * 2 * d}+-+---------------- 1 ----------------", f"{' ' * 2 * d}  | ExceptionGroup: l{d}"]
    pad = " " * 2 * depth
    out += [f"{pad}+-+---------------- 1 ----------------", f"{pad}  | ValueError: leaf", f"{pad}  +" + "-" * 36]
    return HEAD + "\n".join(out) + "\n" + TAIL


def long_message(size: int) -> str:
    """A message of long lines (no secrets, no categories: every rule searches all of it)."""
    line = "q " * 50_000 + "\n"
    head = HEAD + 'Traceback (most recent call last):\n  File "/srv/app/a.py", line 1, in a\n    b()\nValueError: '
    return head + line * (size // len(line)) + TAIL


SHAPES: dict[str, Callable[[int], str]] = {
    "frames": frames,
    "chain": chain,
    "wide group": wide_group,
    "deep group 95": lambda size: deep_group(95),
    "deep group 700": lambda size: deep_group(700),
    "deep group 1000": lambda size: deep_group(1000),
    "long message": long_message,
}


def run(text: bytes, cap: int, read: int) -> tuple[float, float, Stats]:
    store = Store()
    stats = Stats()
    counter = ExceptionCounter("bench", AppRules(), store, max_locations=50, max_exceptions=50)
    sp = Splitter("plain", counter, stats, max_record_bytes=cap, cache=ParseCache())
    worst = total = 0.0
    for k in range(0, len(text), read):
        t0 = time.perf_counter()
        sp.feed(text[k : k + read])
        dt = time.perf_counter() - t0
        worst, total = max(worst, dt), total + dt
    t0 = time.perf_counter()
    sp.flush()
    dt = time.perf_counter() - t0
    return max(worst, dt), total + dt, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the worst is printed")
    args = ap.parse_args()
    print(f"{'shape':16} {'cap':>5} {'record':>9} {'piece':>6} {'longest hold':>13} {'total':>9}  counted")
    overall = 0.0
    for name, make in SHAPES.items():
        for cap in (MIB, 4 * MIB):
            text = make(cap - 64 * 1024).encode()
            for read in (FEED_BYTES,):
                runs = [run(text, cap, read) for _ in range(args.repeat)]
                worst = max(r[0] for r in runs)
                total = max(r[1] for r in runs)
                s = runs[0][2]
                overall = max(overall, worst)
                print(
                    f"{name:16} {cap // MIB:>4}M {len(text) / MIB:>7.2f}MB {read // 1024:>5}K"
                    f" {worst * 1000:>10.1f} ms {total * 1000:>6.0f} ms  events {s.events},"
                    f" parse errors {s.parse_errors}, truncated {s.truncated}"
                )
    print(f"longest hold over all cases: {overall * 1000:.1f} ms (bound 50 ms)")


if __name__ == "__main__":
    main()
