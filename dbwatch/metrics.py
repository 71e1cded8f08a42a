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
PROBE_HTTP_STATUS = MetricSpec(
    "dbwatch_probe_http_status",
    MetricType.GAUGE,
    "HTTP status code of the login probe's last response (0: no response arrived); its value, not a label.",
    ("target",),
)
PROBE_LAST_SUCCESS = MetricSpec(
    "dbwatch_probe_last_success_timestamp_seconds",
    MetricType.GAUGE,
    "Unix time of the last successful probe of the target.",
    ("target",),
)

# --- scheduler (dbwatch/scheduler.py) -------------------------------------------------------
# The job is labelled `task` (probe, pg_activity, …): `job` belongs to Prometheus, which would rename it exported_job.
JOB_DURATION = MetricSpec(
    "dbwatch_job_duration_seconds",
    MetricType.GAUGE,
    "Wall time of the last run of a scheduled job.",
    ("task", "target"),
)
JOB_SUCCESS = MetricSpec(
    "dbwatch_job_success",
    MetricType.GAUGE,
    "1 if the last run of a scheduled job succeeded, else 0.",
    ("task", "target"),
)
JOB_RUNS = MetricSpec(
    "dbwatch_job_runs",
    MetricType.COUNTER,
    "Runs of a scheduled job by result (ok, error, timeout; standby: database-wide work another instance does).",
    ("task", "target", "result"),
)
JOB_INFO = MetricSpec(
    "dbwatch_job_info",
    MetricType.GAUGE,
    "Always 1 per scheduled job; scope is pod (this instance's own work) or database (database-wide work, run by"
    " one instance per database).",
    ("task", "target", "scope"),
)
JOB_SKIPPED = MetricSpec(
    "dbwatch_job_skipped",
    MetricType.COUNTER,
    "Scheduled runs skipped because the previous run of the same job overran its interval.",
    ("task", "target"),
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
SERIES_DROPPED = MetricSpec(
    "dbwatch_series_dropped",
    MetricType.COUNTER,
    "New label sets not created because the store held max_series series, by metric family.",
    ("metric",),
)
HTTP_REJECTED = MetricSpec(
    "dbwatch_http_rejected",
    MetricType.COUNTER,
    "HTTP connections or requests refused by a server bound (connection_limit, header_timeout, auth_busy).",
    ("reason",),
)
LOG_SOURCE_INFO = MetricSpec(
    "dbwatch_log_source_info",
    MetricType.GAUGE,
    "Always 1 per configured log source; target is the database target its app uses (empty when not set).",
    ("source", "target"),
)

# --- request latency (dbwatch/logs/access.py and the hook's middleware via dbwatch/ingest/) ------------
# One family whichever source feeds it: `source` is the log source or the hooked app. Latency SLO thresholds are
# bucket boundaries (dbwatch rules refuses any other): 50, 100, 250, 500 ms, 1, 2.5 s. Few buckets and no status
# class on the histogram keep a route and method at 9 series; the status class is on the request counter.
HTTP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HTTP_REQUEST_DURATION = MetricSpec(
    "dbwatch_http_request_duration_seconds",
    MetricType.HISTOGRAM,
    "Request duration by route template and method, from an access log or the in-app ASGI middleware (source).",
    ("source", "route", "method"),
    HTTP_BUCKETS,
)
HTTP_REQUESTS = MetricSpec(
    "dbwatch_http_requests",
    MetricType.COUNTER,
    "Requests by route template, method and status class, from an access log or the in-app ASGI middleware.",
    ("source", "route", "method", "status_class"),
)
HTTP_ACCESS_RECORDS = MetricSpec(
    "dbwatch_http_access_records",
    MetricType.COUNTER,
    "Records offered to the access-log parser by result: observed, unmatched (not an access record), bad_value.",
    ("source", "result"),
)

# --- app pool via hook (dbwatch/hook/ sends, dbwatch/ingest/ receives) ---------------------
# Bucket bounds travel in every hook datagram; the sidecar rejects a datagram whose bounds differ from these.
# Checkout waits run from a free connection (microseconds) to the pool timeout (default 30 s).
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Connect (DNS + TCP + TLS + auth + dialect set-up) takes milliseconds to seconds.
POOL_CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A connection held across an `await` of something slow shows in the upper buckets.
POOL_HELD_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Connection age at checkin: seconds to hours (recycle and server idle timeouts live here).
POOL_AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)

