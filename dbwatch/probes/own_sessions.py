"""This pod's own sessions as the server sees them, read in the probe's one statement (pod-local work).

The sessions are the ones from the same client address as the probe's own connection (`inet_client_addr()`: in
Kubernetes the pod IP, shared by the app and its sidecar), or, with `own_sessions.application_name`, the ones
with that `application_name` (e.g. `myapp-${POD_NAME}`); dbwatch's own sessions are left out. Counts by state
(the standard states at 0) and the oldest idle-in-transaction age sit next to the hook's pool metrics of the
same pod.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from dbwatch import metrics as m
from dbwatch.collectors.pg_activity import STATES
from dbwatch.config import Target
from dbwatch.probes.postgres import APPLICATION_NAME
from dbwatch.store import Sample, Store

__all__ = ["OwnSessions", "own_sessions_column"]


def _literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings: only the quote is doubled)."""
    return "'" + text.replace("'", "''") + "'"


def own_sessions_column(application_name: str | None) -> str:
    """The probe's column: one JSON array [{state: count}, oldest idle-in-transaction seconds]."""
    match = (
        f"s.application_name = {_literal(application_name)}"
        if application_name is not None
        else "s.client_addr IS NOT DISTINCT FROM inet_client_addr()"
    )
    return (
        "(WITH own AS (SELECT coalesce(s.state, '') AS state, s.state_change FROM pg_stat_activity s"  # noqa: S608
        f" WHERE s.datname = current_database() AND s.pid <> pg_backend_pid() AND {match}"
        f" AND s.backend_type = 'client backend' AND s.application_name <> {_literal(APPLICATION_NAME)})"
        " SELECT json_build_array("
        "(SELECT coalesce(json_object_agg(state, n), '{}') FROM (SELECT state, count(*) AS n FROM own GROUP BY 1) g),"
        " (SELECT coalesce(max(extract(epoch FROM now() - state_change)::float8)"
        " FILTER (WHERE state LIKE 'idle in transaction%'), 0) FROM own))) AS own_sessions"
    )


class OwnSessions:
    """The probe rider that reports this pod's sessions on the target."""

    def __init__(self, target: Target, store: Store) -> None:
        self._t = target.name
        self._store = store
        self._column: Final = own_sessions_column(target.own_sessions_application_name)

    def columns(self) -> str:
        """Always the same column."""
        return self._column

    def seen(self, row: Mapping[str, Any]) -> None:
        """Replace this target's own-sessions snapshot (states the server did not show read 0)."""
        states, idle_xact_age = json.loads(row["own_sessions"])
        counts = dict.fromkeys(STATES, 0.0) | {str(k): float(v) for k, v in states.items()}
        samples = [Sample(m.OWN_SESSIONS, (self._t, state), n) for state, n in counts.items()]
        samples.append(Sample(m.OWN_OLDEST_IDLE_IN_TRANSACTION, (self._t,), max(0.0, float(idle_xact_age))))
        self._store.replace(("own_sessions", self._t), samples)
