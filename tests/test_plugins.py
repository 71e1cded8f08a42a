"""The plug-in tables (dbwatch.plugins): every entry resolves to a class of its name, modules load on first lookup."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dbwatch.collectors import COLLECTORS
from dbwatch.plugins import Table
from dbwatch.probes import PROBES
from tests.helpers import REPO


@pytest.mark.parametrize("table", [PROBES, COLLECTORS], ids=["probes", "collectors"])
def test_every_entry_resolves_to_a_class_of_its_name(table: Table) -> None:  # type: ignore[type-arg]
    """Each name looks up a class whose own `name` is that key (the config name and label value)."""
    assert [table[name].name for name in table] == list(table)


def test_probe_kinds_carry_their_phases_and_a_timeout_reason() -> None:
    """Every probe kind states its phases and a closed reason set that has `timeout` (the scheduler's cut)."""
    for kind in PROBES.values():
        assert kind.phases
        assert kind.reasons("timeout").value == "timeout"


def test_a_name_registered_under_another_class_name_is_refused() -> None:
    """A table entry whose class is named differently fails at lookup, naming both."""
    table = Table[object]({"pg_database": "dbwatch.collectors.pg_activity:PgActivity"})  # type: ignore[type-var]
    with pytest.raises(TypeError, match="named 'pg_activity' but registered as 'pg_database'"):
        table["pg_database"]
    assert "nope" not in table
    with pytest.raises(KeyError):
        table["nope"]


def test_a_kind_module_loads_on_its_first_lookup_only() -> None:
    """Listing and testing names loads no probe module; looking one up loads that one."""
    code = (
        "import json, sys\n"
        "from dbwatch.probes import PROBES\n"
        "assert 'http_login' in PROBES and list(PROBES) == ['postgres', 'http_login', 'pgbouncer']\n"
        "before = sorted(m for m in sys.modules if m.startswith('dbwatch.probes.'))\n"
        "PROBES['pgbouncer']\n"
        "after = sorted(m for m in sys.modules if m.startswith('dbwatch.probes.'))\n"
        "print(json.dumps([before, after]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    before, after = json.loads(out)
    assert before == ["dbwatch.probes.base"]
    assert set(after) - set(before) == {"dbwatch.probes.pgbouncer", "dbwatch.probes.postgres"}  # it uses postgres'