APP_POOL_INFO = MetricSpec(
    "dbwatch_app_pool_info",
    MetricType.GAUGE,
    "Always 1 per instrumented engine; pool_class is the SQLAlchemy pool class.",
    ("app", "engine", "pool_class"),
)
APP_POOL_SETTING_CONNECTIONS = MetricSpec(
    "dbwatch_app_pool_setting_connections",
    MetricType.GAUGE,
    "Configured pool size and max_overflow, in connections.",
    ("app", "engine", "setting"),
)
APP_POOL_SETTING_SECONDS = MetricSpec(
    "dbwatch_app_pool_setting_seconds",
    MetricType.GAUGE,
    "Configured pool timeout (checkout wait) and recycle (-1: never), in seconds.",
    ("app", "engine", "setting"),
)
APP_POOL_PRE_PING = MetricSpec(
    "dbwatch_app_pool_pre_ping",
    MetricType.GAUGE,
    "1 if the pool pings a connection before handing it out (pool_pre_ping), else 0.",
    ("app", "engine"),
)
APP_POOL_CHECKED_OUT = MetricSpec(
    "dbwatch_app_pool_checked_out",
    MetricType.GAUGE,
    "Connections checked out of the pool right now, summed over the app's live workers.",
    ("app", "engine"),
)
APP_POOL_IDLE = MetricSpec(
    "dbwatch_app_pool_idle",
    MetricType.GAUGE,
    "Connections idle in the pool right now, summed over the app's live workers.",
    ("app", "engine"),
)
APP_POOL_OVERFLOW = MetricSpec(
    "dbwatch_app_pool_overflow",
    MetricType.GAUGE,
    "Overflow connections (beyond pool size) in use right now, summed over the app's live workers.",
    ("app", "engine"),
)
APP_POOL_WAITING = MetricSpec(
    "dbwatch_app_pool_waiting",
    MetricType.GAUGE,
    "Checkouts waiting for a connection right now, summed over the app's live workers.",
    ("app", "engine"),
)
APP_POOL_CONNECTS = MetricSpec(
    "dbwatch_app_pool_connects",
    MetricType.COUNTER,
    "New DBAPI connections the pool made (result ok or error).",
    ("app", "engine", "result"),
)
APP_POOL_CHECKOUTS = MetricSpec(
    "dbwatch_app_pool_checkouts", MetricType.COUNTER, "Connections checked out of the pool.", ("app", "engine")
)
APP_POOL_CHECKINS = MetricSpec(
    "dbwatch_app_pool_checkins", MetricType.COUNTER, "Connections returned to the pool.", ("app", "engine")
)
APP_POOL_INVALIDATIONS = MetricSpec(
    "dbwatch_app_pool_invalidations",
    MetricType.COUNTER,
    "Connections invalidated, by kind (hard: closed now; soft: replaced at next checkout).",
    ("app", "engine", "kind"),
)
APP_POOL_RESETS = MetricSpec(
    "dbwatch_app_pool_resets",
    MetricType.COUNTER,
    "Connection resets on return to the pool (rollback or commit).",
    ("app", "engine"),
)
APP_POOL_CHECKOUT_TIMEOUTS = MetricSpec(
    "dbwatch_app_pool_checkout_timeouts",
    MetricType.COUNTER,
    "Checkouts that gave up after the pool timeout (sqlalchemy.exc.TimeoutError).",
    ("app", "engine"),
)
APP_POOL_CHECKOUT_WAIT = MetricSpec(
    "dbwatch_app_pool_checkout_wait_seconds",
    MetricType.HISTOGRAM,
    "Time a checkout spent getting a connection from the pool (queue wait plus any connect it triggered).",
    ("app", "engine"),
    POOL_WAIT_BUCKETS,
)
APP_POOL_CONNECT_DURATION = MetricSpec(
    "dbwatch_app_pool_connect_duration_seconds",
    MetricType.HISTOGRAM,
    "Time to create a new DBAPI connection.",
    ("app", "engine"),
    POOL_CONNECT_BUCKETS,
)
APP_POOL_HELD = MetricSpec(
    "dbwatch_app_pool_checkout_held_seconds",
    MetricType.HISTOGRAM,
    "Time from checkout to checkin of a connection.",
    ("app", "engine"),
    POOL_HELD_BUCKETS,
)
APP_POOL_CONNECTION_AGE = MetricSpec(
    "dbwatch_app_pool_connection_age_seconds",
    MetricType.HISTOGRAM,
    "Age of a connection when it is checked in.",
    ("app", "engine"),
    POOL_AGE_BUCKETS,
)
APP_DBAPI_ERRORS = MetricSpec(
    "dbwatch_app_dbapi_errors",
    MetricType.COUNTER,
    "Errors raised through the engine (handle_error), by exception class (bounded; rest as other).",
    ("app", "engine", "error"),
)
APP_POOL_FINDING = MetricSpec(
    "dbwatch_app_pool_finding",
    MetricType.GAUGE,
    "1 while a misconfiguration finding holds for the engine, else 0.",
    ("app", "engine", "finding"),
)
APP_EXCEPTIONS = MetricSpec(
    "dbwatch_app_exceptions",
    MetricType.COUNTER,
    "Unhandled exceptions seen by the ASGI middleware, by route, exception class and log category.",
    ("app", "route", "exception", "category"),
)
APP_HOOK_WORKERS = MetricSpec(
    "dbwatch_app_hook_workers",
    MetricType.GAUGE,
    "Worker processes of the app whose hook reported within hook.worker_expiry.",
    ("app",),
)
APP_HOOK_DROPPED = MetricSpec(
    "dbwatch_app_hook_dropped",
    MetricType.COUNTER,
    "Reports the app's hook could not send (queue_full, send_failed), as counted by the app.",
    ("app", "reason"),
)
HOOK_DATAGRAMS = MetricSpec(
    "dbwatch_hook_datagrams",
    MetricType.COUNTER,
    "Datagrams the sidecar received from hooks, by result (accepted or the reason it was rejected).",
    ("result",),
)

