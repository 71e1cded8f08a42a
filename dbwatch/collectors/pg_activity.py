"""pg_stat_activity and the settings that bound it: sessions, waits, blocked sessions, ages, saturation.

One statement per collection: the server aggregates (GROUP BY) and returns one row of JSON arrays, so the cost
to the database does not grow with the number of label combinations and one round trip carries everything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, ClassVar, Final

import structlog

from dbwatch import metrics as m
from dbwatch.collectors.base import Scope, weights
from dbwatch.labels import OTHER, Capper
from dbwatch.store import Sample

__all__ = ["STATES", "WAIT_EVENT_TYPES", "PgActivity"]

log = structlog.get_logger("dbwatch.collectors.pg_activity")
_FIX: Final = "GRANT pg_monitor TO <the monitoring role> (README: A least-privilege monitoring role)"

# Client backend states reported at 0 when empty, so their series never vanish.
STATES: Final = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
WAIT_EVENT_TYPES: Final = ("Activity", "BufferPin", "Client", "Extension", "IO", "IPC", "Lock", "LWLock", "Timeout")
SETTINGS: Final = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_in_transaction_session_timeout",
    "statement_timeout",
)
# Set in dbwatch's monitoring session (monconn.session_settings), so current_setting() would show dbwatch's value.
SESSION_OVERRIDDEN: Final = frozenset({"statement_timeout"})
TOP_N: Final = 3
_UNITS: Final = {"us": 1e-6, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# How current_setting() shows a time setting: "0", "500ms", "90s", "1min", "2h", "1d".
_TIME_RE: Final = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$")

# When a blocked session started waiting: pg_locks.waitstart exists from PostgreSQL 14; before, the query start.
_WAITSTART_14: Final = (
    "coalesce((SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = s.pid AND NOT l.granted), s.query_start)"
)
_WAITSTART_OLD: Final = "s.query_start"

# Whether the monitoring role sees every session's state, query times and client (not only its own role's): a
# superuser, or a member of pg_read_all_stats (pg_monitor includes it; both from PostgreSQL 10).
_PRIVILEGED_10: Final = (
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR pg_has_role('pg_read_all_stats', 'USAGE')"
)
_PRIVILEGED_OLD: Final = "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"

_SQL: Final = """
WITH a AS MATERIALIZED (
  SELECT s.pid,
         coalesce(s.datname, '') AS datname,
         coalesce(s.usename, '') AS usename,
         coalesce(s.application_name, '') AS application_name,
         coalesce(s.state, '') AS state,
         coalesce(s.backend_type, '') AS backend_type,
         coalesce(host(s.client_addr), '') AS client_addr,
         s.wait_event_type,
         s.pid = pg_backend_pid() AS own,
         extract(epoch FROM now() - s.xact_start)::float8 AS xact_age,
         CASE WHEN s.state LIKE 'idle in transaction%%'
              THEN extract(epoch FROM now() - s.state_change)::float8 END AS idle_xact_age,
         CASE WHEN s.state = 'active' THEN extract(epoch FROM now() - s.query_start)::float8 END AS active_age,
         CASE WHEN s.wait_event_type = 'Lock' AND cardinality(pg_blocking_pids(s.pid)) > 0
              THEN extract(epoch FROM now() - %(waitstart)s)::float8 END AS blocked_age
  FROM pg_stat_activity s
), ages AS (
  SELECT datname,
         count(blocked_age) AS blocked,
         max(blocked_age) AS blocked_age,
         max(xact_age) FILTER (WHERE NOT own) AS xact_age,
         max(idle_xact_age) AS idle_xact_age,
         max(active_age) FILTER (WHERE NOT own) AS active_age
  FROM a GROUP BY datname
), dbs AS (
  SELECT datname::text FROM pg_database WHERE datallowconn
  UNION SELECT datname FROM a WHERE datname <> ''
), top AS (
  SELECT v.age_kind, v.age, a.datname, a.usename, a.application_name, a.client_addr,
         row_number() OVER (PARTITION BY v.age_kind ORDER BY v.age DESC, a.pid) AS rank
  FROM a CROSS JOIN LATERAL (VALUES ('transaction', a.xact_age), ('idle_in_transaction', a.idle_xact_age),
                                    ('active_query', a.active_age), ('blocked_wait', a.blocked_age)) v(age_kind, age)
  WHERE v.age IS NOT NULL AND NOT a.own
)
SELECT
  (SELECT coalesce(json_agg(json_build_array(datname, usename, application_name, state, backend_type, n)), '[]')
     FROM (SELECT datname, usename, application_name, state, backend_type, count(*) AS n
             FROM a GROUP BY 1, 2, 3, 4, 5) g) AS sessions,
  (SELECT coalesce(json_agg(json_build_array(datname, wait_event_type, n)), '[]')
     FROM (SELECT datname, wait_event_type, count(*) AS n FROM a
            WHERE state = 'active' AND wait_event_type IS NOT NULL GROUP BY 1, 2) w) AS waiting,
  (SELECT coalesce(json_agg(json_build_array(d.datname, coalesce(x.blocked, 0), coalesce(x.blocked_age, 0),
                                             coalesce(x.xact_age, 0), coalesce(x.idle_xact_age, 0),
                                             coalesce(x.active_age, 0))), '[]')
     FROM dbs d LEFT JOIN ages x USING (datname)) AS per_db,
  (SELECT coalesce(json_agg(json_build_array(age_kind, datname, usename, application_name, age)), '[]')
     FROM top WHERE rank <= %(top_n)s) AS top,
  (SELECT count(*) FROM a WHERE backend_type = 'client backend') AS clients,
  (SELECT count(*) FROM a WHERE backend_type = '') AS hidden,
  %(privileged)s AS privileged,
  json_build_array(%(settings)s) AS settings
