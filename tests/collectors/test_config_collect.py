"""The `targets[].collect` config section: defaults per kind and errors that name the key path."""

from __future__ import annotations

from typing import Any

import pytest

from dbwatch.config import ConfigError, from_mapping

DSN = "postgresql://app@127.0.0.1:5432/app"


def target(**kw: Any) -> dict[str, Any]:
    return {"name": "t", "dsn": DSN, **kw}


def test_defaults_follow_the_kind_and_the_probe_schedule() -> None:
    pg = from_mapping({"targets": [target(interval="10s", timeout="3s")]}).targets[0]
    assert pg.collect.collectors == ("pg_activity", "pg_database")
    assert (pg.collect.interval, pg.collect.budget, pg.collect.max_label_values) == (10.0, 3.0, 20)
    bouncer = from_mapping({"targets": [target(kind="pgbouncer")]}).targets[0]
    assert bouncer.collect.collectors == ("pgbouncer",)
    off = from_mapping({"targets": [target(collect={"collectors": []})]}).targets[0]
    assert off.collect.collectors == ()


@pytest.mark.parametrize(
    ("collect", "message"),
    [
        (
            {"collectors": ["pg_nope"]},
            "targets[0].collect.collectors[0]: must be one of pg_activity, pg_database, pgbouncer",
        ),
        ({"collectors": ["pgbouncer"]}, "targets[0].collect.collectors[0]: pgbouncer reads a pgbouncer target"),
        ({"collectors": ["pg_activity", "pg_activity"]}, "targets[0].collect.collectors: a collector is listed twice"),
        ({"interval": "5s", "budget": "6s"}, "targets[0].collect.budget: must not exceed"),
        ({"max_label_values": 0}, "targets[0].collect.max_label_values: must be >= 1"),
        ({"max_label_values": "many"}, "targets[0].collect.max_label_values: expected a whole number"),
        ({"budgit": "1s"}, "targets[0].collect.budgit: unknown key"),
        ({"collectors": "pg_activity"}, "targets[0].collect.collectors: expected a list"),
    ],
)
def test_bad_collect_config_names_the_key(collect: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"targets": [target(collect=collect)]})
    assert str(err.value).startswith(message)
