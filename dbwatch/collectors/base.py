"""What every collector is: one narrow protocol, plus the cardinality cap for label values from outside."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

from dbwatch.store import Sample

__all__ = ["OTHER", "Collector", "LabelCap", "Scope", "weights"]

# The label value that stands for every value beyond the cap.
OTHER: Final = "__other__"


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


class LabelCap:
    """Keeps at most `limit` distinct values of one label; the rest read as `__other__`.

    A value keeps its slot while it is present, so series stay put; free slots go to the largest new values.
    """

    __slots__ = ("_kept", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def fold(self, weights: Mapping[str, float]) -> tuple[dict[str, str], int]:
        """Map each present value to itself or OTHER; also return how many distinct values were folded."""
        present = set(weights)
        kept = self._kept & present
        for value in sorted(present - kept, key=lambda v: (-weights[v], v)):
            if len(kept) >= self.limit:
                break
            kept.add(value)
        self._kept = kept
        return {v: v if v in kept else OTHER for v in present}, len(present) - len(kept)


def weights(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Sum weights per value."""
    out: dict[str, float] = {}
    for value, w in rows:
        out[value] = out.get(value, 0.0) + w
    return out
