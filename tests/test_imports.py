"""A feature's libraries are imported only when the config uses it: psycopg for pgbouncer, bcrypt for basic auth,
aiohttp (its client) for a login probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbwatch.pgcluster import free_port
from tests.helpers import PG, REPO

# A daemon in a fresh interpreter: serve the config until every job of every target has run twice, then print
# which of the optional libraries are in sys.modules.
DAEMON = r"""
import asyncio, json, sys
from dbwatch import metrics as m
from dbwatch.config import from_mapping
from dbwatch.daemon import serve
from dbwatch.store import Store
from dbwatch.webconfig import load as load_web

config = from_mapping(json.loads(sys.argv[1]))
web = load_web(sys.argv[2]) if len(sys.argv) > 2 else None
jobs = [(j, t.name) for t in config.targets for j in ("probe", *t.collect.collectors)]

async def main():
    store, stop = Store(), asyncio.Event()
    async def started(host, port):
        async def watch():
            for _ in range(400):
                if all(sum(store.counter_value(m.JOB_RUNS, (*k, r)) for r in ("ok", "error", "timeout")) >= 2
                       for k in jobs):
                    break
                await asyncio.sleep(0.05)
            stop.set()
        asyncio.get_running_loop().create_task(watch())
    await serve(config, store=store, web_config=web, stop=stop, on_started=started)

asyncio.run(main())
print(json.dumps(sorted({n.partition(".")[0] for n in sys.modules})))
"""
OPTIONAL = {"psycopg", "bcrypt", "sqlalchemy", "aiohttp"}


def _loaded(raw: dict[str, Any], *extra: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", DAEMON, json.dumps({"listen": "127.0.0.1:0", **raw}), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1])) & OPTIONAL


def _target(pg: Any) -> dict[str, Any]:
    return {"name": "main", "dsn": pg.dsn, "interval": 0.5, "timeout": 0.5}


def test_plain_config_imports_no_optional_library(pg: PG, tmp_path: Path) -> None:
    """A postgres target with its collectors, a log source and the hook: no psycopg, bcrypt, SQLAlchemy or aiohttp."""
    (tmp_path / "app.log").write_text("hello\n")
    raw = {
        "targets": [_target(pg)],
        "logs": {"state_dir": str(tmp_path), "sources": [{"name": "app", "path": str(tmp_path / "*.log")}]},
        "hook": {"listen": f"127.0.0.1:{free_port()}"},
    }
    assert _loaded(raw) == set()


def test_pgbouncer_target_imports_psycopg(pg: PG) -> None:
    """A pgbouncer target (refused here: the import happens at the first connect) loads psycopg, nothing else."""
    bouncer = {"name": "bouncer", "kind": "pgbouncer", "dsn": f"postgresql://u:p@127.0.0.1:{free_port()}/pgbouncer"}
    raw = {"targets": [_target(pg), {**bouncer, "interval": 0.5, "timeout": 0.5}]}
    assert _loaded(raw) == {"psycopg"}


def test_login_probe_imports_aiohttp(pg: PG) -> None:
    """An http_login target (refused here: the import happens at its first run) loads aiohttp, nothing else."""
    login = {"name": "login", "kind": "http_login", "url": f"http://127.0.0.1:{free_port()}/login"}
    raw = {"targets": [_target(pg), {**login, "interval": 0.5, "timeout": 0.5}]}
    assert _loaded(raw) == {"aiohttp"}


@pytest.mark.parametrize("users", [False, True])
def test_web_config_imports_bcrypt_only_with_basic_auth(pg: PG, tmp_path: Path, users: bool) -> None:
    """A web config loads bcrypt only when it has basic_auth_users."""
    import bcrypt

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n" if users else "http_server_config: {}\n")
    assert _loaded({"targets": [_target(pg)]}, str(web)) == ({"bcrypt"} if users else set())


def test_config_module_loads_no_daemon_library() -> None:
    """Loading a config (check-config, rules) loads no prometheus_client, aiohttp, asyncpg, psycopg or bcrypt, and
    none of dbwatch's collectors, store, probes or server: validating YAML needs only the declared schema."""
    code = (
        "import json, sys, dbwatch.config as c;"
        "c.from_mapping({'targets': [{'name': 'a', 'dsn': 'postgresql://h/d'}, {'name': 'b', 'kind': 'pgbouncer',"
        " 'dsn': 'postgresql://h/pgbouncer'}], 'slos': [{'name': 's', 'sli': 'availability', 'from': 'probe',"
        " 'objective': 99, 'target': 'a'}]});"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    modules = set(json.loads(out))
    tops = {n.partition(".")[0] for n in modules}
    assert not tops & {"prometheus_client", "aiohttp", "asyncpg", "psycopg", "bcrypt"}
    heavy = {"dbwatch.collectors", "dbwatch.store", "dbwatch.probes", "dbwatch.server", "dbwatch.scheduler"}
    assert not modules & heavy, sorted(modules & heavy)
