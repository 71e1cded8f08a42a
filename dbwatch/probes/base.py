"""What every probe kind is: one narrow protocol, and the riders a postgres probe's one statement carries."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from dbwatch.config import Target

__all__ = ["Probe", "Rider", "Riders"]


class Rider(Protocol):
    """Something that reads a few columns in the probe's one statement instead of a second connection of its own."""

    def columns(self) -> str | None:
        """The select-list to add now (column names unique across riders), or None."""
        ...

    def seen(self, row: Mapping[str, Any]) -> None:
        """The probe's row (only after a successful probe)."""
        ...


class Riders:
    """Several riders on one probe: their columns in one statement, the row to each."""

    def __init__(self, *riders: Rider | None) -> None:
        self._riders = [r for r in riders if r is not None]

    def columns(self) -> str | None:
        """Every rider's columns now, or None when none asks."""
        wanted = [c for r in self._riders if (c := r.columns()) is not None]
        return ", ".join(wanted) if wanted else None

    def seen(self, row: Mapping[str, Any]) -> None:
        """Hand the row to each rider."""
        for r in self._riders:
            r.seen(row)


class Probe(Protocol):
    """One probe kind, built once per target: probes it once within `timeout`, returns seconds per phase, or raises.

    The job around it (dbwatch.probes.job) records up, phases, failures and the last success, as blackbox_exporter's
    handler does around its probers.
    """

    name: ClassVar[str]  # the target's `kind`
    phases: ClassVar[tuple[str, ...]]  # every phase is created at zero
    reasons: ClassVar[type[StrEnum]]  # the kind's closed set of failure reasons; it has `timeout`

    def __init__(self, target: Target, rider: Rider | None = None) -> None: ...

    async def probe(self, timeout: float) -> Mapping[str, float]:
        """Probe the target once; seconds per phase, or raise."""
        ...

    def classify(self, exc: BaseException) -> StrEnum:
        """The reason (one of `reasons`) for a failure this probe raised."""
        ...
