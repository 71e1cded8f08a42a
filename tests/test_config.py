"""Config loading and validation: every bad case names its key and exits 2, never showing the password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbwatch.config import ConfigError, from_mapping, load, parse_duration
from dbwatch.secret import DSN
from tests.helpers import SENTINEL, SENTINEL_FORMS, run_cli

GOOD_DSN = "postgresql+asyncpg://app:" + SENTINEL_FORMS[1] + "@127.0.0.1:5432/appdb"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "dbwatch.yaml"
    p.write_text(text)
    return p


def test_minimal_config_defaults() -> None:
    c = from_mapping({"targets": [{"name": "a", "dsn": GOOD_DSN}]})
    t = c.targets[0]
    assert (t.interval, t.timeout, t.critical, t.kind) == (15.0, 5.0, True, "postgres")
    assert t.stale_after == 2 * 15 + 5
    assert c.listen == ("0.0.0.0", 9839)
    assert t.dsn.password.reveal() == SENTINEL
    assert t.dsn.database == "appdb"


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("500ms", 0.5), (2, 2), ("1.5", 1.5), ("2m", 120)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_dsn_env_file_and_var_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBW_TEST_DSN", GOOD_DSN)
    monkeypatch.setenv("DBW_TEST_PW", SENTINEL)
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(GOOD_DSN + "\n")
    c = from_mapping(
        {
            "targets": [
                {"name": "env", "dsn_env": "DBW_TEST_DSN"},
                {"name": "file", "dsn_file": str(dsn_file)},
                {"name": "expanded", "dsn": "host=127.0.0.1 user=app password='${DBW_TEST_PW}' dbname=x"},
            ]
        }
    )
    assert {t.dsn.password.reveal() for t in c.targets} == {SENTINEL}


BAD = [
    ("targets:\n  - name: a\n    dsn: x://y\n    colour: blue\n", "targets[0].colour: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("targets:\n  - dsn: postgresql://h/d\n", "targets[0].name: missing"),
    (
        "targets:\n  - name: a\n    dsn: postgresql://h/d\n  - name: a\n    dsn: postgresql://h/d\n",
        "targets[1].name: duplicate",
    ),
    (
        "targets:\n  - name: a\n    dsn: postgresql://h/d\n    interval: 0\n",
        "targets[0].interval: must be > 0",
    ),
    ("targets:\n  - name: a\n    dsn: postgresql://h/d\n    interval: -5s\n", "targets[0].interval"),
    (
        "targets:\n  - name: a\n    dsn: postgresql://h/d\n    interval: [1]\n",
        "targets[0].interval: expected a duration",
    ),
    (
        "targets:\n  - name: a\n    dsn: postgresql://h/d\n    critical: 'yes'\n",
        "targets[0].critical: expected true or false",
    ),
    (
        "targets:\n  - name: a\n    dsn_file: /nonexistent/dsn\n",
        "targets[0].dsn_file: cannot read /nonexistent/dsn",
    ),
    (
        "targets:\n  - name: a\n    dsn_env: DBW_SURELY_UNSET\n",
        "targets[0].dsn_env: environment variable DBW_SURELY_UNSET",
    ),
    ("targets:\n  - name: a\n", "targets[0]: give exactly one of dsn"),
    ("targets:\n  - name: a\n    dsn: mysql://u:p@h/d\n", "targets[0].dsn: unsupported DSN scheme"),
    ("targets: {}\n", "targets: expected a list"),
    ("listen: nowhere\n", "listen: expected host:port"),
    ("log:\n  level: loud\n", "log.level: must be one of"),
    (
        "targets:\n  - name: a\n    dsn: postgresql://h/d\n    timeout: 20\n    interval: 10\n",
        "targets[0].timeout",
    ),
    ("targets: [\n", "YAML syntax error at line"),
    ("targets:\n  - name: a\n    dsn: 'postgresql://u@[h/d'\n", "targets[0].dsn: malformed URL DSN"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_bad_config_names_the_key_and_exits_2(tmp_path: Path, text: str, message: str) -> None:
    """Each bad config: one line on stderr naming the key, exit code 2, no traceback."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(path)
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("run", "--config", str(path))
    assert proc.returncode == 2