# --- sessions (dbwatch/collectors/, dbwatch/monconn.py) -----------------------------------
MONITOR_UP = MetricSpec(
    "dbwatch_monitor_connection_up",
    MetricType.GAUGE,
    "1 while dbwatch's persistent monitoring connection to the target is open, else 0.",
    ("target",),
)
MONITOR_ATTEMPTS = MetricSpec(
    "dbwatch_monitor_connection_attempts",
    MetricType.COUNTER,
    "Attempts to open the monitoring connection, by result (ok or a failure reason).",
    ("target", "result"),
)
MONITOR_LOST = MetricSpec(
    "dbwatch_monitor_connection_lost",
    MetricType.COUNTER,
    "Times the open monitoring connection was lost (terminated, server restart, network).",
    ("target",),
)
MONITOR_BACKOFF = MetricSpec(
    "dbwatch_monitor_connection_backoff_seconds",
    MetricType.GAUGE,
    "Wait before the next attempt to reopen the monitoring connection; 0 while connected.",
    ("target",),
)
DATABASE_WIDE_COLLECTING = MetricSpec(
    "dbwatch_database_wide_collecting",
    MetricType.GAUGE,
    "1 on the one instance that runs the target's database-wide collectors now (it holds the advisory lock on its"
    " monitoring session, or its collect.mode is always), 0 on the others.",
    ("target", "mode"),
)
COORDINATION_TAKEOVERS = MetricSpec(
    "dbwatch_database_wide_takeovers",
    MetricType.COUNTER,
    "Times this instance took the target's advisory lock and became the one that collects its database-wide work.",
    ("target",),
)
OWN_SESSIONS = MetricSpec(
    "dbwatch_own_sessions",
    MetricType.GAUGE,
    "This pod's sessions on the target's database as the server sees them (same client address as dbwatch's probe,"
    " or own_sessions.application_name), by state; standard states at 0, NULL state (not visible to the role) ''.",
    ("target", "state"),
)
OWN_OLDEST_IDLE_IN_TRANSACTION = MetricSpec(
    "dbwatch_own_oldest_idle_in_transaction_seconds",
    MetricType.GAUGE,
    "Time this pod's oldest 'idle in transaction' session has spent in that state; 0 when none.",
    ("target",),
)
PG_ALL_SESSIONS_VISIBLE = MetricSpec(
    "dbwatch_pg_all_sessions_visible",
    MetricType.GAUGE,
    "1 if the monitoring role sees every session's details (superuser, pg_monitor or pg_read_all_stats), 0 if it"
    " sees only its own role's: then other sessions have an empty state and saturation is under-reported.",
    ("target",),
)
PG_HIDDEN_SESSIONS = MetricSpec(
    "dbwatch_pg_hidden_sessions",
    MetricType.GAUGE,
    "Sessions whose details (backend type, state, times) the monitoring role cannot see; they count under"
    " backend_type '' and state '', not as client backends, so the connections used ratio is low by as many.",
    ("target",),
)
PG_SESSIONS = MetricSpec(
    "dbwatch_pg_sessions",
    MetricType.GAUGE,
    "Server sessions from pg_stat_activity; standard client states are reported at 0; NULL columns are ''.",
    ("target", "datname", "usename", "application_name", "state", "backend_type"),
)
PG_WAITING_SESSIONS = MetricSpec(
    "dbwatch_pg_waiting_sessions",
    MetricType.GAUGE,
    "Active sessions waiting on an event, by wait_event_type.",
    ("target", "datname", "wait_event_type"),
)
PG_BLOCKED_SESSIONS = MetricSpec(
    "dbwatch_pg_blocked_sessions",
    MetricType.GAUGE,
    "Sessions waiting on a lock held by another backend.",
    ("target", "datname"),
)
PG_OLDEST_BLOCKED_WAIT = MetricSpec(
    "dbwatch_pg_oldest_blocked_wait_seconds",
    MetricType.GAUGE,
    "Age of the oldest lock wait of a blocked session; 0 when none.",
    ("target", "datname"),
)
PG_OLDEST_TRANSACTION = MetricSpec(
    "dbwatch_pg_oldest_transaction_seconds",
    MetricType.GAUGE,
    "Age of the oldest open transaction; 0 when none.",
    ("target", "datname"),
)
PG_OLDEST_IDLE_IN_TRANSACTION = MetricSpec(
    "dbwatch_pg_oldest_idle_in_transaction_seconds",
    MetricType.GAUGE,
    "Time the oldest 'idle in transaction' session has spent in that state; 0 when none.",
    ("target", "datname"),
)
PG_OLDEST_ACTIVE_QUERY = MetricSpec(
    "dbwatch_pg_oldest_active_query_seconds",
    MetricType.GAUGE,
    "Age of the oldest running query (dbwatch's own excluded); 0 when none.",
    ("target", "datname"),
)
PG_TOP_SESSION_AGE = MetricSpec(
    "dbwatch_pg_top_session_age_seconds",
    MetricType.GAUGE,
    "Who holds the few oldest sessions per kind of age (transaction, idle_in_transaction, active_query, blocked_wait).",
    ("target", "age", "datname", "usename", "application_name"),
)
PG_CONNECTIONS_USED_RATIO = MetricSpec(
    "dbwatch_pg_connections_used_ratio",
    MetricType.GAUGE,
    "Client backends / (max_connections - superuser_reserved_connections - reserved_connections).",
    ("target",),
)
PG_SETTING_CONNECTIONS = MetricSpec(
    "dbwatch_pg_setting_connections",
    MetricType.GAUGE,
    "Server settings that count connections: max_connections, superuser_reserved_connections, reserved_connections.",
    ("target", "name"),
)
PG_SETTING_TIMEOUT = MetricSpec(
    "dbwatch_pg_setting_timeout_seconds",
    MetricType.GAUGE,
    "Server session timeouts (idle_in_transaction_session_timeout, statement_timeout); 0 means disabled.",
    ("target", "name"),
)
PG_FOLDED_LABEL_VALUES = MetricSpec(
    "dbwatch_pg_folded_label_values",
    MetricType.GAUGE,
    "Distinct usename/application_name values folded into __other__ by the cardinality cap, last collection.",
    ("target", "label"),
)
PG_DATABASE_XACT_COMMIT = MetricSpec(
    "dbwatch_pg_database_xact_commit",
    MetricType.COUNTER,
    "Committed transactions (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_XACT_ROLLBACK = MetricSpec(
    "dbwatch_pg_database_xact_rollback",
    MetricType.COUNTER,
    "Rolled back transactions (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_DEADLOCKS = MetricSpec(
    "dbwatch_pg_database_deadlocks", MetricType.COUNTER, "Deadlocks detected (pg_stat_database).", ("target", "datname")
)
PG_DATABASE_CONFLICTS = MetricSpec(
    "dbwatch_pg_database_conflicts",
    MetricType.COUNTER,
    "Queries cancelled by recovery conflicts (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_TEMP_FILES = MetricSpec(
    "dbwatch_pg_database_temp_files",
    MetricType.COUNTER,
    "Temporary files created (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_TEMP_BYTES = MetricSpec(
    "dbwatch_pg_database_temp_bytes",
    MetricType.COUNTER,
    "Bytes written to temporary files (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_BLKS_HIT = MetricSpec(
    "dbwatch_pg_database_blks_hit", MetricType.COUNTER, "Buffer cache hits (pg_stat_database).", ("target", "datname")
)
PG_DATABASE_BLKS_READ = MetricSpec(
    "dbwatch_pg_database_blks_read",
    MetricType.COUNTER,
    "Blocks read from disk or OS cache (pg_stat_database).",
    ("target", "datname"),
)
PG_DATABASE_SESSIONS = MetricSpec(
    "dbwatch_pg_database_sessions",
    MetricType.COUNTER,
    "Sessions established (pg_stat_database, PostgreSQL 14+).",
    ("target", "datname"),
)
PG_DATABASE_SESSIONS_ABANDONED = MetricSpec(
    "dbwatch_pg_database_sessions_abandoned",
    MetricType.COUNTER,
    "Sessions ended because the client went away without closing (pg_stat_database, PostgreSQL 14+).",
    ("target", "datname"),
)
PG_DATABASE_SESSIONS_FATAL = MetricSpec(
    "dbwatch_pg_database_sessions_fatal",
    MetricType.COUNTER,
    "Sessions ended by a FATAL error, e.g. idle_in_transaction_session_timeout (pg_stat_database, PostgreSQL 14+).",
    ("target", "datname"),
)
PG_DATABASE_SESSIONS_KILLED = MetricSpec(
    "dbwatch_pg_database_sessions_killed",
    MetricType.COUNTER,
    "Sessions terminated by an operator, e.g. pg_terminate_backend (pg_stat_database, PostgreSQL 14+).",
    ("target", "datname"),
)
PG_DATABASE_IDLE_IN_TRANSACTION = MetricSpec(
    "dbwatch_pg_database_idle_in_transaction_seconds",
    MetricType.COUNTER,
    "Time sessions spent idle inside a transaction (pg_stat_database idle_in_transaction_time, PostgreSQL 14+).",
    ("target", "datname"),
)
PGBOUNCER_CLIENTS = MetricSpec(
    "dbwatch_pgbouncer_pool_client_connections",
    MetricType.GAUGE,
    "Client connections per pool by state (SHOW POOLS cl_*: active, waiting, ...).",
    ("target", "database", "user", "state"),
)
PGBOUNCER_SERVERS = MetricSpec(
    "dbwatch_pgbouncer_pool_server_connections",
    MetricType.GAUGE,
    "Server connections per pool by state (SHOW POOLS sv_*: active, idle, used, tested, login, ...).",
    ("target", "database", "user", "state"),
)
PGBOUNCER_MAXWAIT = MetricSpec(
    "dbwatch_pgbouncer_pool_maxwait_seconds",
    MetricType.GAUGE,
    "How long the oldest waiting client of the pool has waited (SHOW POOLS maxwait).",
    ("target", "database", "user"),
)
PGBOUNCER_TRANSACTIONS = MetricSpec(
    "dbwatch_pgbouncer_transactions",
    MetricType.COUNTER,
    "Transactions pooled (SHOW STATS total_xact_count).",
    ("target", "database"),
)
PGBOUNCER_QUERIES = MetricSpec(
    "dbwatch_pgbouncer_queries",
    MetricType.COUNTER,
    "Queries pooled (SHOW STATS total_query_count).",
    ("target", "database"),
)
PGBOUNCER_RECEIVED_BYTES = MetricSpec(
    "dbwatch_pgbouncer_received_bytes",
    MetricType.COUNTER,
    "Bytes received from clients (SHOW STATS total_received).",
    ("target", "database"),
)
PGBOUNCER_SENT_BYTES = MetricSpec(
    "dbwatch_pgbouncer_sent_bytes",
    MetricType.COUNTER,
    "Bytes sent to clients (SHOW STATS total_sent).",
    ("target", "database"),
)
PGBOUNCER_XACT_TIME = MetricSpec(
    "dbwatch_pgbouncer_xact_time_seconds",
    MetricType.COUNTER,
    "Time spent in transactions (SHOW STATS total_xact_time).",
    ("target", "database"),
)
PGBOUNCER_QUERY_TIME = MetricSpec(
    "dbwatch_pgbouncer_query_time_seconds",
    MetricType.COUNTER,
    "Time spent in queries (SHOW STATS total_query_time).",
    ("target", "database"),
)
PGBOUNCER_WAIT_TIME = MetricSpec(
    "dbwatch_pgbouncer_wait_time_seconds",
    MetricType.COUNTER,
    "Time clients spent waiting for a server (SHOW STATS total_wait_time).",
    ("target", "database"),
)
PGBOUNCER_AVG_XACT_TIME = MetricSpec(
    "dbwatch_pgbouncer_avg_xact_time_seconds",
    MetricType.GAUGE,
    "Average transaction time over pgbouncer's last stats period (SHOW STATS avg_xact_time).",
    ("target", "database"),
)
PGBOUNCER_AVG_QUERY_TIME = MetricSpec(
    "dbwatch_pgbouncer_avg_query_time_seconds",
    MetricType.GAUGE,
    "Average query time over pgbouncer's last stats period (SHOW STATS avg_query_time).",
    ("target", "database"),
)
PGBOUNCER_AVG_WAIT_TIME = MetricSpec(
    "dbwatch_pgbouncer_avg_wait_time_seconds",
    MetricType.GAUGE,
    "Average client wait time over pgbouncer's last stats period (SHOW STATS avg_wait_time).",
    ("target", "database"),
)

