"""The alerting kit: generated SLO rules up to date and valid, promtool tests for every alert, amtool, runbooks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbwatch import rules
from dbwatch.config import ConfigError, from_mapping
from tests.helpers import REPO, run_cli

CONFIG = REPO / "config"
EXAMPLE = "config/dbwatch.example.yaml"
RULE_FILES = [CONFIG / "dbwatch.rules.yml", CONFIG / rules.RULES_FILE]
TEST_FILES = sorted((CONFIG / "tests").glob("*.test.yml"))
ENV = {
    "DATABASE_URL": "postgresql://app@127.0.0.1:5432/app",
    "DBWATCH_MONITOR_URL": "postgresql://dbwatch@127.0.0.1/app",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is installed by scripts/setup (Debian packages prometheus, prometheus-alertmanager)"
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, cwd=REPO)
    print(proc.stdout, proc.stderr)
    return proc


def alerts(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_shipped_slo_rules_are_the_output_for_the_example_config() -> None:
    """`dbwatch rules --check` finds config/ up to date (regenerate with the command in the message)."""
    proc = run_cli("rules", "--config", EXAMPLE, "--out", "config", "--check", env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = run_cli("rules", "--config", EXAMPLE, env=ENV)
    assert printed.stdout == (CONFIG / rules.RULES_FILE).read_text()


def test_rules_check_reports_stale_files(tmp_path: Path) -> None:
    proc = run_cli("rules", "--config", EXAMPLE, "--out", str(tmp_path), "--check", env=ENV)
    assert proc.returncode == 1
    assert "out of date" in proc.stderr
    assert run_cli("rules", "--config", EXAMPLE, "--out", str(tmp_path), env=ENV).returncode == 0
    assert run_cli("rules", "--config", EXAMPLE, "--out", str(tmp_path), "--check", env=ENV).returncode == 0
    prom_rule = yaml.safe_load((tmp_path / rules.PROMETHEUSRULE_FILE).read_text())
    assert prom_rule["kind"] == "PrometheusRule"
    assert prom_rule["spec"]["groups"] == yaml.safe_load((tmp_path / rules.RULES_FILE).read_text())["groups"]


def test_promtool_check_rules_is_clean() -> None:
    proc = run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass() -> None:
    proc = run(tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
            for t in case.get("promql_expr_test", []):
                if t["expr"].startswith("ALERTS"):
                    names = set(re.findall(r'alertname="(\w+)"', str(t.get("exp_samples"))))
                    fires.update(names)
                    if not t.get("exp_samples"):
                        silent.update(re.findall(r'alertname="(\w+)"', t["expr"]) or [rules.ALERT])
    names = {a["alert"] for f in RULE_FILES for a in alerts(f)}
    assert names - fires == set()
    assert names - silent == set()


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    readme = (REPO / "README.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    for f in RULE_FILES:
        for a in alerts(f):
            assert a["labels"]["severity"] in ("page", "ticket"), a["alert"]
            ann = a["annotations"]
            assert ann["summary"], a["alert"]
            assert ann["description"], a["alert"]
            assert ann["runbook_url"] == f"{rules.DEFAULT_RUNBOOK_URL}#{a['alert'].lower()}", a["alert"]
            assert "runbook" not in ann, a["alert"]
            assert a["alert"].lower() in anchors, f"README has no runbook section '### {a['alert']}'"
    hand = {a["alert"]: a for a in alerts(CONFIG / "dbwatch.rules.yml")}
    assert "$labels.location" in hand["DbwatchAsyncORMError"]["annotations"]["summary"]
    for name in (
        "DbwatchProbeDown",
        "DbwatchConnectionSaturation",
        "DbwatchIdleInTransaction",
        "DbwatchBlockedSessions",
    ):
        assert "$labels.target" in hand[name]["annotations"]["description"]
    # App-side alerts have no database target: they name the app (log source or hook app) and its dbwatch instance.
    assert "$labels.location" in hand["DbwatchAsyncORMError"]["annotations"]["description"]
    for name in (
        "DbwatchAsyncORMError",
        "DbwatchPoolCheckoutTimeouts",
        "DbwatchUnfitPoolClass",
        "DbwatchSessionExpireOnCommit",
    ):
        assert "$labels.instance" in hand[name]["annotations"]["description"], name
    for a in alerts(CONFIG / rules.RULES_FILE):
        assert f"Target: {a['labels']['target']}." in a["annotations"]["description"]
    # The probe alert says why: the reason and the login probe's HTTP status, read into annotations, not labels.
    probe = hand["DbwatchProbeDown"]
    assert 'label "reason"' in probe["annotations"]["summary"]
    assert "dbwatch_probe_http_status" in probe["annotations"]["summary"]
    assert set(probe["labels"]) == {"severity"}


def test_runbook_url_is_set_by_flag_for_generated_and_included_rules(tmp_path: Path) -> None:
    """`--runbook-url` rewrites every alert's runbook_url, generated or --include'd; a relative URL is refused."""
    base = "https://wiki.example.com/ops/dbwatch"
    proc = run_cli(
        "rules", "--config", EXAMPLE, "--out", str(tmp_path), "--runbook-url", base,
        "--include", "config/dbwatch.rules.yml", env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = [a for f in (tmp_path / rules.RULES_FILE, tmp_path / "dbwatch.rules.yml") for a in alerts(f)]
    assert len(written) == sum(len(alerts(f)) for f in RULE_FILES)
    assert all(a["annotations"]["runbook_url"] == f"{base}#{a['alert'].lower()}" for a in written)
    assert f"--runbook-url {base}" in (tmp_path / rules.RULES_FILE).read_text().splitlines()[0]
    for bad in ("README.md", "https://x.example/a#b", "ftp://x.example/"):
        refused = run_cli("rules", "--config", EXAMPLE, "--runbook-url", bad, env=ENV)
        assert refused.returncode == 2
        assert "--runbook-url: expected an absolute http(s) URL" in refused.stderr


# Alerts that name a cause: an inhibition must never mute them, whatever fires.
CAUSES = {a["alert"] for a in alerts(CONFIG / "dbwatch.rules.yml")}


def test_inhibitions_never_mute_a_cause_nor_a_page() -> None:
    """Every inhibition's target is a ticket-severity SLO alert: a cause alert is never muted, and no page is held
    back to be sent when the inhibition lifts (after the fix)."""
    am = yaml.safe_load((CONFIG / "alertmanager.example.yml").read_text())
    generated = {a["alert"] for a in alerts(CONFIG / rules.RULES_FILE)}
    for rule in am.get("inhibit_rules", []):
        target = {}
        for matcher in rule["target_matchers"]:
            found = re.match(r'^(\w+)(=~?)"(.*)"$', matcher)
            assert found is not None, matcher
            target[found.group(1)] = found.group(3)
        assert target.get("severity") == "ticket", rule
        muted = {n for n in CAUSES | generated if re.fullmatch(target["alertname"], n)}
        assert muted, rule
        assert not muted & CAUSES, rule
        assert muted <= generated


def _raw_example() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((CONFIG / "dbwatch.example.yaml").read_text())
    del raw["targets"][0]["dsn_env"]
    raw["targets"][0] |= {"dsn": "postgresql://app@127.0.0.1/app", "collect": {"dsn": "postgresql://m@127.0.0.1/app"}}
    raw["logs"]["state_dir"] = "/tmp"
    return raw


def test_example_slos_read_a_source_with_access() -> None:
    """The shipped example's SLOs read log source `app`, which has `access:`: they can fire as shipped."""
    config = from_mapping(_raw_example())
    sources = {s.name: s for s in config.logs.sources}
    assert config.slos
    for slo in config.slos:
        assert slo.source == "probe" or sources[slo.log_source or ""].access is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["slos"][1].update(source="acess"), "slos[1].source: no log source named 'acess'"),
        (
            lambda r: r["logs"]["sources"][0].pop("access"),
            "slos[0].source: log source 'app' has no access: mapping (logs.sources[0].access)",
        ),
        (
            lambda r: ([s.pop("source") for s in r["slos"]], r["logs"]["sources"][0].pop("access")),
            "slos[0].from: access reads request latency, but no logs.sources[] has an access: mapping",
        ),
    ],
)
def test_an_slo_that_can_never_fire_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    """A missing source, or one without `access:`, is a config error naming the key path, exit 2 in both commands."""
    raw = _raw_example()
    change(raw)
    with pytest.raises(ConfigError) as e:
        from_mapping(raw)
    assert message in str(e.value)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    for argv in (["check-config", str(cfg)], ["rules", "--config", str(cfg)]):
        proc = run_cli(*argv)
        assert proc.returncode == 2, argv
        assert message in proc.stderr


