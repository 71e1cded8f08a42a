"""The `location` label does not depend on the folder the app is deployed in (issue 15).

A real package is written under several deployment folders, including ones named after the package
(`git clone` of `myapp` makes `myapp/myapp/...`) and site-packages; real code raises, `logging` writes the traceback,
and the log counter (what /metrics shows) and `dbwatch scan` (text and JSON) must give the same label everywhere.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbwatch import metrics as m
from dbwatch.logs.classify import AppRules
from dbwatch.logs.formats import Splitter
from dbwatch.logs.record import Stats
from dbwatch.logs.scan import scan_file, to_text, write_json
from dbwatch.logs.sinks import ExceptionCounter
from dbwatch.store import Store

LOGIN = """\
def login(session: object) -> None:
    helper(session)


def helper(session: object) -> None:
    raise RuntimeError("boom")  # the app line
"""
LINE = 6
LABEL = f"myapp/routes/login.py:{LINE}"
RUN = """\
import logging, sys
logging.basicConfig(filename=sys.argv[1], format="%(asctime)s %(levelname)s %(message)s")
from myapp.routes.login import login
try:
    login(None)
except RuntimeError:
    logging.getLogger("app").exception("request failed")
"""
# (deployment folder under tmp, the folder that goes on sys.path)
DEPLOYMENTS = (
    "srv/app",
    "srv/myapp",  # a clone: myapp/myapp/routes/login.py
    "tmp/x/myapp/myapp",  # the package name three times in a row
    "myapp/venv/lib/python3.12/site-packages",
)


def _logged(tmp_path: Path, deploy: str) -> Path:
    """Install the package under `deploy`, raise from it in a real interpreter, return the log file."""
    base = tmp_path / deploy
    pkg = base / "myapp" / "routes"
    pkg.mkdir(parents=True)
    (base / "myapp" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "login.py").write_text(LOGIN)
    log = tmp_path / f"{deploy.replace('/', '_')}.log"
    subprocess.run([sys.executable, "-c", RUN, str(log)], cwd=tmp_path, env={"PYTHONPATH": str(base)}, check=True)
    return log


@pytest.mark.parametrize("deploy", DEPLOYMENTS)
def test_location_is_relative_to_the_package_wherever_it_is_deployed(tmp_path: Path, deploy: str) -> None:
    """/metrics and `scan` (text and JSON) show `myapp/routes/login.py:6`, whichever folder holds the package."""
    log = _logged(tmp_path, deploy)
    assert f"{tmp_path}/{deploy}/myapp/routes/login.py" in log.read_text()  # the log has the deployment's path
    rules_by_package = AppRules((), ("myapp",))
    root = tmp_path / deploy
    rules_by_root = AppRules((str(root),), ())
    for rules in (rules_by_package, rules_by_root) if "site-packages" not in deploy else (rules_by_package,):
        store = Store()
        counter = ExceptionCounter("app", rules, store, max_locations=50, max_exceptions=50)
        splitter = Splitter("auto", counter, Stats())
        splitter.feed(log.read_bytes())
        splitter.flush()
        counted = {labels[3] for labels, v in store._counters[m.LOG_EXCEPTIONS].items() if v}
        assert counted == {LABEL}
        report = scan_file(log, rules=rules)
        out = io.StringIO()
        write_json([report], out)
        event = json.loads(out.getvalue())["files"][str(log)]["events"][0]
        assert event["location"]["label"] == LABEL
        assert f"{LABEL} in helper" in to_text([report])


@pytest.mark.parametrize(
    ("path", "rules", "want"),
    [
        ("/work/dbwatch/dbwatch/demo_workload.py", AppRules((), ("dbwatch",)), "dbwatch/demo_workload.py"),
        ("/home/u/src/dbwatch/dbwatch/demo_workload.py", AppRules((), ("dbwatch",)), "dbwatch/demo_workload.py"),
        ("dbwatch/demo_workload.py", AppRules((), ("dbwatch",)), "dbwatch/demo_workload.py"),
        (r"C:\srv\myapp\myapp\routes\login.py", AppRules((), ("myapp",)), "myapp/routes/login.py"),
        ("/srv/app/myapp/x.py", AppRules(("/srv", "/srv/app"), ()), "myapp/x.py"),  # the deepest root wins
        ("/srv/worker/myapp/x.py", AppRules((), ("myapp", "worker")), "myapp/x.py"),  # folder named like a package
    ],
)
def test_short_strips_the_deployment_folder(path: str, rules: AppRules, want: str) -> None:
    """Edge cases of the same rule: the last `/<pkg>/` is the package, the deepest root is the root."""
    assert rules.short(path) == want
    assert rules.is_app(path)


def test_interpreter_frames_under_a_folder_named_like_the_package_are_not_the_app() -> None:
    """A Python built under /opt/myapp: its standard library and site-packages are not `myapp` code."""
    rules = AppRules((), ("myapp",))
    assert not rules.is_app("/opt/myapp/lib/python3.12/asyncio/base_events.py")
    assert not rules.is_app("/opt/myapp/lib/python3.12/site-packages/sqlalchemy/orm/session.py")
    assert rules.is_app("/opt/myapp/lib/python3.12/site-packages/myapp/routes.py")
