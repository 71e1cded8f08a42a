"""Log-watching benchmark: `dbwatch scan` vs mtail (Debian package) per format on the same >= 250 MB of records,
then tailing.

For each format (plain, json, cri, docker) one file holds the same records: info lines, decoys and logged tracebacks
(chains, groups). Prints, for both tools: MB/s on one core (pinned with taskset -c 0; MB per CPU second user+sys, so
other load on the machine does not count, and per wall second), peak RSS and the counts they found against the
generator's ground truth, then the ratio. mtail runs the fastest careful program for the same counts (see
mtail_program: anchored regexes nested under one anchored test, only the classes the file holds): logged tracebacks
and per exception class the root of each chain and each leaf of a group. dbwatch (`dbwatch scan --json --format F`,
the same splitter and parsers the daemon's tailer uses) assembles every traceback, classifies it and finds its app
frame, and must match the ground truth exactly (tracebacks, per-category counts, lines).
Then the daemon tails a plain file: append -> /metrics latency p50/p99 over N appends, idle CPU, and /metrics
latency while it reads a large backlog appended at once (parsing must not stall the event loop).

    .venv/bin/python bench/logs.py [--mb 260] [--tracebacks 4000] [--formats plain,json,cri,docker]
        [--appends 200] [--idle 20] [--backlog-mb 100]

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbwatch import metrics as m  # noqa: E402 - after the path is set
from dbwatch.logs.traceback import SEP_CAUSE, SEP_CONTEXT  # noqa: E402

BYTES_SERIES = m.LOG_BYTES.name + "_total{"
EXC_SERIES = m.LOG_EXCEPTIONS.name + "_total{"


# The categories the generated files hold, each as the exception class Python prints on its exception line. The mtail
# programs count only these: fewer patterns make mtail faster, so the ratio is a conservative one.
CLASSES: Final = {"MissingGreenlet": "missing_greenlet", "ConnectionRefusedError": "connection_refused"}
FORMATS: Final = ("plain", "json", "cri", "docker")
_EXC = r"(?:[A-Za-z_][A-Za-z0-9_]*\.)*(" + "|".join(CLASSES) + r"): "
# How each format wraps one line of text: what precedes it (anchored) and what follows it.
_WRAP: Final = {
    "plain": ("^", "$"),
    "cri": (r"^[^ ]+ std(?:out|err) F ", "$"),
    "docker": (r'^\{"log":"', r'\\n"'),
}


def mtail_program(fmt: str) -> str:
    """The fastest careful mtail program for the counts `dbwatch scan` reports: anchored regexes, nested under one
    anchored test that a traceback line passes and a log record's first line (a timestamp) fails at its first byte.

    Counted: logged tracebacks (a chain's later sections are not counted again) and per exception class the root of
    each chain (Python prints the root first) and each leaf of an exception group.
    """
    head = "counter log_tracebacks_total\ncounter log_exceptions_total by exc\n"
    if fmt == "json":  # one record per line: the traceback is one escaped string field
        return head + (
            '/"exception": "/ {\n'
            '  /"exception": "Traceback \\(most recent call last\\):\\\\n/ {\n'
            "    log_tracebacks_total++\n"
            f"    /\\\\n{_EXC}/ {{\n      log_exceptions_total[$1]++\n    }}\n"
            "  }\n"
            '  /"exception": "  \\+ Exception Group Traceback \\(most recent call last\\):\\\\n.*\\((\\d+) '
            f"sub-exceptions\\)\\\\n.*\\\\n +\\| {_EXC}/ {{\n"
            "    log_tracebacks_total++\n    log_exceptions_total[$2] += $1\n"
            "  }\n}\n"
        )
    pre, post = _WRAP[fmt]
    seps = f"{SEP_CAUSE}|{SEP_CONTEXT}"
    return (
        head
        + "hidden gauge after_sep\nhidden gauge pending\n"
        + (
            f"/{pre}[A-Za-z_ ]/ {{\n"
            f"  /{pre}Traceback \\(most recent call last\\):{post}/ {{\n"
            "    after_sep == 0 {\n      log_tracebacks_total++\n      pending = 1\n    }\n    after_sep = 0\n  }\n"
            f"  /{pre}(?:{seps}){post}/ {{\n    after_sep = 1\n  }}\n"
            f"  /{pre}  \\+ Exception Group Traceback \\(most recent call last\\):{post}/ {{\n"
            "    log_tracebacks_total++\n    pending = 0\n  }\n"
            f"  /{pre}{_EXC}/ {{\n    pending == 1 {{\n"
            "      log_exceptions_total[$1]++\n      pending = 0\n    }\n  }\n"
            f"  /{pre} +\\| {_EXC}/ {{\n    log_exceptions_total[$1]++\n  }}\n"
            "}\n"
        )
    )


def _real_tracebacks() -> list[tuple[str, str]]:
    """Real tracebacks, formatted by Python: (category, text) for MissingGreenlet, a chain and a group."""
    import sqlalchemy.exc
    from sqlalchemy.util import await_only

    out = []

    async def nop() -> None:
        return None

    def lazy_load() -> None:
        coro = nop()
        try:
            await_only(coro)  # outside a greenlet: the real MissingGreenlet
        finally:
            coro.close()

    def wrapped() -> None:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except OSError as exc:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, exc) from exc

    def group() -> None:
        async def leaf() -> None:
            lazy_load()

        async def main() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(leaf())
                tg.create_task(leaf())

        asyncio.run(main())

    for cat, fn in (("missing_greenlet", lazy_load), ("connection_refused", wrapped), ("missing_greenlet", group)):
        try:
            fn()
        except BaseException as exc:
            out.append((cat, "".join(traceback.format_exception(exc))))
    return out


_FILLER: Final = (
    ("INFO", "app.access", '10.0.0.{n} "GET /api/items/{n} HTTP/1.1" 200 {n} 0.0{n}s'),
    ("DEBUG", "sqlalchemy.engine", "SELECT users.id, users.email FROM users WHERE users.id = {n}"),
    ("INFO", "app.search", 'query="Traceback (most recent call last):" results={n}'),  # decoy
    ("WARNING", "app.auth", "slow login for user {n}: sqlalchemy.exc.MissingGreenlet mentioned in a note"),  # decoy
    ("INFO", "app.worker", "job {n} done in {n}ms"),
)


def _writer(fmt: str, f: Any) -> Any:
    """A function writing one log record (level, logger, message, traceback text or "") in `fmt`; returns
    (bytes, physical lines) written."""

    def write(stamp: str, level: str, logger: str, msg: str, tb: str) -> tuple[int, int]:
        if fmt == "json":
            rec: dict[str, str] = {"timestamp": stamp, "level": level.lower(), "logger": logger, "event": msg}
            if tb:
                rec["exception"] = tb.rstrip("\n")
            out = json.dumps(rec) + "\n"
        else:
            text = f"{stamp} {level} [{logger}] {msg}\n{tb}"
            if fmt == "plain":
                out = text
            else:
                stream = "stderr" if tb else "stdout"
                stamp_z = stamp.replace(" ", "T").replace(",", ".") + "000000Z"
                lines = text.splitlines()
                if fmt == "cri":
                    out = "".join(f"{stamp_z} {stream} F {line}\n" for line in lines)
                else:
                    out = "".join(
                        json.dumps({"log": line + "\n", "stream": stream, "time": stamp_z}, separators=(",", ":"))
                        + "\n"
                        for line in lines
                    )
        f.write(out)
        return len(out), out.count("\n")

    return write


def generate(path: Path, fmt: str, mb: int, n_tb: int, tbs: list[tuple[str, str]]) -> dict[str, Any]:
    """Write the file in `fmt`: info lines, decoys, and n_tb logged tracebacks spread through it (the same records
    in every format). Returns what is in it."""
    rng = random.Random(7)
    target = mb * 1_000_000
    per_tb = max(target // max(n_tb, 1), 1)
    counts: dict[str, Any] = {"tracebacks": 0, "events": 0, "lines": 0}
    by_cat: dict[str, int] = {}
    t0 = 1_767_225_600.0
    with path.open("w", buffering=1 << 20) as f:
        write = _writer(fmt, f)
        written = 0
        i = 0
        next_tb = per_tb // 2
        while written < target:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + i / 100)) + f",{i % 1000:03d}"
            level, logger, msg = _FILLER[i % len(_FILLER)]
            size, lines = write(stamp, level, logger, msg.format(n=rng.randrange(1000)), "")
            written += size
            counts["lines"] += lines
            i += 1
            if written >= next_tb and counts["events"] < n_tb:
                k = counts["events"]
                cat, text = tbs[k % len(tbs)]
                by_cat[cat] = by_cat.get(cat, 0) + (2 if "Exception Group" in text else 1)
                if "Connect call failed" in text:  # a third of them differ in their message: no two texts alike
                    text = text.replace("127.0.0.1", f"10.{k % 250}.{k // 250 % 250}.{k % 7}")
                size, lines = write(stamp, "ERROR", "app.auth", f"Login failed for user {i}", text)
                written += size
                counts["lines"] += lines
                counts["events"] += 1
                counts["tracebacks"] += text.count("Traceback (most recent call last):")
                next_tb += per_tb
    counts["bytes"] = path.stat().st_size
    counts["by_category"] = by_cat
    counts["leaves"] = sum(2 if "Exception Group" in tbs[k % len(tbs)][1] else 1 for k in range(counts["events"]))
    return counts


@dataclass(frozen=True)
class Run:
    """One timed run: wall and CPU (user+sys) seconds, peak RSS bytes, output."""

    wall: float
    cpu: float
    rss: int
    out: str
    err: str


def _timed(argv: list[str]) -> Run:
    """Run argv pinned to CPU 0 under /usr/bin/time."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "BENCHTIME %M %U %S", "taskset", "-c", "0", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    rss, cpu = 0, wall
    if "BENCHTIME" in proc.stderr:
        kb, user, sys_ = proc.stderr.rsplit("BENCHTIME", 1)[1].split()[:3]
        rss, cpu = int(kb) * 1024, float(user) + float(sys_)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return Run(wall, cpu, rss, proc.stdout, proc.stderr)


# mtail's floor: one anchored regex that fails at the first byte of every line and counts nothing. No program for the
# counts can run faster than this; how close the counting program comes shows it is the fastest careful one.
MTAIL_FLOOR: Final = "counter never\n/^\\x00/ {\n  never++\n}\n"


def run_mtail(log: Path, work: Path, fmt: str, program: str | None = None) -> tuple[Run, dict[str, float]]:
    progs = work / f"progs-{fmt}{'' if program is None else '-floor'}"
    progs.mkdir(exist_ok=True)
    (progs / "tb.mtail").write_text(mtail_program(fmt) if program is None else program)
    run = _timed(
        ["mtail", "--one_shot", "--one_shot_format=json", "--progs", str(progs), "--logs", str(log), "--logtostderr"]
    )
    counts: dict[str, float] = {}
    try:
        data = json.loads(run.out)
    except ValueError:
        data = {}
    for name, metrics in data.items() if isinstance(data, dict) else []:
        for mm in metrics if isinstance(metrics, list) else [metrics]:
            for lv in mm.get("LabelValues", []) or []:
                key = name + ("{" + ",".join(lv.get("Labels", [])) + "}" if lv.get("Labels") else "")
                counts[key] = float(lv.get("Value", {}).get("Value", 0))
    return run, counts


def run_dbwatch(log: Path, fmt: str) -> tuple[Run, dict[str, Any]]:
    run = _timed([sys.executable, "-m", "dbwatch", "scan", "--json", "--format", fmt, str(log)])
    report = json.loads(run.out)
    f = next(iter(report["files"].values()))
    return run, {"events": len(f["events"]), "lines": f["lines"], "summary": report["summary"]}


async def tailing(work: Path, text: str, appends: int, idle_seconds: float, backlog: Path, backlog_mb: int) -> None:
    """Run `dbwatch run` on a log file; append tracebacks one at a time and time until /metrics shows each;
    measure idle CPU; then append a large backlog at once and time /metrics while the daemon reads it."""
    import aiohttp

    from dbwatch.pgcluster import free_port

    log = work / "tail.log"
    log.write_text("")
    port = free_port()
    cfg = work / "tail.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nlog: {{level: warning}}\n"
        f"logs:\n  sources:\n    - name: bench\n      path: {log}\n      format: plain\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting the daemon under test, once
        [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lat: list[float] = []
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/metrics"

            async def count() -> float:
                async with s.get(url) as r:
                    body = await r.text()
                total = 0.0
                for line in body.splitlines():
                    if line.startswith(EXC_SERIES) and 'category="missing_greenlet"' in line:
                        total += float(line.rsplit(" ", 1)[1])
                return total

            deadline = time.monotonic() + 20
            while True:
                try:
                    await count()
                    break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            for i in range(appends):
                want = await count() + 1
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                t0 = time.perf_counter()
                with log.open("a") as f:
                    f.write(f"{stamp},000 ERROR [app.auth] Login failed {i}\n{text}")
                while await count() < want:
                    if time.perf_counter() - t0 > 5:
                        break
                lat.append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)
        # idle CPU: nothing appended for idle_seconds
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        await asyncio.sleep(1.0)
        c0, t0 = cpu(), time.monotonic()
        await asyncio.sleep(idle_seconds)
        idle = (cpu() - c0) / (time.monotonic() - t0)
        quiet, busy, drain, read_mb = await _backlog(url, log, backlog, backlog_mb)
    finally:
        proc.terminate()
        proc.wait(10)
    lat.sort()
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(f"tailing: append -> /metrics over {len(lat)} appends: p50 {p50:.1f} ms  p99 {p99:.1f} ms  (target <= 20 ms)")
    print(f"tailing: idle CPU over {idle_seconds:.0f} s: {100 * idle:.3f}% of a core  (target <= 0.1%)")
    print(
        f"backlog: /metrics while idle p50 {_ms(quiet, 0.5)} p99 {_ms(quiet, 0.99)} ms; while reading a "
        f"{read_mb:.0f} MB backlog appended at once: p50 {_ms(busy, 0.5)} p99 {_ms(busy, 0.99)} "
        f"max {_ms(busy, 1.0)} ms over {len(busy)} scrapes; read in {drain:.1f} s ({read_mb / drain:.0f} MB/s, "
        "parsed in slices on the loop)"
    )


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"{v[min(len(v) - 1, int(len(v) * q))] * 1000:.1f}"


async def _backlog(url: str, log: Path, source: Path, mb: int) -> tuple[list[float], list[float], float, float]:
    """Scrape /metrics every 20 ms while idle, then while the daemon reads `mb` MB appended at once."""
    import aiohttp

    async def read_bytes(s: aiohttp.ClientSession) -> tuple[float, float]:
        t0 = time.perf_counter()
        async with s.get(url) as r:
            body = await r.text()
        took = time.perf_counter() - t0
        got = 0.0
        for line in body.splitlines():
            if line.startswith(BYTES_SERIES):
                got += float(line.rsplit(" ", 1)[1])
        return took, got

    quiet: list[float] = []
    busy: list[float] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            quiet.append((await read_bytes(s))[0])
            await asyncio.sleep(0.02)
        _, before = await read_bytes(s)
        want = before + mb * 1_000_000
        with source.open("rb") as src, log.open("ab") as dst:
            dst.write(src.read(mb * 1_000_000))
        t0 = time.perf_counter()
        got = before
        while got < want and time.perf_counter() - t0 < 120:
            took, got = await read_bytes(s)
            busy.append(took)
            await asyncio.sleep(0.02)
        drain = time.perf_counter() - t0
    return quiet, busy, drain, (got - before) / 1e6


def bench_format(fmt: str, log: Path, work: Path, args: argparse.Namespace, tbs: list[tuple[str, str]]) -> float:
    """Generate the file in one format, run both tools on it, print figures; returns the ratio per CPU second."""
    t = time.perf_counter()
    truth = generate(log, fmt, args.mb, args.tracebacks, tbs)
    mb = truth["bytes"] / 1e6
    print(
        f"[{fmt}] generated {mb:.0f} MB, {truth['lines']} lines, {truth['events']} logged tracebacks "
        f"({truth['tracebacks']} traceback sections, {truth['leaves']} counted exceptions) "
        f"in {time.perf_counter() - t:.1f} s"
    )
    subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=False)  # warm the page cache for both
    mt, mt_counts = run_mtail(log, work, fmt)
    floor, _ = run_mtail(log, work, fmt, MTAIL_FLOOR)
    db_run, db = run_dbwatch(log, fmt)
    if min(mt.cpu, db_run.cpu) <= 0:
        raise SystemExit(f"[{fmt}] a tool failed (see its stderr above)")
    mt_tb = mt_counts.get("log_tracebacks_total", 0)
    mt_cat: dict[str, int] = {}
    for k, v in mt_counts.items():
        if "{" in k:
            cat = CLASSES.get(k.split("{", 1)[1].rstrip("}"), "?")
            mt_cat[cat] = mt_cat.get(cat, 0) + int(v)
    summ = db["summary"]
    counted = sum(summ["by_category"].values())
    db_cat = {k: v for k, v in summ["by_category"].items() if v}
    for name, r in (("mtail", mt), ("dbwatch", db_run)):
        print(
            f"[{fmt}] {name:8}: {mb / r.cpu:7.1f} MB/s per CPU second ({r.cpu:6.2f} s user+sys)  "
            f"{mb / r.wall:7.1f} MB/s wall ({r.wall:6.2f} s)  peak RSS {r.rss / 2**20:5.1f} MiB"
        )
    print(
        f"[{fmt}] mtail floor: {mb / floor.cpu:7.1f} MB/s per CPU second ({floor.cpu:6.2f} s user+sys), one anchored"
        f" regex that never matches: the counting program runs at {100 * floor.cpu / mt.cpu:.0f}% of mtail's floor"
    )
    print(f"[{fmt}] mtail   counts: tracebacks {mt_tb:.0f}  by category {mt_cat}")
    print(
        f"[{fmt}] dbwatch counts: tracebacks {db['events']}  by category {db_cat}  counted {counted}  "
        f"lines {db['lines']}"
    )
    print(
        f"[{fmt}] ground truth  : tracebacks {truth['events']}  by category {truth['by_category']}  "
        f"counted {truth['leaves']}  lines {truth['lines']}"
    )
    exact = (
        db["events"] == truth["events"]
        and db_cat == truth["by_category"]
        and counted == truth["leaves"]
        and db["lines"] == truth["lines"]
    )
    print(
        f"[{fmt}] counts exact  : dbwatch {'yes' if exact else 'NO'}; mtail "
        f"{'yes' if mt_tb == truth['events'] and mt_cat == truth['by_category'] else 'NO'}"
    )
    ratio = mt.cpu / db_run.cpu
    print(
        f"[{fmt}] ratio   : dbwatch/mtail throughput {ratio:.1f}x per CPU second, {mt.wall / db_run.wall:.1f}x wall "
        f"(target >= {20 if fmt == 'plain' else 10}x)  dbwatch peak RSS {db_run.rss / 2**20:.1f} MiB (target <= 64 MiB)"
    )
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=260)
    ap.add_argument("--tracebacks", type=int, default=4000)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, of " + ",".join(FORMATS))
    ap.add_argument("--appends", type=int, default=200, help="0: skip the tailing part")
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--backlog-mb", type=int, default=100, help="MB appended at once to the tailed file")
    ap.add_argument("--keep", type=Path, help="keep the generated files in this directory")
    args = ap.parse_args()
    if shutil.which("mtail") is None:
        print("mtail not found (apt-get install mtail)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="dbwatch-bench-logs-"))
    try:
        tbs = _real_tracebacks()
        print(
            "mtail runs the fastest careful program for the same counts (anchored regexes nested under one anchored "
            "test, only the classes the file holds; printed by mtail_program(fmt)): log_tracebacks_total and "
            "log_exceptions_total by class (root of each chain, each leaf of a group), mapped to categories"
        )
        ratios = {}
        for fmt in args.formats.split(","):
            log = (args.keep or work) / f"bench-{fmt}.log"
            ratios[fmt] = bench_format(fmt, log, work, args, tbs)
            if args.keep is None and (fmt != "plain" or args.appends <= 0):
                log.unlink()
        print("ratios per CPU second: " + "  ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
        if args.appends > 0:
            log = (args.keep or work) / "bench-plain.log"
            if not log.exists():
                generate(log, "plain", args.mb, args.tracebacks, tbs)
            asyncio.run(tailing(work, tbs[0][1], args.appends, args.idle, log, min(args.backlog_mb, args.mb)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
