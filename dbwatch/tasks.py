"""The one owner of long-lived tasks: starts and names them, tells which have ended, cancels and awaits them."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Tasks"]


class Tasks:
    """Long-lived tasks under one owner (no bare `create_task` elsewhere), so none outlives or escapes it.

    A task is expected to run until cancelled: one that has ended, however, is named by `dead()` (for /healthz).
    `stop()` cancels every task and awaits them all; errors of tasks that had already ended are retrieved there.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `coro` as a task named `name` (the name /healthz reports if it ends)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def dead(self) -> list[str]:
        """Names of the tasks that are no longer running; empty when healthy."""
        return [t.get_name() for t in self._tasks if t.done()]

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        """Cancel every task (in-flight work included) and wait until all have finished."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
