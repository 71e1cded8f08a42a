"""Log-watching benchmark: `dbwatch scan` vs mtail (Debian package) on the same >= 250 MB file, then tailing.

Prints, for both tools: MB/s on one core (pinned with taskset -c 0; MB per CPU second user+sys, so other load on
the machine does not count, and per wall second), peak RSS and the counts they found, then the ratio.
mtail runs a program built from dbwatch's own category rules that counts, line by line, what dbwatch counts:
logged tracebacks and per category the root of each chain and each leaf of a group (printed first). dbwatch
(`dbwatch scan --json`, the same splitter and scanner the daemon's tailer uses) assembles every traceback (chains,
groups), classifies it and finds its app frame, and must match the generator's ground truth exactly.
Then the daemon tails a file: append -> /metrics latency p50/p99 over N appends, idle CPU, and /metrics latency
while it reads a large backlog appended at once (parsing must not stall the event loop).

    .venv/bin/python bench/logs.py [--mb 260] [--tracebacks 4000] [--appends 200] [--idle 20] [--backlog-mb 100]

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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbwatch import metrics as m  # noqa: E402 - after the path is set
from dbwatch.logs.traceback import SEP_CAUSE, SEP_CONTEXT  # noqa: E402

BYTES_SERIES = m.LOG_BYTES.name + "_total{"
EXC_SERIES = m.LOG_EXCEPTIONS.name + "_total{"


def mtail_program() -> str:
    """An mtail program that counts what `dbwatch scan` counts, line by line, with dbwatch's category rules."""
    from dbwatch.logs.classify import _RULES  # the same rules, so both count the same

    rules = []
    for cat, names, rx in _RULES:
        alts = [r"(^|[.| ])(" + "|".join(names) + r")(: |$)"] if names else []
        alts += [rx] if rx else []
        rules.append((cat.value, "|".join(alts)))

    def chain(depth: int, then: str) -> str:
        pad = "  " * depth
        out, close = "", ""
        for k, (cat, rx) in enumerate(rules):
            ind = pad + "  " * k
            out += f'{ind}/{rx}/ {{\n{ind}  log_exceptions_total["{cat}"]++\n{then.replace("@", ind + "  ")}'
            if k < len(rules) - 1:
                out += f"{ind}}} else {{\n"
            close = f"{ind}}}\n" + close
        return out + close

    return (
        MTAIL_HEAD
        + "/^[A-Za-z_][A-Za-z0-9_.]*: / {\n  pending == 1 {\n"
        + chain(2, "@pending = 0\n")
        + "  }\n}\n"
        + "/^ +\\| [A-Za-z_][A-Za-z0-9_.]*: / {\n"
        + chain(1, "")
        + "}\n"
    )


MTAIL_HEAD = r"""# Counts what `dbwatch scan` counts, line by line, as far as mtail can: logged tracebacks (a chain's
# later sections are not counted again), and per category the root of each chain (the first exception line
# that matches a category rule: Python prints the root first) and each leaf of an exception group.
counter log_tracebacks_total
counter log_exceptions_total by category
hidden gauge after_sep
hidden gauge pending

"""
MTAIL_HEAD += f"/^({SEP_CAUSE}|{SEP_CONTEXT})$/ {{\n  after_sep = 1\n}}\n"
MTAIL_HEAD += r"""/^Traceback \(most recent call last\):$/ {
  after_sep == 0 {
    log_tracebacks_total++
    pending = 1
  }
  after_sep = 0
}
/^  \+ Exception Group Traceback \(most recent call last\):$/ {
  log_tracebacks_total++
  pending = 0
}
"""


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


def generate(path: Path, mb: int, n_tb: int, tbs: list[tuple[str, str]]) -> dict[str, Any]:
    """Write the file: info lines, decoys, and n_tb logged tracebacks spread through it. Returns what is in it."""
    rng = random.Random(7)
    filler = [
        'INFO [app.access] 10.0.0.{n} "GET /api/items/{n} HTTP/1.1" 200 {n} 0.0{n}s',
        "DEBUG [sqlalchemy.engine] SELECT users.id, users.email FROM users WHERE users.id = {n}",
        'INFO [app.search] query="Traceback (most recent call last):" results={n}',  # decoy
        "WARNING [app.auth] slow login for user {n}: sqlalchemy.exc.MissingGreenlet mentioned in a note",  # decoy
        "INFO [app.worker] job {n} done in {n}ms",
    ]
    target = mb * 1_000_000
    per_tb = max(target // max(n_tb, 1), 1)
    counts: dict[str, Any] = {"tracebacks": 0, "events": 0, "lines": 0}
    by_cat: dict[str, int] = {}
    t0 = 1_767_225_600.0
    with path.open("w", buffering=1 << 20) as f:
        written = 0
        i = 0
        next_tb = per_tb // 2
        while written < target:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + i / 100)) + f",{i % 1000:03d}"
            line = f"{stamp} {filler[i % len(filler)].format(n=rng.randrange(1000))}\n"
            f.write(line)
            written += len(line)
            counts["lines"] += 1
            i += 1
            if written >= next_tb and counts["events"] < n_tb:
                k = counts["events"]
                cat, text = tbs[k % len(tbs)]
                by_cat[cat] = by_cat.get(cat, 0) + (2 if "Exception Group" in text else 1)
                if "Connect call failed" in text:  # a third of them differ in their message: no two texts alike
                    text = text.replace("127.0.0.1", f"10.{k % 250}.{k // 250 % 250}.{k % 7}")
                rec = f"{stamp} ERROR [app.auth] Login failed for user {i}\n{text}"
                f.write(rec)
                written += len(rec)
                counts["lines"] += rec.count("\n")
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


