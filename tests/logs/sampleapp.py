"""Application code for format tests: each function raises a real exception shape (lines are looked up by marker)."""

from __future__ import annotations

import asyncio
from pathlib import Path


def marker_line(tag: str) -> int:
    """The line of this file that carries `# at:<tag>`."""
    for i, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# at:{tag}"):
            return i
    raise LookupError(tag)


def chained() -> None:
    try:
        dict[str, int]()["missing"]
    except KeyError as exc:
        raise ValueError("lookup failed") from exc  # at:chained


def during() -> None:
    try:
        1 / 0  # noqa: B018 - the ZeroDivisionError is the point
    except ZeroDivisionError:
        raise RuntimeError("while handling")  # noqa: B904 # at:during


def long_message() -> None:
    raise ValueError("x" * 40_000)  # at:long


async def _leaf(n: int) -> None:
    await asyncio.sleep(0)
    raise TypeError(f"leaf {n}")  # at:leaf


async def _nested() -> None:
    async with asyncio.TaskGroup() as tg:  # at:nested
        tg.create_task(_leaf(2))
        tg.create_task(_leaf(3))


async def _group() -> None:
    async with asyncio.TaskGroup() as tg:  # at:group
        tg.create_task(_leaf(1))
        tg.create_task(_nested())


def group() -> None:
    asyncio.run(_group())


RAISERS = {"chained": chained, "during": during, "long": long_message, "group": group}
