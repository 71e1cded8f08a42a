"""What /healthz and /readyz say: liveness from the running tasks, readiness from start-up and the store's targets.

The HTTP side only encodes these answers; the composition root (dbwatch.app) is the `Health` it reads.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from dbwatch.store import Store

__all__ = ["Health", "liveness", "readiness"]


class Health(Protocol):
    """The running daemon as the health endpoints see it."""

    def dead(self) -> list[str]:
        """Names of long-lived tasks that have ended (none should)."""
        ...

    def task_count(self) -> int:
        """How many scheduled jobs run."""
        ...

    def started(self) -> bool:
        """Whether every start-up step (hook listener, tailers, scheduler) has finished."""
        ...

    def first_cycle_done(self) -> bool:
        """Whether every job has finished one run."""
        ...


def liveness(health: Health) -> tuple[int, dict[str, Any]]:
    """(status, body) of /healthz: alive unless a task has ended; never depends on a database."""
    dead = health.dead()
    if dead:
        return 503, {"status": "fail", "dead_tasks": dead}
    return 200, {"status": "ok", "tasks": health.task_count()}


def readiness(health: Health, store: Store) -> tuple[int, dict[str, Any]]:
    """(status, body) of /readyz: dbwatch's own readiness; a target counts only where it opted in to gating.

    The default keeps a database or login outage out of the pod's readiness: a sidecar's readiness gates its whole
    pod, so gating on a shared dependency would take every pod out of its Service at once (alerts page instead).
    """
    now = time.monotonic()
    own = {
        "config_loaded": True,  # the daemon is built from a validated config only
        "listeners_up": health.started(),
        "first_cycle_done": health.first_cycle_done(),
    }
    ready = all(own.values())
    targets: dict[str, Any] = {}
    for name, st in store.status.items():
        age = None if st.last_success is None else round(now - st.last_success, 3)
        fresh = age is not None and age <= st.stale_after
        if st.gates_readiness and not fresh:
            ready = False
        targets[name] = {
            "gates_readiness": st.gates_readiness,
            "up": st.up,
            "fresh": fresh,
            "last_success_age_seconds": age,
            "reason": st.last_reason if not st.up else None,
        }
    status = "ready" if ready else "not_ready"
    return (200 if ready else 503), {"status": status, "checks": own, "targets": targets}
