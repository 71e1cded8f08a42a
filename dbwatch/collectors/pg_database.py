"""pg_stat_database: per-database transaction, deadlock, temp-file, conflict, buffer and session counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Final

from dbwatch import metrics as m
from dbwatch.collectors.base import Scope
from dbwatch.metrics import MetricSpec
from dbwatch.store import Sample

__all__ = ["PgDatabase", "sql_for"]

# column -> counter; every column exists from PostgreSQL 9.2 on.
COLUMNS: Final[dict[str, MetricSpec]] = {
    "xact_commit": m.PG_DATABASE_XACT_COMMIT,
    "xact_rollback": m.PG_DATABASE_XACT_ROLLBACK,
    "deadlocks": m.PG_DATABASE_DEADLOCKS,
    "conflicts": m.PG_DATABASE_CONFLICTS,
    "temp_files": m.PG_DATABASE_TEMP_FILES,
    "temp_bytes": m.PG_DATABASE_TEMP_BYTES,
    "blks_hit": m.PG_DATABASE_BLKS_HIT,
    "blks_read": m.PG_DATABASE_BLKS_READ,
}

# Session counters, PostgreSQL 14+; idle_in_transaction_time is read in seconds (the view has milliseconds).
SESSION_COLUMNS: Final[dict[str, MetricSpec]] = {
    "sessions": m.PG_DATABASE_SESSIONS,
    "sessions_abandoned": m.PG_DATABASE_SESSIONS_ABANDONED,
    "sessions_fatal": m.PG_DATABASE_SESSIONS_FATAL,
    "sessions_killed": m.PG_DATABASE_SESSIONS_KILLED,
    "idle_in_transaction_time": m.PG_DATABASE_IDLE_IN_TRANSACTION,
}
# The row with a NULL datname holds shared catalogs (PostgreSQL 12+); it is kept, as ''.
_SQL: Final = (
    "SELECT coalesce(datname, '') AS datname, xact_commit, xact_rollback, deadlocks, conflicts,"
    " temp_files, temp_bytes, blks_hit, blks_read FROM pg_stat_database"
)
_SQL_14: Final = (
    "SELECT coalesce(datname, '') AS datname, xact_commit, xact_rollback, deadlocks, conflicts,"
    " temp_files, temp_bytes, blks_hit, blks_read, sessions, sessions_abandoned, sessions_fatal, sessions_killed,"
    " idle_in_transaction_time / 1000.0 AS idle_in_transaction_time FROM pg_stat_database"
)


def sql_for(server_version_num: int) -> str:
    """The statement for a server version (as in `server_version_num`)."""
    return _SQL_14 if server_version_num >= 140000 else _SQL


class PgDatabase:
    """Cumulative per-database counters, as the server counts them."""

    name: ClassVar[str] = "pg_database"
    kind: ClassVar[str] = "postgres"

    def __init__(self, scope: Scope) -> None:
        self._t = scope.target

    async def collect(self, conn: Any, budget: float) -> Iterable[Sample]:
        """One statement; NULL counters are skipped, never reported as 0."""
        version = conn.get_server_version()
        num = version.major * 10000 + version.minor if version.major >= 10 else 0
        rows = await conn.fetch(sql_for(num), timeout=budget)
        columns = COLUMNS | SESSION_COLUMNS if num >= 140000 else COLUMNS
        return [
            Sample(spec, (self._t, row["datname"]), float(row[col]))
            for row in rows
            for col, spec in columns.items()
            if row[col] is not None
        ]
