"""Benchmark for issue 17: the daemon's RSS per config, feature by feature, beside prometheus-postgres-exporter's.

Each config runs as `dbwatch run` in a venv holding only `dbwatch[daemon]` (what the sidecar image installs; built
from this tree into a temp dir, or `--python` to use another interpreter) against one throwaway PostgreSQL 15. Every
feature is exercised while it is measured: the login probe hits a loopback login endpoint, a real instrumented
SQLAlchemy engine reports to the hook, the log sources receive lines and tracebacks, `/metrics` is scraped every
second. After `--window` seconds it prints RSS at the end, the kernel's peak (VmHWM), its anonymous and file-backed
parts, and which of the optional libraries the process had loaded. Debian's `prometheus-postgres-exporter` (default
collectors) runs on the same database and is scraped the same way. It never asserts.

    .venv/bin/python bench/memory.py [--window 30] [--only quickstart,full]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbwatch.pgcluster import Cluster, free_port  # noqa: E402
from tests.collectors.bouncer import Bouncer  # noqa: E402

PASSWORD = "bench-pw-not-secret"
LOGIN_PASSWORD = "bench-login-not-secret"
EXPORTER = shutil.which("prometheus-postgres-exporter") or "/usr/bin/prometheus-postgres-exporter"
OPTIONAL = ("aiohttp", "psycopg", "bcrypt", "sqlalchemy", "greenlet")
# Where the RSS of a daemon goes before it does anything: each stage imported in order in a fresh interpreter.
STAGES = (
    "asyncio",
    "asyncpg",
    "yaml",
    "structlog",
    "prometheus_client",
    "h11",
    "dbwatch.config",
    "dbwatch.daemon",
    "dbwatch.cli",
)
STAGED = """
import importlib, sys
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
print("python", rss())
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, rss())
"""
TARGETS = {"quickstart": 40, "full": 48}  # MiB, issue 17


@dataclass
class Env:
    """What every config needs: the cluster, the login endpoint, a pgbouncer, a scratch dir."""

    cluster: Cluster
    login_port: int
    bouncer: Bouncer
    tmp: Path
    hook_port: int = 0

    @property
    def dsn(self) -> str:
        return self.cluster.dsn("app", PASSWORD, "appdb")


@dataclass
class Case:
    """One config: its name, what it adds, its YAML, and whether an app reports to the hook / writes logs."""

    name: str
    adds: str
    yaml: Callable[[Env], str]
    hook: bool = False
    logs: int = 0
    web: bool = False


def _target(env: Env) -> str:
    return "  - name: primary\n    dsn_env: DATABASE_URL\n    interval: 2s\n    timeout: 2s\n    critical: true\n"


def _login(env: Env) -> str:
    return (
        "  - name: login\n    kind: http_login\n"
        f"    url: http://127.0.0.1:{env.login_port}/api/login\n"
        "    body: {username: probe@example.com}\n"
        "    secret_fields: {password: {env: LOGIN_PROBE_PASSWORD}}\n"
        "    expect_json: {path: access_token}\n    interval: 2s\n    timeout: 2s\n"
    )


def _bouncer(env: Env) -> str:
    dsn = env.bouncer.dsn("pgbouncer")
    return f"  - name: bouncer\n    kind: pgbouncer\n    dsn: '{dsn}'\n    interval: 2s\n    timeout: 2s\n"


def _logs(env: Env, n: int) -> str:
    body = f"logs:\n  state_dir: {env.tmp}/state\n  app_packages: [shop]\n  poll_interval: 1s\n  sources:\n"
    for i in range(n):
        body += f"    - name: app{i}\n      path: {env.tmp}/logs{i}/*.log\n      target: primary\n"
    return body


def _hook(env: Env) -> str:
    return f"hook:\n  listen: 127.0.0.1:{env.hook_port}\n"


def _quickstart(env: Env) -> str:
    text = (REPO / "config" / "dbwatch.example.yaml").read_text()
    return text.replace("${DBWATCH_STATE_DIR:-/tmp}", f"{env.tmp}/state")


def _gen(*parts: Callable[[Env], str]) -> Callable[[Env], str]:
    """A config of the given parts: targets first (each part a `targets:` entry), then top-level sections."""

    def build(env: Env) -> str:
        texts = [p(env) for p in parts]
        targets = [t for t in texts if t.startswith("  - ")]
        rest = [t for t in texts if not t.startswith("  - ")]
        return "log: {level: warning}\ntargets:\n" + "".join(targets) + "".join(rest)

    return build


def _probe_only(env: Env) -> str:
    return _target(env) + "    collect: {collectors: []}\n"


def _two_logs(env: Env) -> str:
    return _logs(env, 2)


CASES = [
    Case("probe", "one postgres target, collectors off", _gen(_probe_only)),
    Case("sessions", "+ session collectors (pg_activity, pg_database)", _gen(_target)),
    Case("quickstart", "config/dbwatch.example.yaml: target, collectors, SLOs, one log source", _quickstart),
    Case("login", "sessions + http_login probe", _gen(_target, _login)),
    Case("hook", "sessions + hook listener, one app reporting", _gen(_target, _hook), hook=True),
    Case("logs2", "sessions + two log sources with tracebacks", _gen(_target, _two_logs), logs=2),
    Case(
        "full",
        "database + login probe + hook + two log sources",
        _gen(_target, _login, _hook, _two_logs),
        hook=True,
        logs=2,
    ),
    Case(
        "web",
        "full + --web.config.file, basic auth (bcrypt)",
        _gen(_target, _login, _hook, _two_logs),
        hook=True,
        logs=2,
        web=True,
    ),
    Case("pgbouncer", "sessions + pgbouncer target (psycopg)", _gen(_target, _bouncer)),
]


class _Login(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"access_token": "t"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def loaded(pid: int) -> list[str]:
    """Optional libraries the process has mapped (their extension modules show in /proc/PID/maps)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in OPTIONAL if f"/{name}/" in maps or f"/{name}_" in maps or f"_{name}" in maps]


