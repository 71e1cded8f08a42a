"""SLO rules generated from the config's `slos:`: recording rules for error ratios, multi-window burn-rate alerts.

What users of sloth and pyrra ask for, built in: the error ratio is 0 (never NaN) at zero traffic, a long window
with fewer than `min_events` requests never alerts, every alert says which window pair fired (`window="1h/5m"`),
and an access-log path whose traffic stops altogether pages (`DbwatchSLOTrafficStopped`), which no error ratio can
show. A latency threshold must be a bucket boundary of the histogram read (config validation refuses any other).
Every alert, generated or `--include`d, gets an absolute `runbook_url` (`--runbook-url`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import yaml

from dbwatch import metrics as m
from dbwatch.config import SLO, Config, ConfigError, Target, Window

__all__ = [
    "ALERT",
    "DEFAULT_RUNBOOK_URL",
    "NO_TRAFFIC_ALERT",
    "PROMETHEUSRULE_FILE",
    "RULES_FILE",
    "cap_for",
    "included",
    "prom_duration",
    "prometheus_rule",
    "render",
    "runbook_base",
    "slo_groups",
    "with_runbooks",
    "write",
]

ALERT: Final = "DbwatchSLOErrorBudgetBurn"
NO_TRAFFIC_ALERT: Final = "DbwatchSLOTrafficStopped"
# Where the runbook sections live (README.md's "#### <AlertName>" headings); `dbwatch rules --runbook-url` changes it.
DEFAULT_RUNBOOK_URL: Final = "https://github.com/dbwatch/dbwatch/blob/main/README.md"
# DbwatchSLOTrafficStopped: no request for this long, where the hour before predicts at least EXPECTED of them.
# For Poisson traffic a false page then has odds of e^-20 (2e-9) per evaluation.
NO_TRAFFIC_WINDOW: Final = 600.0
NO_TRAFFIC_EXPECTED: Final = 20
RULES_FILE: Final = "dbwatch-slo.rules.yml"
PROMETHEUSRULE_FILE: Final = "dbwatch-slo.prometheusrule.yaml"
RULE_PREFIX: Final = "dbwatch:slo_"
# The phase whose count is the number of successful probes, per probe kind.
_SUCCESS_PHASE: Final = {"http_login": "total", "postgres": "query"}


def prom_duration(seconds: float) -> str:
    """A Prometheus duration (`30d`, `6h`, `5m`, `30s`, `500ms`) for a number of seconds."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _num(x: float) -> str:
    return repr(round(x, 10)).removesuffix(".0") if float(x).is_integer() else repr(round(x, 10))


