"""Series budgets (issue 15): what one sidecar exposes for two typical deployments, counted on a real /metrics.

Quick start: the shipped example config (one database, one log source) <= 300 series.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PG
from tests.helpers import REPO, eventually, running, sample

QUICK_START_BUDGET = 300
FULL_BUDGET = 1000
ROUTES = 40


def series_by_family(body: str) -> Counter[str]:
    """Samples per family in an exposition."""
    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(body):
        out[fam.name] += len(fam.samples)
    return out


def _traceback_record() -> str:
    try:
        {}["missing"]
    except KeyError:
        return "2026-12-04 10:00:00,000 ERROR [app] request failed\n" + traceback.format_exc()
    raise AssertionError


def _report(name: str, counts: Counter[str]) -> None:
    lines = [f"{name}: {sum(counts.values())} series"] + [f"  {n:6} {f}" for f, n in counts.most_common()]
    print("\n".join(lines))


async def test_quick_start_config_stays_within_300_series(pg: PG, tmp_path: Path, monkeypatch: Any) -> None:
    """config/dbwatch.example.yaml as shipped (its database and `app` log source with a logged traceback)."""
    raw = yaml.safe_load((REPO / "config" / "dbwatch.example.yaml").read_text())
    monkeypatch.setenv("DATABASE_URL", pg.dsn)
    monkeypatch.setenv("DBWATCH_MONITOR_URL", pg.dsn)
    monkeypatch.setenv("DBWATCH_STATE_DIR", str(tmp_path))
    log = tmp_path / "app.log"
    log.write_text(_traceback_record())
    raw["logs"]["sources"][0]["path"] = str(log)
    raw["logs"]["start_at"] = "beginning"
    raw["targets"][0] |= {"interval": 0.5, "timeout": 0.4}
    del raw["listen"]
    async with running(raw) as d:

        async def ready() -> str | None:
            body = await d.metrics()
            ok = sample(body, "dbwatch_pg_connections_used_ratio", {"target": "primary"}) is not None
            return body if ok and sample(body, "dbwatch_log_lines_total", {"source": "app"}) else None

        body = await eventually(ready, timeout=20)
    counts = series_by_family(body)
    _report("quick start", counts)
    assert sum(counts.values()) <= QUICK_START_BUDGET
