"""Server-side collectors (one module each) and the explicit name -> class table config validates against."""

from __future__ import annotations

from typing import Final

from dbwatch.collectors.base import Collector, Scope
from dbwatch.collectors.pg_activity import PgActivity
from dbwatch.collectors.pg_database import PgDatabase
from dbwatch.collectors.pgbouncer import Pgbouncer

__all__ = ["COLLECTORS", "Collector", "Scope", "defaults_for"]

COLLECTORS: Final[dict[str, type[Collector]]] = {
    PgActivity.name: PgActivity,
    PgDatabase.name: PgDatabase,
    Pgbouncer.name: Pgbouncer,
}


def defaults_for(kind: str) -> tuple[str, ...]:
    """Collectors a target of this kind runs unless its config lists its own: all that read the kind."""
    return tuple(name for name, cls in COLLECTORS.items() if cls.kind == kind)
