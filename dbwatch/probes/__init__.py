"""Probe kinds (one module each) and the explicit name -> class table; dbwatch.probes.job runs any of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from dbwatch.plugins import Table
from dbwatch.probes.base import Probe

__all__ = ["PROBES", "Probe"]

# A kind's module (and its client library: aiohttp's for http_login, psycopg for pgbouncer) loads only when a
# target of that kind is configured.
PROBES: Final = Table[Probe](
    {
        "postgres": "dbwatch.probes.postgres:PostgresProbe",
        "http_login": "dbwatch.probes.http_login:HttpLoginProbe",
        "pgbouncer": "dbwatch.probes.pgbouncer:PgbouncerProbe",
    }
)

if TYPE_CHECKING:  # mypy checks each class against the protocol; at run time a module loads on first lookup
    from dbwatch.probes.http_login import HttpLoginProbe
    from dbwatch.probes.pgbouncer import PgbouncerProbe
    from dbwatch.probes.postgres import PostgresProbe

    _CHECKED: tuple[type[Probe], ...] = (PostgresProbe, HttpLoginProbe, PgbouncerProbe)