"""


def sql_for(server_version_num: int) -> str:
    """The statement for a server version (as in `server_version_num`)."""
    return _SQL % {
        "waitstart": _WAITSTART_14 if server_version_num >= 140000 else _WAITSTART_OLD,
        "top_n": TOP_N,
        "privileged": _PRIVILEGED_10 if server_version_num >= 100000 else _PRIVILEGED_OLD,
        "settings": ", ".join(f"json_build_array('{s}', {_setting_sql(s)})" for s in SETTINGS),
    }


def _setting_sql(name: str) -> str:
    """current_setting() reads one value; the pg_settings view builds all ~350 rows, so it is read only for what
    dbwatch's own session overrides: there the server's value is the one RESET would restore (file, role, db)."""
    if name in SESSION_OVERRIDDEN:
        return f"(SELECT reset_val FROM pg_settings WHERE name = '{name}')"  # noqa: S608 - names from SETTINGS
    return f"current_setting('{name}', true)"


def _seconds(text: str) -> float | None:
    """Seconds from a time setting as current_setting() shows it (a bare number is milliseconds)."""
    match = _TIME_RE.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNITS[match.group(2) or "ms"]


class PgActivity:
    """Sessions by database/user/application/state/backend type, waits, blocked sessions, ages, saturation."""

    name: ClassVar[str] = "pg_activity"
    kind: ClassVar[str] = "postgres"

    def __init__(self, scope: Scope) -> None:
        self._t = scope.target
        self._users = Capper(scope.max_label_values)
        self._apps = Capper(scope.max_label_values)
        self._warned = False

    async def collect(self, conn: Any, budget: float) -> Iterable[Sample]:
        """One statement, then fold, zero-fill and shape the samples."""
        version = conn.get_server_version()
        num = version.major * 10000 + version.minor if version.major >= 10 else 0
        row = await conn.fetchrow(sql_for(num), timeout=budget)
        return self.samples(
            sessions=json.loads(row["sessions"]),
            waiting=json.loads(row["waiting"]),
            per_db=json.loads(row["per_db"]),
            top=json.loads(row["top"]),
            clients=int(row["clients"]),
            settings=json.loads(row["settings"]),
            privileged=bool(row["privileged"]),
            hidden=int(row["hidden"]),
        )

    def samples(
        self,
        *,
        sessions: list[list[Any]],
        waiting: list[list[Any]],
        per_db: list[list[Any]],
        top: list[list[Any]],
        clients: int,
        settings: list[list[Any]],
        privileged: bool = True,
        hidden: int = 0,
    ) -> list[Sample]:
        """Shape one collection's rows into samples (no I/O; logs once when the role cannot see all sessions)."""
        t = self._t
        if not privileged and not self._warned:
            self._warned = True
            log.warning("monitoring_role_sees_own_sessions_only", target=t, hidden_sessions=hidden, fix=_FIX)
        users, folded_users = self._users.fold(weights((r[1], r[5]) for r in sessions))
        apps, folded_apps = self._apps.fold(weights((r[2], r[5]) for r in sessions))
        out: list[Sample] = [
            Sample(m.PG_FOLDED_LABEL_VALUES, (t, "usename"), folded_users),
            Sample(m.PG_FOLDED_LABEL_VALUES, (t, "application_name"), folded_apps),
        ]
        counts: dict[tuple[str, str, str, str, str], float] = {}
        for datname, usename, app, state, backend_type, n in sessions:
            u, a = users.get(usename, OTHER), apps.get(app, OTHER)
            if backend_type == "client backend":
                for s in STATES:
                    counts.setdefault((datname, u, a, s, backend_type), 0.0)
            key = (datname, u, a, state, backend_type)
            counts[key] = counts.get(key, 0.0) + n
        out += [Sample(m.PG_SESSIONS, (t, *k), v) for k, v in counts.items()]
        waits: dict[tuple[str, str], float] = {}
        for datname, *_ in per_db:
            for w in WAIT_EVENT_TYPES:
                waits[(datname, w)] = 0.0
        for datname, wait_type, n in waiting:
            waits[(datname, wait_type)] = waits.get((datname, wait_type), 0.0) + n
        out += [Sample(m.PG_WAITING_SESSIONS, (t, *k), v) for k, v in waits.items()]
        for datname, blocked, blocked_age, xact_age, idle_xact_age, active_age in per_db:
            out += [
                Sample(m.PG_BLOCKED_SESSIONS, (t, datname), blocked),
                Sample(m.PG_OLDEST_BLOCKED_WAIT, (t, datname), max(0.0, blocked_age)),
                Sample(m.PG_OLDEST_TRANSACTION, (t, datname), max(0.0, xact_age)),
                Sample(m.PG_OLDEST_IDLE_IN_TRANSACTION, (t, datname), max(0.0, idle_xact_age)),
                Sample(m.PG_OLDEST_ACTIVE_QUERY, (t, datname), max(0.0, active_age)),
            ]
        # Who holds the oldest sessions, by database, user and application (no rank, no client address: those
        # labels would churn as sessions come and go); two of the top sessions from one client keep the older age.
        oldest: dict[tuple[str, ...], float] = {}
        for age_kind, datname, usename, app, age in top:
            key = (t, age_kind, datname, users.get(usename, OTHER), apps.get(app, OTHER))
            oldest[key] = max(oldest.get(key, 0.0), 0.0, age)
        out.extend(Sample(m.PG_TOP_SESSION_AGE, key, age) for key, age in oldest.items())
        values: dict[str, float] = {}
        for name, text in settings:
            if text is None:  # not on this server version (reserved_connections before 16)
                continue
            counts = name.endswith("connections")
            value = float(text) if counts else _seconds(text)
            if value is not None:
                values[name] = value
                out.append(Sample(m.PG_SETTING_CONNECTIONS if counts else m.PG_SETTING_TIMEOUT, (t, name), value))
        available = values.get("max_connections", 0.0) - values.get("superuser_reserved_connections", 0.0)
        available -= values.get("reserved_connections", 0.0)
        if available > 0:
            out.append(Sample(m.PG_CONNECTIONS_USED_RATIO, (t,), clients / available))
        out.append(Sample(m.PG_ALL_SESSIONS_VISIBLE, (t,), 1.0 if privileged else 0.0))
        out.append(Sample(m.PG_HIDDEN_SESSIONS, (t,), float(hidden)))
        return out