def test_with_the_hook_an_unknown_source_is_taken_as_an_app_name() -> None:
    """The hook's middleware feeds the family with `source` = the app's name, which the config cannot know."""
    raw = _raw_example()
    raw["slos"][0]["source"] = "myapp"
    raw["hook"] = {"listen": "127.0.0.1:0"}
    assert from_mapping(raw).slos[0].log_source == "myapp"


def test_check_config_prints_the_slos() -> None:
    proc = run_cli("check-config", EXAMPLE, env=ENV)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout.removesuffix("config ok\n"))
    assert [s["name"] for s in printed["slos"]] == ["login-availability", "login-latency"]
    assert printed["slos"][0] | {"windows": []} == {
        "name": "login-availability", "sli": "availability", "from": "access", "source": "app",
        "route": "/api/login", "method": "POST", "objective": 0.995, "target": "primary", "period": 2592000.0,
        "min_events": 30, "windows": [], "description": "Users cannot log in.",
    }  # fmt: skip


def test_traffic_stopped_alert_once_per_access_path() -> None:
    """The example's two SLOs read one path: one DbwatchSLOTrafficStopped, in the first SLO's group; none for probes."""
    stopped = [a for a in alerts(CONFIG / rules.RULES_FILE) if a["alert"] == rules.NO_TRAFFIC_ALERT]
    assert [a["labels"] for a in stopped] == [{"severity": "page", "slo": "login-availability", "target": "primary"}]
    probe = from_mapping(
        {
            "targets": [{"name": "login", "kind": "http_login", "url": "http://127.0.0.1:1/"}],
            "slos": [{"name": "p", "sli": "availability", "from": "probe", "target": "login", "objective": 99}],
        }
    )
    assert not [r for g in rules.slo_groups(probe) for r in g["rules"] if r.get("alert") == rules.NO_TRAFFIC_ALERT]