def _selector(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ", ".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _le(bound: float) -> str:
    """The `le` label exactly as dbwatch's exposition writes it (see store.py)."""
    return repr(float(bound))


def runbook_base(url: str) -> str:
    """A `--runbook-url` checked: absolute http(s), no fragment (the alert's anchor is appended)."""
    if not re.match(r"^https?://[^\s/#]+[^\s#]*$", url):
        raise ConfigError(f"--runbook-url: expected an absolute http(s) URL without a #fragment, got {url!r}")
    return url


def _runbook(alert: str, base: str) -> str:
    return f"{base}#{alert.lower()}"


def with_runbooks(groups: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """The groups with every alert's `runbook_url` set to BASE#<alertname in lower case>."""

    def one(rule: dict[str, Any]) -> dict[str, Any]:
        if "alert" not in rule:
            return rule
        annotations = {k: v for k, v in rule.get("annotations", {}).items() if k != "runbook_url"}
        return {**rule, "annotations": {**annotations, "runbook_url": _runbook(rule["alert"], base)}}

    return [{**g, "rules": [one(r) for r in g["rules"]]} for g in groups]


class _SLI:
    """The PromQL of one SLO's events: total and bad per window, as label-less sums."""

    def __init__(self, slo: SLO, targets: dict[str, Target]) -> None:
        self.slo = slo
        if slo.source == "access":
            pairs = [("source", slo.log_source), ("route", slo.route), ("method", slo.method)]
            self._sel = [(k, v) for k, v in pairs if v is not None]
            self._hist = m.HTTP_REQUEST_DURATION.name
        else:
            assert slo.target is not None  # config validation guarantees it
            kind = targets[slo.target].kind
            if slo.sli == "latency" and kind != "http_login":
                raise ValueError(f"SLO {slo.name}: a probe latency SLO needs an http_login target")
            self._sel = [("target", slo.target)]
            self._hist = m.PROBE_DURATION.name
            self._phase = _SUCCESS_PHASE[kind]

    def _sum(self, fn: str, series: str, extra: Iterable[tuple[str, str]], w: str, offset: str = "") -> str:
        shift = f" offset {offset}" if offset else ""
        return f"sum({fn}({series}{_selector([*self._sel, *extra])}[{w}]{shift}))"

    def total(self, w: str, fn: str = "rate", offset: str = "") -> str:
        if self.slo.source == "access":
            return self._sum(fn, m.HTTP_REQUESTS.name + "_total", (), w, offset)
        ok = self._sum(fn, self._hist + "_count", [("phase", self._phase)], w, offset)
        failed = self._sum(fn, m.PROBE_FAILURES.name + "_total", (), w, offset)
        return f"(({ok} or on() vector(0)) + ({failed} or on() vector(0)))"

    def bad(self, w: str) -> str:
        slo = self.slo
        if slo.sli == "latency":
            assert slo.threshold is not None
            if slo.source == "access":
                good = self._sum("rate", self._hist + "_bucket", [("le", _le(slo.threshold))], w)
            else:
                good = self._sum("rate", self._hist + "_bucket", [("phase", "total"), ("le", _le(slo.threshold))], w)
            return f"({self.total(w)} - ({good} or on() vector(0)))"
        if slo.source == "access":
            return self._sum("rate", m.HTTP_REQUESTS.name + "_total", [("status_class", "5xx")], w)
        return self._sum("rate", m.PROBE_FAILURES.name + "_total", (), w)


def _ratio_record(w: float) -> str:
    return f"{RULE_PREFIX}errors:ratio_rate{prom_duration(w)}"


def _requests_record(w: float) -> str:
    return f"{RULE_PREFIX}requests:increase{prom_duration(w)}"


def _what(slo: SLO) -> str:
    if slo.source == "probe":
        return f"login probe {slo.target}"
    parts = [f"{slo.method or 'any method'} {slo.route or 'any route'}"]
    parts.append(f"from access log {slo.log_source}" if slo.log_source else "from all access logs")
    return " ".join(parts)


def _objective_text(slo: SLO) -> str:
    pct = f"{slo.objective * 100:.10g}%"
    if slo.sli == "latency":
        assert slo.threshold is not None
        return f"{pct} of requests under {prom_duration(slo.threshold)}"
    return f"{pct} of requests succeed"


def _alert(slo: SLO, w: Window) -> dict[str, Any]:
    limit = _num(w.burn_rate * (1 - slo.objective))
    sel = _selector([("slo", slo.name)])
    pair = f"{prom_duration(w.long)}/{prom_duration(w.short)}"
    expr = (
        f"{_ratio_record(w.long)}{sel} > {limit}\n"
        f"and on(slo) {_ratio_record(w.short)}{sel} > {limit}\n"
        f"and on(slo) {_requests_record(w.long)}{sel} >= {slo.min_events}\n"
    )
    labels = {"severity": w.severity, "slo": slo.name, "window": pair, "burn_rate": _num(w.burn_rate)}
    if slo.target:
        labels["target"] = slo.target
    rule: dict[str, Any] = {"alert": ALERT, "expr": expr}
    if w.for_:
        rule["for"] = prom_duration(w.for_)
    rule["labels"] = labels
    rule["annotations"] = {
        "summary": f"SLO {slo.name} ({_what(slo)}): error budget burning {_num(w.burn_rate)}x too fast over {pair}",
        "description": (
            f"{slo.description + ' ' if slo.description else ''}"
            f"{f'Target: {slo.target}. ' if slo.target else ''}Objective: {_objective_text(slo)} over "
            f"{prom_duration(slo.period)}. The error ratio over {prom_duration(w.long)} is "
            "{{ $value | humanizePercentage }} and over "
            f"{prom_duration(w.short)} also above {_num(w.burn_rate)}x the budget ({limit}); at this rate the "
            f"{prom_duration(slo.period)} budget lasts {prom_duration(slo.period / w.burn_rate)}."
        ),
    }
    return rule


def _no_traffic_alert(slo: SLO, sli: _SLI) -> dict[str, Any]:
    """Page when an access-log path that had traffic gets none: zero requests give an error ratio of 0, never a burn."""
    quiet = prom_duration(NO_TRAFFIC_WINDOW)
    before = NO_TRAFFIC_EXPECTED * round(3600 / NO_TRAFFIC_WINDOW)
    expr = (
        f"({sli.total(quiet, 'increase')} or on() vector(0)) == 0\n"
        f"and on() {sli.total('1h', 'increase', offset=quiet)} >= {before}\n"
    )
    return {
        "alert": NO_TRAFFIC_ALERT,
        "expr": expr,
        "labels": {"severity": "page", "slo": slo.name, **({"target": slo.target} if slo.target else {})},
        "annotations": {
            "summary": f"SLO {slo.name} ({_what(slo)}): no requests for {quiet}",
            "description": (
                f"{slo.description + ' ' if slo.description else ''}"
                f"{f'Target: {slo.target}. ' if slo.target else ''}No request to {_what(slo)} was counted for "
                f"{quiet}, after at least {before} in the hour before: the path is down for everyone (or no dbwatch "
                "reports it any more, see DbwatchAbsent). An error ratio cannot show this: without requests it is 0."
            ),
        },
    }


def _group(slo: SLO, targets: dict[str, Target], watch_traffic: bool) -> dict[str, Any]:
    sli = _SLI(slo, targets)
    base = {"slo": slo.name, "sli": slo.sli}
    windows = sorted({*(w.long for w in slo.windows), *(w.short for w in slo.windows), slo.period})
    rules: list[dict[str, Any]] = []
    for w in windows:
        d = prom_duration(w)
        # Zero traffic gives 0, not NaN: the division only happens where there are requests.
        expr = f"(\n  {sli.bad(d)}\n  /\n  ({sli.total(d)} > 0)\n) or on() vector(0)\n"
        rules.append({"record": _ratio_record(w), "expr": expr, "labels": base})
    for w in sorted({w.long for w in slo.windows}):
        expr = f"{sli.total(prom_duration(w), 'increase')} or on() vector(0)\n"
        rules.append({"record": _requests_record(w), "expr": expr, "labels": base})
    rules.append({"record": f"{RULE_PREFIX}objective:ratio", "expr": f"vector({_num(slo.objective)})", "labels": base})
    rules.append(
        {
            "record": f"{RULE_PREFIX}error_budget:remaining_ratio",
            "expr": f"1 - {_ratio_record(slo.period)}{_selector([('slo', slo.name)])} / {_num(1 - slo.objective)}",
            "labels": base,
        }
    )
    rules.extend(_alert(slo, w) for w in slo.windows)
    if watch_traffic:
        rules.append(_no_traffic_alert(slo, sli))
    return {"name": f"dbwatch-slo-{slo.name}", "rules": rules}


def slo_groups(config: Config, runbook_url: str = DEFAULT_RUNBOOK_URL) -> list[dict[str, Any]]:
    """One rule group per SLO: error ratios per window, request counts, objective, budget left, alerts.

    The first access SLO of each (source, route, method) also pages when that path's traffic stops.
    """
    targets = {t.name: t for t in config.targets}
    watched: set[tuple[str | None, ...]] = set()
    groups = []
    for slo in config.slos:
        path = (slo.log_source, slo.route, slo.method)
        groups.append(_group(slo, targets, slo.source == "access" and path not in watched))
        if slo.source == "access":
            watched.add(path)
    return with_runbooks(groups, runbook_url)


def prometheus_rule(groups: list[dict[str, Any]], name: str = "dbwatch-slo") -> dict[str, Any]:
    """The same groups as a prometheus-operator PrometheusRule object."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "dbwatch", "role": "alert-rules"}},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks and no anchors, so the output reads like hand-written rules."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def render(doc: dict[str, Any], source: str, runbook_url: str = DEFAULT_RUNBOOK_URL) -> str:
    """YAML text with a header naming the command that made it."""
    flag = "" if runbook_url == DEFAULT_RUNBOOK_URL else f" --runbook-url {runbook_url}"
    header = (
        f"# Generated by `dbwatch rules --config {source}{flag}` from its `slos:`. Do not edit: change the config\n"
        "# and run the command again (a test checks the shipped files are up to date).\n"
    )
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)


_PROM_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PROM_DURATION: Final = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def _prom_seconds(text: object) -> float:
    """Seconds of a Prometheus duration such as `1h30m`; raises ConfigError for anything else."""
    parts = _PROM_DURATION.findall(str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ConfigError(f"for: {text!r} is not a Prometheus duration")
    return sum(int(n) * _PROM_UNITS[u] for n, u in parts)


def cap_for(groups: list[dict[str, Any]], max_for: float) -> list[dict[str, Any]]:
    """The groups with every alert's `for:` cut to at most max_for seconds (`--max-for`: tests, never production)."""
    cut = prom_duration(max_for)

    def one(rule: dict[str, Any]) -> dict[str, Any]:
        return {**rule, "for": cut} if "for" in rule and _prom_seconds(rule["for"]) > max_for else rule

    return [{**g, "rules": [one(r) for r in g["rules"]]} for g in groups]


def included(path: Path) -> list[dict[str, Any]]:
    """The groups of a hand-written rule file given to `--include`; a file that is not one is a config error."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--include {path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"--include {path}: not YAML") from None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("rules"), list) for g in groups
    ):
        raise ConfigError(f"--include {path}: not a Prometheus rule file (groups: [{{name, rules}}])")
    return groups


def _header_note(max_for: float | None) -> str:
    if max_for is None:
        return ""
    cut = prom_duration(max_for)
    return f"# --max-for {cut}: every `for:` is cut to at most {cut}, for tests only.\n"


def write(
    config: Config,
    source: str,
    out: Path,
    *,
    check: bool = False,
    max_for: float | None = None,
    includes: tuple[Path, ...] = (),
    runbook_url: str = DEFAULT_RUNBOOK_URL,
) -> list[Path]:
    """Write (or with check=True, compare) the rule file and the PrometheusRule; returns the paths that differ.

    `includes` are hand-written rule files written beside them (as DIR/<name>), with `max_for` and the runbook URL
    applied too.
    """
    groups = slo_groups(config, runbook_url)
    if max_for is not None:
        groups = cap_for(groups, max_for)
    note = _header_note(max_for)
    files = {
        out / RULES_FILE: note + render({"groups": groups}, source, runbook_url),
        out / PROMETHEUSRULE_FILE: note + render(prometheus_rule(groups), source, runbook_url),
    }
    for path in includes:
        if path.name in (RULES_FILE, PROMETHEUSRULE_FILE) or out / path.name in files:
            raise ConfigError(f"--include {path}: its name clashes with another file written to {out}")
        inc = with_runbooks(included(path), runbook_url)
        if max_for is not None:
            inc = cap_for(inc, max_for)
        files[out / path.name] = (
            f"# Copied from {path} by `dbwatch rules --include`; edit that file, not this copy.\n"
            + note
            + yaml.dump({"groups": inc}, Dumper=_Dumper, sort_keys=False, width=1000)
        )
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if not check:
        out.mkdir(parents=True, exist_ok=True)
        for p in stale:
            p.write_text(files[p], encoding="utf-8")
    return stale
