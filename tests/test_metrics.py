"""Metric names live in one place: every MetricSpec is used, and no `dbwatch_` name is spelt elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

from dbwatch import metrics

PKG = Path(metrics.__file__).resolve().parent


def _sources() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if p.name != "metrics.py"]


def test_no_metric_name_literal_outside_metrics_py() -> None:
    offenders = []
    for path in _sources():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""["']dbwatch_[a-z_]+""", line):
                offenders.append(f"{path.relative_to(PKG)}:{i}")
    assert offenders == []


def test_every_spec_is_used_by_some_module() -> None:
    text = "\n".join(p.read_text() for p in _sources())
    names = [name for name, v in vars(metrics).items() if isinstance(v, metrics.MetricSpec)]
    unused = [n for n in names if not re.search(rf"\b{n}\b", text)]
    assert unused == []


def test_names_follow_prometheus_conventions() -> None:
    seen = set()
    for spec in metrics.ALL:
        assert re.fullmatch(r"dbwatch_[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.name not in seen
        seen.add(spec.name)
        assert "le" not in spec.labels
        if spec.name.endswith("_seconds") or spec.name.endswith("_bytes"):
            continue
        assert not re.search(r"_(ms|milliseconds|kb|mb)$", spec.name), spec.name
