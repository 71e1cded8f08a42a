"""Log-watching benchmark: `dbwatch scan` vs mtail (Debian package) on the same >= 250 MB file, then tailing.

Prints, for both tools: MB/s on one core (taskset -c 0), peak RSS and the counts they found, then the ratio.
mtail runs a program that counts traceback headers and final exception lines per class by regex; dbwatch
assembles every traceback (chains, groups), classifies it and finds its app frame: more work, counted exactly.
Then the daemon tails a file: append -> /metrics latency p50/p99 over N appends, and idle CPU.

    .venv/bin/python bench/logs.py [--mb 260] [--tracebacks 4000] [--appends 200] [--keep DIR]

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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MTAIL_PROG = r"""
counter log_tracebacks_total
counter log_exceptions_total by exception

/^Traceback \(most recent call last\):$/ {
  log_tracebacks_total++
}
/^(?P<exc>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+): / {
  log_exceptions_total[$exc]++
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


def generate(path: Path, mb: int, n_tb: int) -> dict[str, int]:
    """Write the file: info lines, decoys, and n_tb logged tracebacks spread through it. Returns what is in it."""
    rng = random.Random(7)
    tbs = _real_tracebacks()
    filler = [
        'INFO [app.access] 10.0.0.{n} "GET /api/items/{n} HTTP/1.1" 200 {n} 0.0{n}s',
        "DEBUG [sqlalchemy.engine] SELECT users.id, users.email FROM users WHERE users.id = {n}",
        'INFO [app.search] query="Traceback (most recent call last):" results={n}',  # decoy
        "WARNING [app.auth] slow login for user {n}: sqlalchemy.exc.MissingGreenlet mentioned in a note",  # decoy
        "INFO [app.worker] job {n} done in {n}ms",
    ]
    target = mb * 1_000_000
    per_tb = max(target // max(n_tb, 1), 1)
    counts = {"tracebacks": 0, "events": 0, "lines": 0}
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
                _cat, text = tbs[k % len(tbs)]
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
    counts["leaves"] = sum(2 if "Exception Group" in tbs[k % len(tbs)][1] else 1 for k in range(counts["events"]))
    return counts


_VMHWM = (
    "import sys; from dbwatch import cli; rc = cli.main(sys.argv[1:]); "
    "sys.stderr.write(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))); sys.exit(rc)"
)


def _timed(argv: list[str]) -> tuple[float, int, str, str]:
    """Run argv pinned to CPU 0 under /usr/bin/time; (wall seconds, peak RSS bytes, stdout, stderr)."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS %M", "taskset", "-c", "0", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    rss = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0]) * 1024 if "MAXRSS" in proc.stderr else 0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-2000:])
    return wall, rss, proc.stdout, proc.stderr


def run_mtail(log: Path, work: Path) -> tuple[float, int, dict[str, float]]:
    progs = work / "progs"
    progs.mkdir(exist_ok=True)
    (progs / "tb.mtail").write_text(MTAIL_PROG)
    wall, rss, out, _err = _timed(
        ["mtail", "--one_shot", "--one_shot_format=json", "--progs", str(progs), "--logs", str(log), "--logtostderr"]
    )
    counts: dict[str, float] = {}
    try:
        data = json.loads(out)
    except ValueError:
        data = {}
    for name, metrics in data.items() if isinstance(data, dict) else []:
        for mm in metrics if isinstance(metrics, list) else [metrics]:
            for lv in mm.get("LabelValues", []) or []:
                key = name + ("{" + ",".join(lv.get("Labels", [])) + "}" if lv.get("Labels") else "")
                counts[key] = float(lv.get("Value", {}).get("Value", 0))
    return wall, rss, counts


def run_dbwatch(log: Path) -> tuple[float, int, dict[str, object]]:
    # peak RSS from VmHWM inside the process (time(1) would see the same; this also works without it)
    wall, _rss, out, err = _timed([sys.executable, "-c", _VMHWM, "scan", "--json", str(log)])
    rss = int(err.rsplit("VmHWM:", 1)[1].split()[0]) * 1024
    report = json.loads(out)
    f = next(iter(report["files"].values()))
    return wall, rss, {"events": len(f["events"]), "lines": f["lines"], "summary": report["summary"]}


async def tailing(work: Path, appends: int, idle_seconds: float) -> None:
    """Run `dbwatch run` on a log file; append tracebacks one at a time and time until /metrics shows each."""
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
    _cat, text = _real_tracebacks()[0]
    lat: list[float] = []
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/metrics"

            async def count() -> float:
                async with s.get(url) as r:
                    body = await r.text()
                total = 0.0
                for line in body.splitlines():
                    if line.startswith("dbwatch_log_exceptions_total{") and 'category="missing_greenlet"' in line:
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
    finally:
        proc.terminate()
        proc.wait(10)
    lat.sort()
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(f"tailing: append -> /metrics over {len(lat)} appends: p50 {p50:.1f} ms  p99 {p99:.1f} ms  (target <= 20 ms)")
    print(f"tailing: idle CPU over {idle_seconds:.0f} s: {100 * idle:.3f}% of a core  (target <= 0.1%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=260)
    ap.add_argument("--tracebacks", type=int, default=4000)
    ap.add_argument("--appends", type=int, default=200)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--keep", type=Path, help="keep the generated file in this directory")
    args = ap.parse_args()
    if shutil.which("mtail") is None:
        print("mtail not found (apt-get install mtail)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="dbwatch-bench-logs-"))
    try:
        log = (args.keep or work) / "bench.log"
        t = time.perf_counter()
        truth = generate(log, args.mb, args.tracebacks)
        mb = truth["bytes"] / 1e6
        print(
            f"generated {mb:.0f} MB, {truth['lines']} lines, {truth['events']} logged tracebacks "
            f"({truth['tracebacks']} traceback sections, {truth['leaves']} counted exceptions) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        # warm the page cache so both read from memory
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=False)
        mt_wall, mt_rss, mt_counts = run_mtail(log, work)
        db_wall, db_rss, db = run_dbwatch(log)
        mt_tb = mt_counts.get("log_tracebacks_total", 0)
        mt_exc = sum(v for k, v in mt_counts.items() if k.startswith("log_exceptions_total"))
        print(
            f"mtail   : {mb / mt_wall:8.1f} MB/s  {mt_wall:6.2f} s  peak RSS {mt_rss / 2**20:6.1f} MiB  "
            f"traceback headers {mt_tb:.0f}  exception lines by class {mt_exc:.0f}"
        )
        summ = db["summary"]
        assert isinstance(summ, dict)
        counted = sum(summ["by_category"].values())
        print(
            f"dbwatch : {mb / db_wall:8.1f} MB/s  {db_wall:6.2f} s  peak RSS {db_rss / 2**20:6.1f} MiB  "
            f"events {db['events']} (expected {truth['events']})  counted {counted} (expected {truth['leaves']})  "
            f"lines {db['lines']} (expected {truth['lines']})"
        )
        print(f"dbwatch by category: {{{', '.join(f'{k}: {v}' for k, v in summ['by_category'].items() if v)}}}")
        print(
            f"ratio   : dbwatch/mtail throughput {mt_wall / db_wall:.1f}x  (target >= 10x; peak RSS target <= 64 MiB)"
        )
        exact = db["events"] == truth["events"] and counted == truth["leaves"] and db["lines"] == truth["lines"]
        print(f"counts exact: {'yes' if exact else 'NO'}")
        asyncio.run(tailing(work, args.appends, args.idle))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