def run_mtail(log: Path, work: Path) -> tuple[Run, dict[str, float]]:
    progs = work / "progs"
    progs.mkdir(exist_ok=True)
    (progs / "tb.mtail").write_text(mtail_program())
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


def run_dbwatch(log: Path) -> tuple[Run, dict[str, Any]]:
    run = _timed([sys.executable, "-m", "dbwatch", "scan", "--json", str(log)])
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=260)
    ap.add_argument("--tracebacks", type=int, default=4000)
    ap.add_argument("--appends", type=int, default=200)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--backlog-mb", type=int, default=100, help="MB appended at once to the tailed file")
    ap.add_argument("--keep", type=Path, help="keep the generated file in this directory")
    args = ap.parse_args()
    if shutil.which("mtail") is None:
        print("mtail not found (apt-get install mtail)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="dbwatch-bench-logs-"))
    try:
        log = (args.keep or work) / "bench.log"
        t = time.perf_counter()
        tbs = _real_tracebacks()
        truth = generate(log, args.mb, args.tracebacks, tbs)
        mb = truth["bytes"] / 1e6
        print(
            f"generated {mb:.0f} MB, {truth['lines']} lines, {truth['events']} logged tracebacks "
            f"({truth['tracebacks']} traceback sections, {truth['leaves']} counted exceptions) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        # warm the page cache so both read from memory
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=False)
        mt, mt_counts = run_mtail(log, work)
        db_run, db = run_dbwatch(log)
        mt_tb = mt_counts.get("log_tracebacks_total", 0)
        mt_cat = {k.split("{", 1)[1].rstrip("}"): int(v) for k, v in mt_counts.items() if "{" in k}
        print(
            "mtail counts, line by line with dbwatch's category rules: log_tracebacks_total (top-level traceback "
            "headers not after a chain separator) and log_exceptions_total{category} (first exception line of a "
            "chain that matches a rule; each exception line in a group box)"
        )
        summ = db["summary"]
        counted = sum(summ["by_category"].values())
        db_cat = {k: v for k, v in summ["by_category"].items() if v}
        for name, r in (("mtail", mt), ("dbwatch", db_run)):
            print(
                f"{name:8}: {mb / r.cpu:7.1f} MB/s per CPU second ({r.cpu:6.2f} s user+sys)  "
                f"{mb / r.wall:7.1f} MB/s wall ({r.wall:6.2f} s)  peak RSS {r.rss / 2**20:5.1f} MiB"
            )
        print(f"mtail   counts: tracebacks {mt_tb:.0f}  by category {mt_cat}")
        print(
            f"dbwatch counts: tracebacks {db['events']}  by category {db_cat}  counted {counted}  lines {db['lines']}"
        )
        print(
            f"ground truth  : tracebacks {truth['events']}  by category {truth['by_category']}  "
            f"counted {truth['leaves']}  lines {truth['lines']}"
        )
        exact = (
            db["events"] == truth["events"]
            and db_cat == truth["by_category"]
            and counted == truth["leaves"]
            and db["lines"] == truth["lines"]
        )
        print(
            f"counts exact  : dbwatch {'yes' if exact else 'NO'}; mtail "
            f"{'yes' if mt_tb == truth['events'] and mt_cat == truth['by_category'] else 'NO'}"
        )
        print(
            f"ratio   : dbwatch/mtail throughput {mt.cpu / db_run.cpu:.1f}x per CPU second, "
            f"{mt.wall / db_run.wall:.1f}x wall  (target >= 10x)  dbwatch peak RSS {db_run.rss / 2**20:.1f} MiB "
            f"(target <= 64 MiB)"
        )
        asyncio.run(tailing(work, tbs[0][1], args.appends, args.idle, log, min(args.backlog_mb, args.mb)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
