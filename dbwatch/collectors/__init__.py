"""Server-side collectors (one module each) and the explicit name -> class table config validates against."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from dbwatch.collectors.base import Collector, Scope
from dbwatch.plugins import Table

__all__ = ["COLLECTORS", "Collector", "Scope", "defaults_for"]

COLLECTORS: Final = Table[Collector](
    {
        "pg_activity": "dbwatch.collectors.pg_activity:PgActivity",
        "pg_database": "dbwatch.collectors.pg_database:PgDatabase",
        "pgbouncer": "dbwatch.collectors.pgbouncer:Pgbouncer",
    }
)

if TYPE_CHECKING:  # mypy checks each class against the protocol; at run time a module loads on first lookup
    from dbwatch.collectors.pg_activity import PgActivity
    from dbwatch.collectors.pg_database import PgDatabase
    from dbwatch.collectors.pgbouncer import Pgbouncer

    _CHECKED: tuple[type[Collector], ...] = (PgActivity, PgDatabase, Pgbouncer)


def defaults_for(kind: str) -> tuple[str, ...]:
    """Collectors a target of this kind runs unless its config lists its own: all that read the kind."""
    return tuple(name for name, cls in COLLECTORS.items() if cls.kind == kind)
