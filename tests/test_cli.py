"""The command line: --help everywhere, --version, `run` served over a socket and stopped by SIGTERM, `demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dbwatch import __version__
from dbwatch.pgcluster import free_port
from tests.helpers import PG, REPO, SENTINEL_FORMS, demo_process, run_cli


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"dbwatch {__version__}"


@pytest.mark.parametrize("sub", [[], ["run"], ["check-config"], ["demo"]])
def test_every_command_has_help(sub: list[str]) -> None:
    proc = run_cli(*sub, "--help")
    assert proc.returncode == 0
    assert "usage: dbwatch" in proc.stdout


def test_no_command_is_usage_error() -> None:
    assert run_cli().returncode == 2


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback URL built by the test
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_run_serves_and_stops_gracefully_on_sigterm(pg: PG, tmp_path: Path) -> None:
    """`dbwatch run` logs JSON events, serves /metrics, and exits 0 on SIGTERM with a server_stopped event."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    dsn = pg.dsn.replace("'", "''")
    cfg.write_text(f"targets:\n  - name: main\n    dsn: '{dsn}'\n    interval: 1\n    timeout: 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbwatch", "run", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 15
        status, body = 0, ""
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status == 200, body
        status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert 'dbwatch_probe_up{target="main"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        sys.stdout.write(out)
        sys.stderr.write(err)
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events[0] == "server_started"
    assert events[-1] == "server_stopped"
    assert not any(f in out + err for f in SENTINEL_FORMS)


def _demo_dir(out: str) -> Path:
    """The cluster dir the demo printed ("data in /tmp/dbwatch-pg-…"); other tests' clusters are not ours."""
    m = re.search(r"data in (\S+)", out)
    assert m, out
    return Path(m.group(1))


def _ps() -> str:
    """Every process's command line, unabridged."""
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def _assert_cleaned(datadir: Path) -> None:
    assert not datadir.exists()
    assert str(datadir) not in _ps()


def test_demo_runs_and_cleans_up() -> None:
    """`dbwatch demo --duration` starts a cluster, reports live figures, and leaves no data dir or server."""
    proc = run_cli("demo", "--duration", "4", "--interval", "1", "--listen", f"127.0.0.1:{free_port()}", timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "/metrics" in proc.stdout
    assert "demo             up=1" in proc.stdout
    assert "database_missing=" in proc.stdout
    assert re.search(r"demo             server sessions: .*active=[1-9]", proc.stdout)
    assert re.search(r"demo-app/primary pool \(in-app hook\): checked_out=\d+ idle=\d+ checkouts=[1-9]", proc.stdout)
    _assert_cleaned(_demo_dir(proc.stdout))


def _until(proc: subprocess.Popen[str], text: str) -> str:
    """The demo's output up to and including the first line holding text."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_demo_cleans_up_on_sigterm_and_sighup(sig: signal.Signals) -> None:
    """SIGTERM or SIGHUP (its terminal closed) while the demo runs: exit 0, cluster, temp dir and app gone."""
    proc = demo_process("--interval", "1", "--listen", f"127.0.0.1:{free_port()}", stderr=subprocess.PIPE)
    head = _until(proc, "up=1")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    sys.stdout.write(head + out)
    sys.stderr.write(err)
    assert proc.returncode == 0
    assert "cluster removed" in out
    datadir = _demo_dir(head)
    _assert_cleaned(datadir)
    assert not _demo_apps(datadir)


def _demo_apps(datadir: Path) -> list[str]:
    """Command lines of the demo apps whose logs go under datadir."""
    return [line for line in _ps().splitlines() if "dbwatch.demo_workload" in line and str(datadir) in line]


def test_demo_busy_port_is_an_error() -> None:
    """`--listen` on a port in use: exit 1 saying so, before any cluster is made (no silent move to another port)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("demo", "--duration", "1", "--listen", f"127.0.0.1:{port}", timeout=30)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in proc.stderr
    assert "PostgreSQL" not in proc.stdout


def test_demo_sweeps_what_a_killed_demo_left() -> None:
    """A demo killed with SIGKILL leaves its server, app and cluster dir; the next demo removes them first."""
    killed = demo_process("--interval", "1", "--listen", f"127.0.0.1:{free_port()}", stderr=subprocess.PIPE)
    head = _until(killed, "logging to")  # the cluster runs and the app has started
    killed.kill()
    killed.communicate(timeout=30)
    datadir = _demo_dir(head)
    postmaster = int((datadir / "data" / "postmaster.pid").read_text().split()[0])
    assert _demo_apps(datadir)
    os.kill(postmaster, 0)  # still running: nothing cleaned up after SIGKILL

    proc = run_cli("demo", "--duration", "1", "--interval", "1", "--listen", f"127.0.0.1:{free_port()}", timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "left behind by a demo that was killed" in proc.stdout
    _assert_cleaned(datadir)
    assert not _demo_apps(datadir)
    _assert_cleaned(_demo_dir(proc.stdout))
