"""The `logs:` config section: defaults, validation errors that name the key path, `check-config` exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbwatch.config import ConfigError, from_mapping
from tests.helpers import run_cli


def test_defaults_and_per_source_settings(tmp_path: Path) -> None:
    cfg = from_mapping(
        {
            "logs": {
                "state_dir": str(tmp_path),
                "app_packages": ["myapp"],
                "max_line_bytes": "2MiB",
                "sources": [
                    {"name": "web", "path": "/var/log/app/*.log"},
                    {"name": "pod", "path": "/var/log/pods/*/app/*.log", "format": "cri", "app_roots": ["/srv"]},
                ],
            }
        }
    )
    logs = cfg.logs
    assert logs.state_dir == str(tmp_path)
    assert logs.max_line_bytes == 2 << 20
    assert [s.format for s in logs.sources] == ["auto", "cri"]
    assert logs.sources[1].app_roots == ("/srv",)
    assert logs.sources[0].access is None


def test_state_dir_defaults_to_the_image_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBWATCH_STATE_DIR", str(tmp_path))
    assert from_mapping({"logs": {"sources": [{"name": "a", "path": "/x"}]}}).logs.state_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("logs", "message"),
    [
        ({"sources": [{"name": "a"}]}, "logs.sources[0].path: missing"),
        ({"sources": [{"path": "/x"}]}, "logs.sources[0].name: missing"),
        ({"sources": [{"name": "a", "path": "/x", "format": "xml"}]}, "logs.sources[0].format: must be one of"),
        ({"sources": [{"name": "a", "path": "/x", "colour": 1}]}, "logs.sources[0].colour: unknown key"),
        ({"sources": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}, "logs.sources[1].name: duplicate"),
        ({"state_dir": "/nonexistent/dir", "sources": []}, "logs.state_dir: /nonexistent/dir is not a writable"),
        ({"max_line_bytes": "lots"}, "logs.max_line_bytes: expected a size"),
        ({"max_locations": 0}, "logs.max_locations: must be >= 1"),
        ({"start_at": "middle"}, "logs.start_at: must be one of"),
        ({"sources": [{"name": "a", "path": "/x", "access": {"format": "apache"}}]}, "logs.sources[0].access.format"),
    ],
)
def test_bad_logs_config_names_the_key(logs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"logs": logs})
    assert str(err.value).startswith(message)


def test_check_config_exits_2_on_a_bad_logs_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("logs:\n  sources:\n    - {name: a, path: /x, format: bogus}\n")
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 2
    assert "logs.sources[0].format" in proc.stderr