def test_errors_never_show_the_password(tmp_path: Path) -> None:
    """A password inside a bad DSN, a bad key or a YAML error never reaches the message."""
    cases = [
        f"targets:\n  - name: a\n    dsn: 'postgresql://app:{SENTINEL}@h:99999/d'\n",
        f"targets:\n  - name: a\n    dsn: 'postgresql://app:{SENTINEL}@h/d'\n    extra_{SENTINEL[:3]}: 1\n",
        f'targets:\n  - name: a\n    dsn: "postgresql://app:{SENTINEL}@h/d\n',
        f"targets:\n  - name: a\n    dsn: 'mysql://app:{SENTINEL}@h/d'\n",
        f"targets:\n  - name: a\n    dsn: 'host=h password=\\'{SENTINEL}'\n",
        f"targets:\n  - name: a\n    dsn: 'postgresql://app:{SENTINEL}@[::1/d'\n",
    ]
    for text in cases:
        proc = run_cli("check-config", str(write(tmp_path, text)))
        assert proc.returncode == 2, proc.stderr
        assert not any(f in proc.stderr + proc.stdout for f in SENTINEL_FORMS)


def test_check_config_prints_redacted_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, f"targets:\n  - name: main\n    dsn: '{GOOD_DSN}'\n    interval: 10s\n    timeout: 500ms\n")
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 0
    assert "postgresql://app:***@127.0.0.1:5432/appdb" in proc.stdout
    assert "interval: 10.0" in proc.stdout
    assert "timeout: 0.5" in proc.stdout
    assert "config ok" in proc.stdout


DSN_FORMS = [
    f"postgresql://app:{SENTINEL_FORMS[1]}@db.example:5433/appdb?sslmode=require",
    f"postgres://app:{SENTINEL_FORMS[1]}@db.example:5433/appdb?sslmode=require",
    f"postgresql+asyncpg://app:{SENTINEL_FORMS[1]}@db.example:5433/appdb?ssl=require",
    f"postgresql+psycopg://app:{SENTINEL_FORMS[1]}@db.example:5433/appdb?sslmode=require",
    f"postgresql+psycopg_async://app:{SENTINEL_FORMS[1]}@db.example:5433/appdb?sslmode=require",
    f"host=db.example port=5433 user=app password='{SENTINEL}' dbname=appdb sslmode=require",
]


@pytest.mark.parametrize("text", DSN_FORMS)
def test_every_dsn_form_parses_the_same_and_redacts(text: str) -> None:
    dsn = DSN.parse(text)
    assert (dsn.host, dsn.port, dsn.user, dsn.database) == ("db.example", 5433, "app", "appdb")
    assert dsn.password.reveal() == SENTINEL
    assert dsn.param("sslmode") == "require"
    for rendered in (str(dsn), repr(dsn), repr(dsn.password), f"{dsn}"):
        assert not any(f in rendered for f in SENTINEL_FORMS)
    assert str(dsn) == "postgresql://app:***@db.example:5433/appdb?sslmode=require"


def test_unix_socket_and_ipv6_dsns() -> None:
    assert DSN.parse("postgresql:///appdb?host=/var/run/postgresql").host == "/var/run/postgresql"
    d = DSN.parse("postgresql://u@[::1]:5432/db")
    assert (d.host, d.port) == ("::1", 5432)


def test_unknown_dsn_params_are_ignored_by_name() -> None:
    d = DSN.parse("postgresql+asyncpg://u:p@h/d?prepared_statement_cache_size=0&sslmode=disable")
    assert d.ignored == ("prepared_statement_cache_size",)
    assert d.param("sslmode") == "disable"


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "dbwatch.example.yaml"
    env = {"DATABASE_URL": GOOD_DSN, "DBWATCH_MONITOR_URL": GOOD_DSN}
    os.environ.update(env)
    try:
        c = load(example)
    finally:
        for k in env:
            os.environ.pop(k)
    assert c.targets
