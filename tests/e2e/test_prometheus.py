"""End to end on a real Prometheus: it scrapes dbwatch, and every dashboard query is valid PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from dbwatch.pgcluster import free_port
from tests.e2e.stack import Prometheus
from tests.helpers import PG, REPO, eventually, running

DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
VARIABLE = re.compile(r"\$(namespace|job|instance|target|app|source)\b")
# Families of database-wide collectors: exposed by the one collecting instance of a database (issue 13).
DATABASE_WIDE = re.compile(r"dbwatch_pg_[a-z_]+|dbwatch_database_wide_collecting")


def dashboard_queries(path: Path) -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, with Grafana variables substituted."""
    dash = json.loads(path.read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = VARIABLE.sub(".*", target["expr"].replace("$__rate_interval", "15s"))
            yield panel["title"], expr


def test_dashboards_have_datasource_and_target_variables() -> None:
    assert DASHBOARDS
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert "dbwatch_target_info" in variables["target"]["definition"]
        for panel in dash["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_variables_and_no_double_counting_under_n_instances() -> None:
    """Variables for namespace, job, pod/instance, target, app, source; database-wide panels take one value per
    database (max across instances, never a sum, never filtered by pod), pod-local ones filter by pod."""
    dash = json.loads((REPO / "dashboards" / "dbwatch-overview.json").read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "namespace", "job", "instance", "target", "app", "source"]
    checked = 0
    for title, expr in dashboard_queries(REPO / "dashboards" / "dbwatch-overview.json"):
        if DATABASE_WIDE.search(expr):
            checked += 1
            assert 'instance=~".*"' not in expr, title
            assert re.match(r"^(topk\(10, )?(max|min) by \(", expr), title
        elif "dbwatch_" in expr and "slo" not in expr:
            assert 'instance=~".*"' in expr, title
    assert checked >= 7


def test_dashboard_has_login_latency_and_error_budget_rows() -> None:
    """Login probe, access-log latency by route and SLO burn-rate panels, in their own rows (issue 5)."""
    dash = json.loads((REPO / "dashboards" / "dbwatch-overview.json").read_text())
    rows: dict[str, list[str]] = {}
    current = ""
    for panel in dash["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        else:
            rows[current].extend(t["expr"] for t in panel["targets"])
    login = next(exprs for title, exprs in rows.items() if title.startswith("Login latency"))
    budget = next(exprs for title, exprs in rows.items() if title.startswith("Error budget"))
    assert any("dbwatch_probe_up" in e and 'kind="http_login"' in e for e in login)
    assert any("dbwatch_probe_duration_seconds_bucket" in e and 'kind="http_login"' in e for e in login)
    assert any("dbwatch_http_request_duration_seconds_bucket" in e and "route, le" in e for e in login)
    assert all('target=~"$target"' in e for e in login if "dbwatch_probe" in e)
    assert {w for e in budget for w in ("5m", "1h", "6h", "3d") if f"dbwatch:slo_errors:ratio_rate{w})" in e} == {
        "5m",
        "1h",
        "6h",
        "3d",
    }
    assert any("dbwatch:slo_error_budget:remaining_ratio" in e for e in budget)


async def test_prometheus_scrapes_dbwatch_and_dashboard_queries_are_valid(pg: PG) -> None:
    """Prometheus scrapes a live dbwatch; every panel query parses, and the probe panels return data."""
    port = free_port()
    target = {"name": "main", "dsn": pg.dsn, "interval": 0.5, "timeout": 0.4}
    async with running({"listen": f"127.0.0.1:{port}", "targets": [target]}):
        prom = Prometheus([f"127.0.0.1:{port}"])
        try:
            await eventually(prom.targets_up, timeout=30)
            await eventually(lambda: prom.query("dbwatch_probe_up")["data"]["result"], timeout=15)
            # two rate() windows of samples
            await eventually(
                lambda: prom.query("increase(dbwatch_probe_duration_seconds_count[15s]) > 0")["data"]["result"],
                timeout=30,
            )
            for path in DASHBOARDS:
                for title, expr in dashboard_queries(path):
                    res = prom.query(expr)
                    assert res["status"] == "success", (title, expr, res.get("error"))
                    # Only a postgres target here; tests/e2e/test_alerting.py has data for every panel, login ones too.
                    if "dbwatch_probe" in expr and "http_login" not in expr:
                        assert res["data"]["result"], (title, expr)
        finally:
            prom.close()
