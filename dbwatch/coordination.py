"""Database-wide work exactly once per database: a session-level advisory lock on the one monitoring session.

However many dbwatch instances watch a database (a sidecar in every pod), only the one holding the lock runs the
target's database-wide collectors (`pg_activity`, `pg_database`): it takes `pg_try_advisory_lock` on its monitoring
session and keeps it for the life of that session. The others hold no persistent session: each probe (the fresh
connection every instance opens anyway) also reads `pg_locks` to see whether the lock is held, and when it is free
the instance wakes its collectors, which open the monitoring session and try the lock; the losers close it again.

A holder that dies (SIGKILL, pod deleted) drops its TCP connection, the server ends its session and the lock with
it, and the next probe of any other instance (within one probe interval plus its timeout) sees it free. A holder
cut off by the network is bounded by the keepalive settings of its session (`keepalive_settings`): the server ends
the session within `tcp_keepalives_idle + tcp_keepalives_count x tcp_keepalives_interval` (about one collection
interval plus the budget) of its last traffic, and `tcp_user_timeout` bounds a send left unacknowledged as long.
On its side, the cut-off holder drops its session (and its series) at the first collection that gets no answer.

`collect.mode`: `auto` (the above), `always` (a central Deployment: collect whatever the lock says, and hold it when
free so the `auto` instances stay idle), `never` (a sidecar next to a central Deployment: no monitoring session).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, Final, Protocol

from dbwatch import metrics as m
from dbwatch.config import Target
from dbwatch.store import Store

__all__ = ["LOCK_CLASSID", "LOCK_OBJID", "Coordinator", "Follower", "Share", "Standby", "keepalive_settings"]

# pg_try_advisory_lock(int4, int4): 'dbwc' and 1 (database-wide collectors). Advisory locks are per database.
LOCK_CLASSID: Final = 0x64627763
LOCK_OBJID: Final = 1

TRY_LOCK_SQL: Final = f"SELECT pg_try_advisory_lock({LOCK_CLASSID}, {LOCK_OBJID})"
# The probe's column: is the lock free? pg_locks is readable by every role; the two-int4 form has objsubid 2.
LOCK_FREE_COLUMN: Final = (
    "NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"  # noqa: S608 - constants only
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    f" AND classid = {LOCK_CLASSID} AND objid = {LOCK_OBJID} AND objsubid = 2) AS lock_free"
)
KEEPALIVE_COUNT: Final = 3


class Share(Protocol):
    """What a monitoring connection and its collector jobs ask of a target's share of the database-wide work."""

    takes_lock: bool
    mode: str

    @property
    def holder(self) -> bool: ...

    def waker(self) -> asyncio.Event: ...

    def may_connect(self) -> bool: ...

    def acquired(self, got: bool) -> None: ...

    def released(self) -> None: ...

    def lost_race(self) -> None: ...


class Standby(Exception):
    """This instance does not collect the target's database-wide work now (another holds the lock, or mode never)."""


def keepalive_settings(target: Target) -> dict[str, str]:
    """Server-side TCP keepalive of the monitoring session: a cut-off holder's session ends within the bound.

    Bound: idle + count x interval = ceil(collect.interval) + 3 x ceil(budget / 3) seconds after its last traffic.
    """
    idle = max(1, math.ceil(target.collect.interval))
    interval = max(1, math.ceil(target.collect.budget / KEEPALIVE_COUNT))
    return {
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": str(interval),
        "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    }


def keepalive_bound(target: Target) -> float:
    """Seconds after its last traffic within which the server ends a cut-off holder's session (and the lock)."""
    s = keepalive_settings(target)
    return float(s["tcp_keepalives_idle"]) + KEEPALIVE_COUNT * float(s["tcp_keepalives_interval"])


class Coordinator:
    """One target's share of the database-wide work: whether this instance may open the session and collect."""

    takes_lock = True

    def __init__(self, target: Target, store: Store) -> None:
        self.target = target.name
        self.mode: str = target.collect.mode
        self._store = store
        self.holder = False
        # Try once at start-up; afterwards only when a probe saw the lock free (or after losing our own session).
        self._free_seen = self.mode != "never"
        self._wakers: list[asyncio.Event] = []
        self._follower_wakers: list[asyncio.Event] = []  # pgbouncer targets collected where this one is
        self._source = ("coordination", target.name)
        store.set(self._source, m.DATABASE_WIDE_COLLECTING, (self.target, self.mode), 0.0)
        store.inc(m.COORDINATION_TAKEOVERS, (self.target,), 0)

    def waker(self) -> asyncio.Event:
        """An event set when this instance should try to collect now (one per collector job)."""
        event = asyncio.Event()
        self._wakers.append(event)
        return event

    def follower_waker(self) -> asyncio.Event:
        """An event set when this instance takes the lock (for a Follower's collector jobs)."""
        event = asyncio.Event()
        self._follower_wakers.append(event)
        return event

    # The probe's side.
    def columns(self) -> str | None:
        """What the probe adds to its statement: the lock check, while an `auto` instance does not hold the lock."""
        return LOCK_FREE_COLUMN if self.mode == "auto" and not self.holder else None

    def seen(self, row: Mapping[str, Any]) -> None:
        """The probe's answer: wake the collectors when the lock is free."""
        free = row.get("lock_free")
        if free and not self.holder:
            self._free_seen = True
            for event in self._wakers:
                event.set()

    # The monitoring connection's side.
    def may_connect(self) -> bool:
        """Whether to open the monitoring session now (else the collection is a standby run)."""
        if self.mode == "always":
            return True
        return self.mode == "auto" and (self.holder or self._free_seen)

    def acquired(self, got: bool) -> None:
        """The outcome of the lock attempt on a new session; `always` collects either way."""
        self._free_seen = False
        self.holder = got or self.mode == "always"
        if self.holder:
            for event in self._wakers:  # a probe that saw the lock free just before: nothing left to wake for
                event.clear()
        if got:
            self._store.inc(m.COORDINATION_TAKEOVERS, (self.target,))
            for event in self._follower_wakers:
                event.set()
        self._store.set(self._source, m.DATABASE_WIDE_COLLECTING, (self.target, self.mode), float(self.holder))

    def lost_race(self) -> None:
        """The session could not even open (the role's CONNECTION LIMIT): wait for a probe to see the lock free."""
        self._free_seen = False

    def released(self) -> None:
        """The session is gone (lost, closed, cut short): no longer collecting; try again at the next tick."""
        if self.holder:
            self._free_seen = True
        self.holder = False
        self._store.set(self._source, m.DATABASE_WIDE_COLLECTING, (self.target, self.mode), 0.0)


class Follower:
    """A pgbouncer target's share (`collect.lock_target`): collected where the named postgres target is collected.

    pgbouncer's admin console has no advisory locks, so the instance that holds the postgres target's lock also
    collects the pgbouncer target; the others hold no session to pgbouncer either.
    """

    takes_lock = False

    def __init__(self, leader: Coordinator) -> None:
        self._leader = leader
        self.mode = leader.mode

    @property
    def holder(self) -> bool:
        """Whether this instance collects now: it does the leader's database-wide work."""
        return self._leader.holder

    def waker(self) -> asyncio.Event:
        """Set when the leader takes its lock, so the pgbouncer collectors start at once too."""
        return self._leader.follower_waker()

    def may_connect(self) -> bool:
        """Only where the leader collects."""
        return self._leader.holder

    def acquired(self, got: bool) -> None:
        """Nothing to take: the leader's lock decides."""

    def released(self) -> None:
        """Nothing to release."""

    def lost_race(self) -> None:
        """No race: the leader's lock decides."""
