"""`dbwatch config schema`: the JSON Schema accepts the shipped configs, refuses broken ones at the right key, and
the README reference and the committed schema files are generated from it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import pytest
import yaml

from dbwatch import config, reference, webconfig
from dbwatch.collectors import COLLECTORS
from tests.helpers import REPO, run_cli

CONFIGS = [
    REPO / "config" / "dbwatch.example.yaml",
    REPO / "deploy" / "base" / "dbwatch.yaml",
    REPO / "deploy" / "components" / "dbwatch-sidecar" / "dbwatch.yaml",
]
WEB_CONFIGS = [REPO / "deploy" / "components" / "web-tls" / "web.yml"]


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(schema: dict[str, Any], doc: object) -> list[str]:
    """Every schema error, as the key path our loader would name (`targets[0].interval`)."""
    out = []
    for error in _validator(schema).iter_errors(doc):
        e = jsonschema.exceptions.best_match([error])  # into `X | null` (anyOf): the member's own error
        assert e is not None
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
        out.append(path)
    return sorted(out)


def test_cli_prints_the_schemas() -> None:
    """`dbwatch config schema` (and `--web`) print the schemas the committed files hold."""
    for args, path in (
        (("config", "schema"), "dbwatch.schema.json"),
        (("config", "schema", "--web"), "dbwatch-web.schema.json"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == json.loads((REPO / "config" / path).read_text())


@pytest.mark.parametrize("path", CONFIGS + WEB_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_pass_and_point_editors_at_the_schema(path: Path) -> None:
    schema = webconfig.json_schema() if path in WEB_CONFIGS else config.json_schema()
    assert _errors(schema, yaml.safe_load(path.read_text())) == []
    first = path.read_text().splitlines()[0]
    m = re.match(r"# yaml-language-server: \$schema=(\S+)$", first)
    assert m, first
    assert (path.parent / m.group(1)).resolve() == REPO / "config" / (
        "dbwatch-web.schema.json" if path in WEB_CONFIGS else "dbwatch.schema.json"
    )


BROKEN = [
    ({"targets": [{"name": "a", "dsn": "x", "colour": 1}]}, ["targets[0]"]),
    ({"targets": [{"dsn": "x"}]}, ["targets[0]"]),
    ({"targets": [{"name": "a b", "dsn": "x"}]}, ["targets[0].name"]),
    ({"targets": [{"name": "a", "dsn": "x", "interval": "soon"}]}, ["targets[0].interval"]),
    ({"targets": [{"name": "a", "dsn": "x", "kind": "mysql"}]}, ["targets[0].kind"]),
    (
        {"targets": [{"name": "a", "dsn": "x", "collect": {"collectors": ["pg_nope"]}}]},
        ["targets[0].collect.collectors[0]"],
    ),
    ({"log": {"level": "loud"}}, ["log.level"]),
    ({"max_series": 5}, ["max_series"]),
    ({"hook": {"max_routes": 0}}, ["hook.max_routes"]),
    ({"logs": {"max_line_bytes": "lots"}}, ["logs.max_line_bytes"]),
    (
        {"logs": {"sources": [{"name": "a", "path": "/x", "access": {"format": "apache"}}]}},
        ["logs.sources[0].access.format"],
    ),
    (
        {"slos": [{"name": "a", "sli": "availability", "from": "access", "objective": 99, "windows": []}]},
        ["slos[0].windows"],
    ),
    ({"bogus": 1}, [""]),
]


@pytest.mark.parametrize(("doc", "paths"), BROKEN, ids=[str(i) for i in range(len(BROKEN))])
def test_broken_configs_fail_at_the_key(doc: dict[str, Any], paths: list[str]) -> None:
    """The schema refuses each broken config at the key the loader names too (unknown and missing keys at their
    mapping, as JSON Schema reports them)."""
    assert _errors(config.json_schema(), doc) == paths


def test_broken_web_config_fails_at_the_key() -> None:
    schema = webconfig.json_schema()
    assert _errors(schema, {"tls_server_config": {"cert_file": "/c", "key_file": "/k", "min_version": "SSL3"}}) == [
        "tls_server_config.min_version"
    ]
    assert _errors(schema, {"basic_auth_users": {"u": "plaintext"}}) == ["basic_auth_users.u"]


def test_readme_reference_is_current() -> None:
    """README's config reference is what `dbwatch config reference README.md` writes."""
    assert reference.update(REPO / "README.md", config.json_schema(), check=True), (
        "README.md config reference is out of date; run: dbwatch config reference README.md"
    )
    proc = run_cli("config", "reference", "--check", str(REPO / "README.md"))
    assert proc.returncode == 0, proc.stderr


def test_every_key_has_a_description() -> None:
    for name, section in config.json_schema()["$defs"].items():
        for key, prop in section.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{key}"


def test_collector_names_match_the_collector_table() -> None:
    """config spells the collector table's names and kinds, so validating loads no collector."""
    assert {name: cls.kind for name, cls in COLLECTORS.items()} == config.COLLECTOR_KINDS
