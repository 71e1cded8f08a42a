"""Every metric dbwatch exposes: name, type, help, label names and buckets, in one place.

No other module spells a `dbwatch_` name; they import a `MetricSpec` from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ALL", "MetricSpec", "MetricType"]

PREFIX = "dbwatch_"


class MetricType(StrEnum):
    """Prometheus metric types dbwatch emits."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family: its full name (counters without `_total`), type, help and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"metric {self.name} lacks the {PREFIX} prefix")
        if self.type is MetricType.COUNTER and self.name.endswith("_total"):
            raise ValueError(f"counter {self.name}: give the name without _total")
        if self.type is MetricType.HISTOGRAM and not self.buckets:
            raise ValueError(f"histogram {self.name} needs buckets")


# Probe phases last from well under a millisecond (loopback) to the timeout.
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- probes (dbwatch/probes/) ---------------------------------------------------------------
PROBE_UP = MetricSpec(
    "dbwatch_probe_up", MetricType.GAUGE, "1 if the last probe of the target succeeded, else 0.", ("target",)
)
PROBE_DURATION = MetricSpec(
    "dbwatch_probe_duration_seconds",
    MetricType.HISTOGRAM,
    "Duration of each phase of successful probe steps (connect: DNS+TCP, startup: TLS+auth, query).",
    ("target", "phase"),
    PROBE_BUCKETS,
)
PROBE_FAILURES = MetricSpec(
    "dbwatch_probe_failures",
    MetricType.COUNTER,
    "Failed probes by classified reason.",
    ("target", "reason"),
)
PROBE_LAST_SUCCESS = MetricSpec(
    "dbwatch_probe_last_success_timestamp_seconds",
    MetricType.GAUGE,
    "Unix time of the last successful probe of the target.",
    ("target",),
)

# --- scheduler (dbwatch/scheduler.py) -------------------------------------------------------
JOB_DURATION = MetricSpec(
    "dbwatch_job_duration_seconds",
    MetricType.GAUGE,
    "Wall time of the last run of a scheduled job.",
    ("job", "target"),
)
JOB_SUCCESS = MetricSpec(
    "dbwatch_job_success",
    MetricType.GAUGE,
    "1 if the last run of a scheduled job succeeded, else 0.",
    ("job", "target"),
)
JOB_RUNS = MetricSpec(
    "dbwatch_job_runs",
    MetricType.COUNTER,
    "Runs of a scheduled job by result (ok, error, timeout).",
    ("job", "target", "result"),
)
JOB_SKIPPED = MetricSpec(
    "dbwatch_job_skipped",
    MetricType.COUNTER,
    "Scheduled runs skipped because the previous run of the same job overran its interval.",
    ("job", "target"),
)

# --- self (dbwatch/server.py) ---------------------------------------------------------------
BUILD_INFO = MetricSpec(
    "dbwatch_build_info",
    MetricType.GAUGE,
    "Always 1; labels carry the dbwatch and Python versions.",
    ("version", "python_version"),
)
TARGET_INFO = MetricSpec(
    "dbwatch_target_info",
    MetricType.GAUGE,
    "Always 1 per configured target; labels carry its kind and whether it is critical.",
    ("target", "kind", "critical"),
)

# --- access-log latency (dbwatch/logs/access.py) ---------------------------------------------
# Login SLO thresholds are bucket boundaries (dbwatch rules refuses any other): 100, 200, 250, 300, 500 ms, 1 s, 2 s…
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0)
HTTP_REQUEST_DURATION = MetricSpec(
    "dbwatch_http_request_duration_seconds",
    MetricType.HISTOGRAM,
    "Request duration from the app's access log, by route template, method and status class.",
    ("source", "route", "method", "status_class"),
    HTTP_BUCKETS,
)
HTTP_ACCESS_RECORDS = MetricSpec(
    "dbwatch_http_access_records",
    MetricType.COUNTER,
    "Records offered to the access-log parser by result: observed, unmatched (not an access record), bad_value.",
    ("source", "result"),
)

ALL: tuple[MetricSpec, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, MetricSpec))
