"""pgbouncer's admin console: SHOW POOLS and SHOW STATS, over psycopg's simple query protocol.

Columns are read by name, so a pgbouncer that adds a `cl_*`/`sv_*` state or drops a stat still works; unknown
columns are ignored. pgbouncer reports times in microseconds; they are exposed in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Final

from dbwatch import metrics as m
from dbwatch.collectors.base import Scope
from dbwatch.metrics import MetricSpec
from dbwatch.store import Sample

__all__ = ["Pgbouncer"]

_US: Final = 1e-6
# SHOW STATS column -> (metric, scale to base units)
STATS: Final[dict[str, tuple[MetricSpec, float]]] = {
    "total_xact_count": (m.PGBOUNCER_TRANSACTIONS, 1.0),
    "total_query_count": (m.PGBOUNCER_QUERIES, 1.0),
    "total_received": (m.PGBOUNCER_RECEIVED_BYTES, 1.0),
    "total_sent": (m.PGBOUNCER_SENT_BYTES, 1.0),
    "total_xact_time": (m.PGBOUNCER_XACT_TIME, _US),
    "total_query_time": (m.PGBOUNCER_QUERY_TIME, _US),
    "total_wait_time": (m.PGBOUNCER_WAIT_TIME, _US),
    "avg_xact_time": (m.PGBOUNCER_AVG_XACT_TIME, _US),
    "avg_query_time": (m.PGBOUNCER_AVG_QUERY_TIME, _US),
    "avg_wait_time": (m.PGBOUNCER_AVG_WAIT_TIME, _US),
}


async def _show(conn: Any, what: str) -> list[dict[str, Any]]:
    # prepare=False and no parameters: psycopg sends a simple Query message, the only kind the console takes.
    cur = await conn.execute(f"SHOW {what}", prepare=False)
    names: Sequence[str] = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


class Pgbouncer:
    """Pool client/server connections by state and max wait; per-database traffic and timing stats."""

    name: ClassVar[str] = "pgbouncer"
    kind: ClassVar[str] = "pgbouncer"

    def __init__(self, scope: Scope) -> None:
        self._t = scope.target

    async def collect(self, conn: Any, budget: float) -> Iterable[Sample]:
        """Two statements: SHOW POOLS, SHOW STATS."""
        pools = await _show(conn, "POOLS")
        stats = await _show(conn, "STATS")
        return self.samples(pools, stats)

    def samples(self, pools: list[dict[str, Any]], stats: list[dict[str, Any]]) -> list[Sample]:
        """Shape the two result sets into samples (pure)."""
        t = self._t
        out: list[Sample] = []
        for p in pools:
            db, user = str(p["database"]), str(p["user"])
            for col, value in p.items():
                if col.startswith("cl_") and value is not None:
                    out.append(Sample(m.PGBOUNCER_CLIENTS, (t, db, user, col[3:]), float(value)))
                elif col.startswith("sv_") and value is not None:
                    out.append(Sample(m.PGBOUNCER_SERVERS, (t, db, user, col[3:]), float(value)))
            if p.get("maxwait") is not None:
                wait = float(p["maxwait"]) + float(p.get("maxwait_us") or 0) * _US
                out.append(Sample(m.PGBOUNCER_MAXWAIT, (t, db, user), wait))
        for s in stats:
            db = str(s["database"])
            for col, (spec, scale) in STATS.items():
                if s.get(col) is not None:
                    out.append(Sample(spec, (t, db), float(s[col]) * scale))
        return out
