"""One distinctive password in every DSN form and in a login probe body, through a whole `dbwatch run` and its
crash paths: it never appears in any output (logs, /metrics, /readyz, /healthz, check-config, error exits).

The suite-wide check in tests/conftest.py greps every captured output for the same password as well.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from dbwatch.pgcluster import free_port
from dbwatch.secret import DSN, DSNError
from tests.faults.harness import Blackhole, DaemonProcess
from tests.helpers import SENTINEL, SENTINEL_FORMS, run_cli


def _leaks(text: str) -> list[str]:
    return [f for f in SENTINEL_FORMS if f in text]


def _targets(pg: object, tmp_path: Path, hole: Blackhole) -> list[dict[str, object]]:
    c = pg.cluster  # type: ignore[attr-defined]
    enc = urllib.parse.quote(SENTINEL, safe="")
    kw_pw = SENTINEL.replace("\\", "\\\\").replace("'", "\\'")
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(f"postgresql://app:{enc}@127.0.0.1:{c.port}/appdb\n")
    common = {"interval": 0.5, "timeout": 0.4, "critical": False}
    return [
        {"name": "url", "dsn": f"postgresql://app:{enc}@127.0.0.1:{c.port}/appdb", **common},
        {"name": "asyncpg", "dsn": f"postgresql+asyncpg://app:{enc}@127.0.0.1:{c.port}/appdb", **common},
        {"name": "keywords", "dsn": f"host=127.0.0.1 port={c.port} user=app password='{kw_pw}' dbname=appdb", **common},
        {"name": "env", "dsn_env": "DBW_SECRET_DSN", **common},
        {"name": "file", "dsn_file": str(dsn_file), **common},
        # Failure paths carry the password too: wrong database, nothing listening, a port that never answers.
        {"name": "nodb", "dsn": f"postgresql://app:{enc}@127.0.0.1:{c.port}/missing_db", **common},
        {"name": "refused", "dsn": f"postgresql://app:{enc}@127.0.0.1:{free_port()}/appdb", **common},
        {"name": "hang", "dsn": f"postgresql://app:{enc}@127.0.0.1:{hole.port}/appdb", **common},
        {
            "name": "login",
            "kind": "http_login",
            "url": f"http://127.0.0.1:{hole.port}/api/login",
            "body": {"username": "probe@example.com"},
            "secret_fields": {"password": {"env": "DBW_SECRET_LOGIN_PW"}},
            "expect_json": {"path": "access_token"},
            **common,
        },
    ]


def test_password_in_every_form_never_leaks(pg: object, tmp_path: Path, monkeypatch: object) -> None:
    """Every DSN form and a login body carry the password; no byte of any output contains it."""
    c = pg.cluster  # type: ignore[attr-defined]
    enc = urllib.parse.quote(SENTINEL, safe="")
    env = {
        "DBW_SECRET_DSN": f"postgresql+asyncpg://app:{enc}@127.0.0.1:{c.port}/appdb",
        "DBW_SECRET_LOGIN_PW": SENTINEL,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # type: ignore[attr-defined]
    outputs: dict[str, str] = {}
    with Blackhole() as hole:
        targets = _targets(pg, tmp_path, hole)
        daemon = DaemonProcess({"log": {"level": "debug"}, "targets": targets}).start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                _status, body = daemon.get("/readyz")
                info = json.loads(body)["targets"]
                if all(info[n]["up"] for n in ("url", "asyncpg", "keywords", "env", "file")) and all(
                    info[n]["reason"] for n in ("nodb", "refused", "hang", "login")
                ):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"targets did not settle: {body}")
            assert info["nodb"]["reason"] == "database_missing"
            assert info["refused"]["reason"] == "refused"
            for path in ("/metrics", "/readyz", "/healthz", "/", "/nope"):
                outputs[path] = daemon.get(path)[1]
            # A second daemon on the same port: the "address in use" crash path (exit 1).
            busy = yaml.safe_load(daemon.config_path.read_text())
            cfg = tmp_path / "busy.yaml"
            cfg.write_text(yaml.safe_dump(busy))
            proc = run_cli("run", "--config", str(cfg))
            assert proc.returncode == 1
            outputs["run: address in use"] = proc.stdout + proc.stderr
            proc = run_cli("check-config", str(cfg))
            assert proc.returncode == 0
            assert "***" in proc.stdout
            outputs["check-config"] = proc.stdout + proc.stderr
        finally:
            code = daemon.stop()
            outputs["dbwatch run log"] = daemon.output()
            sys.stdout.write(outputs["dbwatch run log"])
            daemon.cleanup()
    assert code == 0
    assert '"event": "job_failed"' in outputs["dbwatch run log"]  # the failure paths were logged
    for where, text in outputs.items():
        assert not _leaks(text), f"password leaked in {where}"


def test_crash_paths_never_leak(tmp_path: Path) -> None:
    """Config errors around a password, an unreadable dsn_file, a listen address that cannot be bound."""
    enc = urllib.parse.quote(SENTINEL, safe="")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        taken = s.getsockname()[1]
        s.listen()
        cases = {
            "bad port in URL": f"targets: [{{name: a, dsn: 'postgresql://app:{enc}@h:99999/d'}}]\n",
            "two hosts": f"targets: [{{name: a, dsn: 'postgresql://app:{enc}@h1,h2/d'}}]\n",
            "bad sslmode": f"targets: [{{name: a, dsn: 'postgresql://app:{enc}@h/d?sslmode=sometimes'}}]\n",
            "unclosed quote": f'targets:\n  - name: a\n    dsn: "postgresql://app:{SENTINEL}@h/d\n',
            "tab in yaml": f"targets:\n\t- dsn: postgresql://app:{enc}@h/d\n",
            "listen taken": f"listen: 127.0.0.1:{taken}\ntargets: [{{name: a, dsn: 'postgresql://app:{enc}@h/d'}}]\n",
        }
        for name, text in cases.items():
            cfg = tmp_path / "c.yaml"
            cfg.write_text(text)
            for cmd in (("check-config", str(cfg)), ("run", "--config", str(cfg))):
                proc = run_cli(*cmd, timeout=30)
                if name != "listen taken" or cmd[0] == "run":
                    assert proc.returncode in (1, 2), (name, cmd, proc.returncode)
                assert "Traceback" not in proc.stderr, name
                assert not _leaks(proc.stdout + proc.stderr), f"password leaked: {name} {cmd[0]}"


def test_a_dsn_libpq_and_sqlalchemy_read_differently_is_refused_without_echo(tmp_path: Path) -> None:
    """`postgresql://u:1234/Bad-secret@h/db`: libpq reads host `u` port 1234, SQLAlchemy password `1234/Bad-secret`.

    Refused (exit 2) by check-config and run, and no piece of it (password head or tail) is printed.
    """
    pieces = ("1234", "Bad-secret", "secret@h", "Bad")
    for dsn in (
        "postgresql://u:1234/Bad-secret@h/db",
        "postgresql+asyncpg://u:1234?Bad-secret@h/db",
        "postgresql://u:1234#Bad-secret@h/db",
    ):
        with pytest.raises(DSNError) as err:
            DSN.parse(dsn)
        assert not [p for p in pieces if p in str(err.value)], str(err.value)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"targets": [{"name": "a", "dsn": dsn}]}))
        for cmd in (("check-config", str(cfg)), ("run", "--config", str(cfg))):
            proc = run_cli(*cmd, timeout=30)
            assert proc.returncode == 2, (dsn, cmd, proc.stdout, proc.stderr)
            assert not [p for p in pieces if p in proc.stdout + proc.stderr], (cmd, proc.stdout, proc.stderr)
    # the same password percent-encoded is what both read alike: accepted, and the password never shown
    ok = DSN.parse("postgresql://u:1234%2FBad-secret@h/db")
    assert (ok.host, ok.user, ok.password.reveal(), ok.database) == ("h", "u", "1234/Bad-secret", "db")
    assert "Bad-secret" not in str(ok)