# --- logs (dbwatch/logs/) -------------------------------------------------------------------
LOG_EXCEPTIONS = MetricSpec(
    "dbwatch_log_exceptions",
    MetricType.COUNTER,
    "Exceptions in logged tracebacks by category (closed set), class and deepest app frame (path:line, top-N per "
    "source then __other__); each leaf of an exception group counts. Empty exception/location: the zero series.",
    ("source", "category", "exception", "location"),
)
LOG_LOST_EXCEPTIONS = MetricSpec(
    "dbwatch_log_lost_exceptions",
    MetricType.COUNTER,
    "Sub-exceptions of logged exception groups the log does not show, so not in dbwatch_log_exceptions_total "
    "(Python's 'and N more exceptions'; structlog dict_tracebacks before 25.4 drops them all).",
    ("source",),
)
LOG_LINES = MetricSpec("dbwatch_log_lines", MetricType.COUNTER, "Physical lines read from a log source.", ("source",))
LOG_BYTES = MetricSpec("dbwatch_log_read_bytes", MetricType.COUNTER, "Bytes read from a log source.", ("source",))
LOG_UNMATCHED = MetricSpec(
    "dbwatch_log_unmatched_lines",
    MetricType.COUNTER,
    "Lines with no known record shape for the source's format (not JSON in a JSON log, not a CRI record, ...).",
    ("source",),
)
LOG_PARSE_ERRORS = MetricSpec(
    "dbwatch_log_parse_errors",
    MetricType.COUNTER,
    "Records that had the format's shape but failed to parse (bad or too deeply nested JSON, a broken traceback).",
    ("source",),
)
LOG_TRUNCATED = MetricSpec(
    "dbwatch_log_truncated_records",
    MetricType.COUNTER,
    "Lines and records cut at logs.max_line_bytes / logs.max_record_bytes.",
    ("source",),
)
LOG_LAST_EVENT = MetricSpec(
    "dbwatch_log_last_event_timestamp_seconds",
    MetricType.GAUGE,
    "Unix time of the newest logged traceback of the source (its record's time, else when it was read).",
    ("source",),
)
LOG_ROTATIONS = MetricSpec(
    "dbwatch_log_rotations",
    MetricType.COUNTER,
    "Log files rotated away (rename: finished through the old descriptor) or truncated in place (truncate).",
    ("source", "kind"),
)
LOG_FILE_ERRORS = MetricSpec(
    "dbwatch_log_file_errors",
    MetricType.COUNTER,
    "Log files that could not be opened or read.",
    ("source",),
)
LOG_POSITIONS_RESET = MetricSpec(
    "dbwatch_log_positions_reset",
    MetricType.COUNTER,
    "Saved positions found corrupt or unreadable: set aside, each file read on from its end.",
    ("source",),
)
LOG_FILES = MetricSpec("dbwatch_log_files", MetricType.GAUGE, "Files the source follows now.", ("source",))
LOG_BACKLOG = MetricSpec(
    "dbwatch_log_backlog_bytes",
    MetricType.GAUGE,
    "Bytes written to the source's files and not read yet.",
    ("source",),
)

ALL: tuple[MetricSpec, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, MetricSpec))
