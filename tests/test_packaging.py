"""Packaging: `pip install dbwatch[hook]` into a fresh venv brings SQLAlchemy and no daemon dependency, and works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

# The `daemon` extra's distributions: none may reach an app's image through the hook.
DAEMON_DISTS = {
    "aiohttp",
    "h11",
    "msgspec",
    "asyncpg",
    "psycopg",
    "psycopg-binary",
    "bcrypt",
    "prometheus-client",
    "structlog",
    "pyyaml",
}

# Runs inside the hook-only venv: a real sqlite engine, instrumented, reporting to a UDP socket the script holds.
APP = r"""
import json, socket, sys, time
from importlib import metadata
from sqlalchemy import create_engine, text
from dbwatch.hook import instrument

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(1.0)
engine = create_engine(f"sqlite:///{sys.argv[1]}")
ok = instrument(engine, name="primary", app="shop", sidecar="127.0.0.1:%d" % sock.getsockname()[1], interval=0.05)
for _ in range(3):
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar_one()
checkouts, deadline = 0, time.monotonic() + 20
while checkouts < 3 and time.monotonic() < deadline:
    try:
        report = json.loads(sock.recv(65536))
    except TimeoutError:
        continue
    for e in report.get("engines", []):
        if e["engine"] == "primary":
            checkouts = e["counters"]["checkouts"]
dists = sorted(d.metadata["Name"] for d in metadata.distributions())
print(json.dumps({"instrumented": ok, "checkouts": checkouts, "dists": dists, "modules": sorted(sys.modules)}))
"""


@pytest.mark.slow
def test_hook_extra_installs_without_daemon_dependencies(tmp_path: Path) -> None:
    """A fresh venv with only `.[hook]`: no daemon distribution installed or imported; a sqlite engine reports."""
    src = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "dbwatch", src / "dbwatch", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # This venv's pip installs into the new one (no pip copied in); packages come from the configured index/cache.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", f"{src}[hook]"],
        check=True,
        timeout=240,
    )
    installed = time.monotonic() - t0
    sys.stdout.write(f"fresh venv + pip install .[hook]: {installed:.1f} s\n")

    proc = subprocess.run(
        [str(py), "-c", APP, str(tmp_path / "app.db")], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    dists = {d.lower().replace("_", "-") for d in got["dists"]}
    assert "sqlalchemy" in dists
    assert "dbwatch" in dists
    assert not dists & DAEMON_DISTS, dists
    assert got["instrumented"] is True
    assert got["checkouts"] == 3
    daemon_modules = {
        "aiohttp",
        "h11",
        "msgspec",
        "asyncpg",
        "psycopg",
        "bcrypt",
        "prometheus_client",
        "structlog",
        "yaml",
    }
    assert not {m.partition(".")[0] for m in got["modules"]} & daemon_modules

    # The console script is there too: the offline scan works, the daemon's commands say what to install.
    log = tmp_path / "app.log"
    log.write_text("plain line\n", encoding="utf-8")
    scan = subprocess.run(
        [str(venv / "bin" / "dbwatch"), "scan", "--json", str(log)], capture_output=True, text=True, check=False
    )
    assert scan.returncode == 0, scan.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets: []\n", encoding="utf-8")
    run = subprocess.run(
        [str(venv / "bin" / "dbwatch"), "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1
    assert "pip install 'dbwatch[daemon]'" in run.stderr
    assert "Traceback" not in run.stderr
