"""Real Prometheus and Alertmanager (Debian packages) on loopback ports, for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dbwatch.pgcluster import free_port
from tests.helpers import REPO, stop_process


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL built here
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Service:
    """A child process with a temp dir, stopped and removed on close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"dbwatch-{name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "out.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(
        self, argv: list[str], ready_path: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd or self.dir, env=env)
        try:
            _wait_http(self.url + ready_path)
        except BaseException:
            self.close()  # the caller never got the object: stop the process and remove its dir here
            raise

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 10 s); its dir stays."""
        if self.proc:
            stop_process(self.proc)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus(Service):
    """Prometheus scraping the given targets every second, evaluating rules every second."""

    def __init__(
        self, scrape_targets: list[str], rule_files: list[Path] | None = None, alertmanager: str | None = None
    ) -> None:
        super().__init__("prometheus")
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "dbwatch", "static_configs": [{"targets": scrape_targets}]}],
            "rule_files": [str(p) for p in rule_files or []],
        }
        if alertmanager:
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self._start(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--rules.alert.resend-delay=1s",
                "--log.level=warn",
            ],
            "/-/ready",
        )

    def query(self, expr: str) -> dict[str, Any]:
        """Instant query through the HTTP API; returns the decoded JSON (status and data)."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            return dict(json.loads(e.read()))

    def targets_up(self) -> bool:
        res = self.query('up{job="dbwatch"}')
        return any(s["value"][1] == "1" for s in res.get("data", {}).get("result", []))


class Alertmanager(Service):
    """Alertmanager with the given config mapping."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__("alertmanager")
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self._start(
            [
                "prometheus-alertmanager",
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            "/-/ready",
        )


class LoginApp(Service):
    """tests/apps/asgi_login.py on uvicorn; logs to app.log and access.log in its dir, which dbwatch tails."""

    def __init__(
        self, dsn: str, password: str, hook_addr: str, *, broken: bool = False, after: LoginApp | None = None
    ) -> None:
        """`broken`: the outage replay (StaticPool, every login a MissingGreenlet); `after`: a stopped app whose port
        and log folder this one takes over, as a redeploy does."""
        super().__init__("loginapp")
        if after is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir, self.port, self.log = after.dir, after.port, after.dir / "out.log"
        env = {
            **os.environ,
            "LOGIN_APP_DATABASE_URL": dsn,
            "LOGIN_APP_PASSWORD": password,
            "LOGIN_APP_LOG_DIR": str(self.dir),
            "LOGIN_APP_BROKEN": "1" if broken else "0",
            "DBWATCH_HOOK_ADDR": hook_addr,
            "DBWATCH_HOOK_INTERVAL": "0.5",
        }
        argv = [sys.executable, "-m", "uvicorn", "tests.apps.asgi_login:app", "--host", "127.0.0.1"]
        self._start([*argv, "--port", str(self.port), "--log-level", "warning"], "/healthz", env=env, cwd=REPO)
