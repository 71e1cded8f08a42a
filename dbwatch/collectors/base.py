"""What every collector is: one narrow protocol (label values from outside are capped by `dbwatch.labels.Capper`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from dbwatch.store import Sample

__all__ = ["Collector", "Scope", "weights"]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a collector is built with: the target's name (its label) and the label-value cap."""

    target: str
    max_label_values: int


class Collector(Protocol):
    """Reads one view over the target's monitoring connection: one statement per view, aggregated in SQL."""

    name: ClassVar[str]  # config name and the `job` label
    kind: ClassVar[str]  # target kind it reads: postgres or pgbouncer

    def __init__(self, scope: Scope) -> None: ...

    async def collect(self, conn: Any, budget: float) -> Iterable[Sample]:
        """Return gauge and counter samples (counters as the source's cumulative value); raise on failure."""
        ...


def weights(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Sum weights per value."""
    out: dict[str, float] = {}
    for value, w in rows:
        out[value] = out.get(value, 0.0) + w
    return out
