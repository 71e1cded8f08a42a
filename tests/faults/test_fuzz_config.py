"""Property tests on the config loaders (dbwatch config, web config, DSNs): whatever comes in, the only error that
escapes is ConfigError/DSNError, it never carries the password, and repeated loads do not grow memory.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbwatch import webconfig
from dbwatch.config import ConfigError, from_mapping, load
from tests.helpers import SENTINEL, SENTINEL_FORMS

ENC = urllib.parse.quote(SENTINEL, safe="")
GOOD = {
    "listen": "127.0.0.1:9839",
    "log": {"level": "info", "format": "json"},
    "defaults": {"interval": "15s", "timeout": "5s"},
    "targets": [
        {"name": "a", "dsn": f"postgresql+asyncpg://app:{ENC}@127.0.0.1:5432/appdb", "interval": 10, "timeout": 3},
        {"name": "b", "dsn": f"host=127.0.0.1 user=app password='{SENTINEL}' dbname=x", "critical": False},
    ],
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "0", "-1", "5s", "500ms", "1e308s", "${UNSET_DBW_VAR}", "${X:-y}", "::", "[::1]:0", SENTINEL]),
)
yamlish = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=5)
    ),
    max_leaves=30,
)
keys = st.sampled_from(
    [*GOOD, "targets", "name", "dsn", "dsn_env", "dsn_file", "interval", "timeout", "critical", "stale_after", "kind"]
)


def _no_secret(exc: BaseException) -> None:
    text = str(exc)
    assert not any(f in text for f in SENTINEL_FORMS), text


def _mutate(base: Any, path: list[Any], value: Any) -> Any:
    """Replace (or add) the value at a path of keys/indices; an invalid step stops there."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(base, dict):
        out = dict(base)
        key = head if isinstance(head, str) else (sorted(out)[head % len(out)] if out else "x")
        out[key] = _mutate(out.get(key), rest, value)
        return out
    if isinstance(base, list) and base:
        out_l = list(base)
        i = head % len(out_l) if isinstance(head, int) else 0
        out_l[i] = _mutate(out_l[i], rest, value)
        return out_l
    return value


@FUZZ
@given(yamlish)
def test_arbitrary_documents_only_raise_config_error(doc: Any) -> None:
    try:
        from_mapping(doc)
    except ConfigError as exc:
        _no_secret(exc)


@FUZZ
@given(st.lists(st.one_of(keys, st.integers(0, 5)), max_size=4), yamlish)
def test_mutated_good_config_only_raises_config_error(path: list[Any], value: Any) -> None:
    """A valid config with one value replaced anywhere: valid or a ConfigError, never the password in it."""
    try:
        from_mapping(_mutate(GOOD, path, value))
    except ConfigError as exc:
        _no_secret(exc)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_yaml_text_only_raises_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    p.write_text(f"targets:\n  - name: a\n    dsn: 'postgresql://app:{ENC}@h/d'\n" + text, encoding="utf-8")
    try:
        load(p)
    except ConfigError as exc:
        _no_secret(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_config_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    p = tmp_path_factory.getbasetemp() / "fuzz.bin"
    p.write_bytes(data)
    for loader in (load, webconfig.load):
        try:
            loader(p)
        except ConfigError as exc:
            _no_secret(exc)


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path, depth: int) -> None:
    """Nesting that overflows the YAML parser's recursion is a clean ConfigError, not a crash."""
    p = tmp_path / "deep.yaml"
    p.write_text("targets: " + "[" * depth + "]" * depth + "\n")
    for loader in (load, webconfig.load):
        with pytest.raises(ConfigError):
            loader(p)


@FUZZ
@given(yamlish)
def test_arbitrary_web_configs_only_raise_config_error(doc: Any) -> None:
    for candidate in (doc, {"tls_server_config": doc}, {"basic_auth_users": doc}, {"http_server_config": doc}):
        try:
            webconfig.from_mapping(candidate)
        except ConfigError as exc:
            _no_secret(exc)


def test_repeated_loads_do_not_grow_memory(tmp_path: Path) -> None:
    """Loading a config 2,000 times leaves traced memory where 200 loads left it (no cache, no leak)."""
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(GOOD))

    def loads(n: int) -> None:
        for _ in range(n):
            load(p)
            with contextlib.suppress(ConfigError):
                from_mapping({**GOOD, "bogus": 1})

    tracemalloc.start()
    try:
        loads(200)
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        loads(2000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - first < 256 * 1024, f"grew by {after - first} bytes"