def test_amtool_check_config_is_clean() -> None:
    proc = run(tool("amtool"), "check-config", str(CONFIG / "alertmanager.example.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def slo_config(**slo: Any) -> dict[str, Any]:
    return {
        "targets": [{"name": "primary", "dsn": "postgresql://h/d"}],
        "slos": [{"name": "login", "sli": "latency", "from": "access", "objective": 99, "threshold": "500ms", **slo}],
        "logs": {
            "state_dir": "/tmp",
            "sources": [{"name": "access", "path": "/nonexistent/access.log", "access": {"format": "json"}}],
        },
    }


def test_threshold_must_be_a_bucket_boundary(tmp_path: Path) -> None:
    """0.4 s lies between the 0.3 and 0.5 buckets: refused with the boundaries listed, exit 2."""
    with pytest.raises(ConfigError, match=r"slos\[0\]\.threshold: 0.4s is not a bucket boundary of "):
        from_mapping(slo_config(threshold="400ms"))
    with pytest.raises(ConfigError, match=r"slos\[0\]\.threshold: 0.3s is not a bucket boundary of .*probe"):
        from_mapping(
            {
                "targets": [{"name": "login", "kind": "http_login", "url": "http://127.0.0.1:1/"}],
                "slos": [
                    {
                        "name": "p",
                        "sli": "latency",
                        "from": "probe",
                        "target": "login",
                        "objective": 99,
                        "threshold": "300ms",
                    }
                ],
            }
        )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(slo_config(threshold="400ms")))
    proc = run_cli("rules", "--config", str(cfg))
    assert proc.returncode == 2
    assert "is not a bucket boundary" in proc.stderr


@pytest.mark.parametrize(
    ("slo", "message"),
    [
        ({"objective": 100}, "slos[0].objective: expected a percentage"),
        ({"objective": "abc"}, "slos[0].objective: expected a percentage"),
        ({"threshold": None}, "slos[0].threshold: missing"),
        ({"sli": "availability"}, "slos[0].threshold: only for sli: latency"),
        ({"from": "probe"}, "slos[0].route: only for from: access"),
        ({"target": "nope"}, "slos[0].target: no target named 'nope'"),
        ({"windows": [{"long": "5m", "short": "1h", "burn_rate": 14.4, "severity": "page"}]}, "short: must be shorter"),
        ({"windows": [{"long": "60d", "short": "1h", "burn_rate": 1, "severity": "page"}]}, "longer than the period"),
        ({"windows": [{"long": "1h", "short": "5m", "burn_rate": 2, "severity": "sms"}]}, "severity: must be one of"),
        ({"min_events": -1}, "slos[0].min_events: must be >= 0"),
        ({"name": "Login SLO"}, "slos[0].name: use 1-63 lower-case"),
    ],
)
def test_bad_slo_config(slo: dict[str, Any], message: str) -> None:
    raw = slo_config(route="/api/login", **slo)
    if slo.get("from") == "probe":
        raw["slos"][0].pop("threshold")
        raw["slos"][0]["sli"] = "availability"
    with pytest.raises(ConfigError) as e:
        from_mapping(raw)
    assert message in str(e.value)


def test_rules_without_slos_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets: []\n")
    proc = run_cli("rules", "--config", str(cfg))
    assert proc.returncode == 2
    assert "no slos:" in proc.stderr


def test_generated_rules_have_window_labels_guard_and_no_nan() -> None:
    config = from_mapping(slo_config(route="/api/login", min_events=12))
    (group,) = rules.slo_groups(config)
    recs = [r for r in group["rules"] if "record" in r]
    assert all(r["expr"].rstrip().endswith("or on() vector(0)") for r in recs if "errors:ratio" in r["record"])
    alerts_ = [r for r in group["rules"] if r.get("alert") == rules.ALERT]
    assert [a["labels"]["window"] for a in alerts_] == ["1h/5m", "6h/30m", "1d/2h", "3d/6h"]
    assert [a["labels"]["severity"] for a in alerts_] == ["page", "page", "ticket", "ticket"]
    assert all(">= 12" in a["expr"] for a in alerts_)
    assert 'le="0.5"' in recs[0]["expr"]
    assert rules.prom_duration(259200) == "3d"
    assert rules.prom_duration(0.5) == "500ms"


def test_rules_help() -> None:
    proc = run_cli("rules", "--help")
    assert proc.returncode == 0
    assert "--out" in proc.stdout
    assert "PrometheusRule" in proc.stdout
    assert os.path.exists(CONFIG / rules.PROMETHEUSRULE_FILE)


def test_max_for_and_include_write_a_fast_copy_for_tests(tmp_path: Path) -> None:
    """`--max-for 1s --include config/dbwatch.rules.yml`: every `for:` at most 1s, promtool-clean, shipped untouched."""
    shipped = {p: p.read_text() for p in RULE_FILES}
    proc = run_cli(
        "rules", "--config", EXAMPLE, "--out", str(tmp_path), "--max-for", "1s",
        "--include", "config/dbwatch.rules.yml", env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = [tmp_path / rules.RULES_FILE, tmp_path / "dbwatch.rules.yml"]
    fors = [a.get("for") for f in written for a in alerts(f)]
    assert {f for f in fors if f} == {"1s"}
    assert len(alerts(tmp_path / "dbwatch.rules.yml")) == len(alerts(CONFIG / "dbwatch.rules.yml"))
    no_for = {a["alert"] for a in alerts(CONFIG / "dbwatch.rules.yml") if "for" not in a}
    assert no_for == {a["alert"] for a in alerts(tmp_path / "dbwatch.rules.yml") if "for" not in a}
    assert "--max-for 1s" in (tmp_path / rules.RULES_FILE).read_text().splitlines()[0]
    check = run(tool("promtool"), "check", "rules", *map(str, written))
    assert check.returncode == 0, check.stdout + check.stderr
    assert {p: p.read_text() for p in RULE_FILES} == shipped
    # The shipped generated files are not what --max-for writes.
    assert run_cli("rules", "--config", EXAMPLE, "--out", str(tmp_path), "--check", env=ENV).returncode == 1


def test_cap_for_reads_compound_durations() -> None:
    groups = [{"name": "g", "rules": [{"alert": "A", "expr": "1", "for": "1h30m"}, {"alert": "B", "expr": "1"}]}]
    assert rules.cap_for(groups, 2) == [
        {"name": "g", "rules": [{"alert": "A", "expr": "1", "for": "2s"}, {"alert": "B", "expr": "1"}]}
    ]
    assert rules.cap_for(groups, 86400)[0]["rules"][0]["for"] == "1h30m"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-for", "soon"], "--max-for: expected a duration"),
        (["--max-for", "0s"], "--max-for: must be > 0"),
        (["--include", "config/dbwatch.rules.yml"], "--include needs --out DIR"),
        (["--out", "{tmp}", "--include", "config/nope.yml"], "--include config/nope.yml: cannot read"),
        (["--out", "{tmp}", "--include", "config/dbwatch.example.yaml"], "not a Prometheus rule file"),
    ],
)
def test_bad_max_for_or_include_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_cli("rules", "--config", EXAMPLE, *(a.format(tmp=tmp_path) for a in args), env=ENV)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_log_source_target_names_a_target_and_is_exposed(tmp_path: Path) -> None:
    """`logs.sources[].target` must name a target; dbwatch_log_source_info carries it for DbwatchAsyncORMError."""
    from dbwatch import metrics as m
    from dbwatch.app import build
    from dbwatch.store import Store

    raw: dict[str, Any] = {
        "targets": [{"name": "primary", "dsn": "postgresql://h/d"}],
        "logs": {
            "state_dir": str(tmp_path),
            "sources": [
                {"name": "app", "path": str(tmp_path / "a.log"), "target": "primary"},
                {"name": "other", "path": str(tmp_path / "b.log")},
            ],
        },
    }
    store = Store()
    build(from_mapping(raw), store)
    assert store.gauge_value(m.LOG_SOURCE_INFO, ("app", "primary")) == 1
    assert store.gauge_value(m.LOG_SOURCE_INFO, ("other", "")) == 1
    raw["logs"]["sources"][1]["target"] = "nope"
    with pytest.raises(ConfigError, match=r"^logs\.sources\[1\]\.target: no target named 'nope'"):
        from_mapping(raw)
