"""pg_stat_database: per-database transaction, deadlock, temp-file, conflict and buffer counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Final

from dbwatch import metrics as m
from dbwatch.collectors.base import Scope
from dbwatch.metrics import MetricSpec
from dbwatch.store import Sample

__all__ = ["PgDatabase"]

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

# The row with a NULL datname holds shared catalogs (PostgreSQL 12+); it is kept, as ''.
_SQL: Final = (
    "SELECT coalesce(datname, '') AS datname, xact_commit, xact_rollback, deadlocks, conflicts,"
    " temp_files, temp_bytes, blks_hit, blks_read FROM pg_stat_database"
)


class PgDatabase:
    """Cumulative per-database counters, as the server counts them."""

    name: ClassVar[str] = "pg_database"
    kind: ClassVar[str] = "postgres"

    def __init__(self, scope: Scope) -> None:
        self._t = scope.target

    async def collect(self, conn: Any, budget: float) -> Iterable[Sample]:
        """One statement; NULL counters are skipped, never reported as 0."""
        rows = await conn.fetch(_SQL, timeout=budget)
        return [
            Sample(spec, (self._t, row["datname"]), float(row[col]))
            for row in rows
            for col, spec in COLUMNS.items()
            if row[col] is not None
        ]