def scrape(port: int, auth: str | None = None) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if auth:
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
        return r.read().decode()


def wait_ready(
    port: int, path: str, want: str, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"exited {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if want in r.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"port {port}{path}: no {want!r} within {timeout}s")


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    # cwd: not the checkout, whose dbwatch/ would shadow the installed (byte-compiled) package on `-m`/`-c` runs.
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir()
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


TRACEBACK = """2026-01-01 00:00:00,000 ERROR [shop.auth] Login failed
Traceback (most recent call last):
  File "/srv/shop/auth.py", line {n}, in login
    user.updated_at
  File "/usr/lib/python3/site-packages/sqlalchemy/orm/attributes.py", line 569, in __get__
    return self.impl.get(state, dict_)
sqlalchemy.exc.MissingGreenlet: greenlet_spawn has not been called; can't call await_only() here.
"""


def write_logs(tmp: Path, n: int, stop: threading.Event) -> None:
    """Each source: 200 lines and one traceback (one of 50 code lines) a second, rotated never."""
    files = []
    for i in range(n):
        d = tmp / f"logs{i}"
        d.mkdir(exist_ok=True)
        files.append((d / "app.log").open("a"))
    k = 0
    while not stop.wait(0.1):
        for f in files:
            f.write("2026-01-01 00:00:00,000 INFO [shop.web] GET /items 200\n" * 20)
            if k % 10 == 0:
                f.write(TRACEBACK.format(n=100 + k % 50))
            f.flush()
        k += 1
    for f in files:
        f.close()


def hook_app(port: int, stop: threading.Event) -> None:
    """A real instrumented SQLAlchemy engine (sqlite) reporting to the sidecar every second."""
    from sqlalchemy import create_engine, text

    from dbwatch.hook import instrument

    engine = create_engine(f"sqlite:///{tempfile.mkdtemp(prefix='dbwatch-bench-')}/app.db")
    instrument(engine, name="primary", app="shop", sidecar=f"127.0.0.1:{port}", interval=1.0)
    while not stop.wait(0.05):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    engine.dispose()


def measure_dbwatch(python: Path, case: Case, env: Env, window: float) -> dict[str, object]:
    port = free_port()
    work = env.tmp / case.name
    work.mkdir()
    (work / "state").mkdir()
    run_env = dataclasses.replace(env, tmp=work, hook_port=free_port())
    cfg = work / "dbwatch.yaml"
    cfg.write_text(case.yaml(run_env))
    argv = [str(python.parent / "dbwatch"), "run", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
    auth = None
    if case.web:
        web = work / "web.yml"
        import base64

        import bcrypt

        hashed = bcrypt.hashpw(b"bench", bcrypt.gensalt(10)).decode()
        web.write_text(f"basic_auth_users:\n  bench: '{hashed}'\n")
        argv += ["--web.config.file", str(web)]

        auth = "Basic " + base64.b64encode(b"bench:bench").decode()
    stop = threading.Event()
    threads = []
    if case.logs:
        threads.append(threading.Thread(target=write_logs, args=(work, case.logs, stop), daemon=True))
    if case.hook:
        threads.append(threading.Thread(target=hook_app, args=(run_env.hook_port, stop), daemon=True))
    penv = {
        "DATABASE_URL": env.dsn,
        "DBWATCH_MONITOR_URL": env.dsn,
        "LOGIN_PROBE_PASSWORD": LOGIN_PASSWORD,
        "DBWATCH_STATE_DIR": str(work),
    }
    with process(argv, penv) as proc:
        for t in threads:
            t.start()
        try:
            wait_ready(port, "/healthz", "", 60, proc)
            deadline = time.monotonic() + window
            series = 0
            while time.monotonic() < deadline:
                body = scrape(port, auth)
                series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
                time.sleep(1.0)
            figures: dict[str, object] = {**status(proc.pid), "series": series, "loaded": loaded(proc.pid)}
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        if proc.poll() is not None:
            raise RuntimeError(
                f"{case.name}: dbwatch exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
    return figures


def measure_exporter(env: Env, window: float) -> dict[str, object]:
    port = free_port()
    dsn = f"postgresql://app:{PASSWORD}@127.0.0.1:{env.cluster.port}/appdb?sslmode=disable"
    argv = [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]
    with process(argv, {"DATA_SOURCE_NAME": dsn}) as proc:
        wait_ready(port, "/metrics", "pg_up 1", 60)
        deadline = time.monotonic() + window
        series = 0
        while time.monotonic() < deadline:
            body = scrape(port)
            series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
            time.sleep(1.0)
        return {**status(proc.pid), "series": series, "loaded": []}


def daemon_venv(tmp: Path) -> Path:
    """A venv with only `dbwatch[daemon]` from this tree, as the sidecar image has."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "dbwatch", src / "dbwatch", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", f"{src}[daemon]"],
        check=True,
    )
    return venv / "bin" / "python"


def import_floor(python: Path) -> list[tuple[str, int]]:
    """RSS after each import stage (in the given interpreter): what the daemon costs before it runs anything."""
    argv = [str(python), "-c", STAGED, *STAGES]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout
    return [(name, int(v)) for name, v in (line.split() for line in out.splitlines())]


def mib(n: object) -> str:
    return f"{int(n) / 2**20:.1f}"  # type: ignore[call-overload]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=float, default=30.0, help="seconds each config runs while scraped (default 30)")
    ap.add_argument("--only", default="", help="comma-separated config names")
    ap.add_argument(
        "--python", type=Path, help="a venv's python with dbwatch installed (default: a fresh dbwatch[daemon] venv)"
    )
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dbwatch-bench-mem-"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Login)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        python = args.python or daemon_venv(tmp)
        version = subprocess.run([str(python), "--version"], capture_output=True, text=True, check=True).stdout.strip()
        with Cluster(version="15") as cluster:
            cluster.psql(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
            cluster.psql("CREATE DATABASE appdb OWNER app")
            cluster.psql("GRANT pg_monitor TO app")
            with Bouncer("127.0.0.1", cluster.port, ["appdb"], "app", PASSWORD) as bouncer:
                env = Env(cluster, server.server_address[1], bouncer, tmp)
                print(f"dbwatch (`dbwatch run`, {version}, {python}) vs prometheus-postgres-exporter on PostgreSQL 15;")
                print(f"each config runs {args.window:g} s, /metrics scraped every second; MiB")
                print()
                head = f"{'config':12} {'RSS':>6} {'peak':>6} {'anon':>6} {'file':>6} {'series':>6}  loaded      adds"
                print(head)
                rows = []
                for case in cases:
                    f = measure_dbwatch(python, case, env, args.window)
                    rows.append((case, f))
                    print(
                        f"{case.name:12} {mib(f['VmRSS']):>6} {mib(f['VmHWM']):>6} {mib(f['RssAnon']):>6} "
                        f"{mib(f['RssFile']):>6} {f['series']:>6}  {','.join(f['loaded']) or '-':11} {case.adds}",  # type: ignore[arg-type]
                        flush=True,
                    )
                e = measure_exporter(env, args.window)
                print(
                    f"{'pg_exporter':12} {mib(e['VmRSS']):>6} {mib(e['VmHWM']):>6} {mib(e['RssAnon']):>6} "
                    f"{mib(e['RssFile']):>6} {e['series']:>6}  {'-':11} Debian's exporter, default collectors"
                )
                print()
                for case, f in rows:
                    ratio = int(f["VmRSS"]) / int(e["VmRSS"])  # type: ignore[call-overload]
                    goal = TARGETS.get(case.name)
                    vs = (
                        f", goal <= {goal} MiB: {'met' if int(f['VmRSS']) <= goal * 2**20 else 'NOT met'}"
                        if goal
                        else ""
                    )  # type: ignore[call-overload]
                    print(f"  {case.name:12} {ratio:.2f}x postgres_exporter's RSS{vs}")
                print()
                print("Where it goes: RSS after each import, in order, in a fresh interpreter of the same venv (MiB):")
                prev = 0
                for name, rss in import_floor(python):
                    print(f"  {name:20} {mib(rss):>6}  +{mib(rss - prev)}")
                    prev = rss
    finally:
        server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
