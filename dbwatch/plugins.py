"""One way to register a plug-in (a probe kind, a collector): a class per module, named in its package's table.

Each package's `__init__.py` holds a `Table` of name -> "module:Class" (as blackbox_exporter's prober table and
postgres_exporter's collector list: explicit, not an import side effect). A module is imported when its name is first
looked up, so a config that never names a kind never loads that kind's libraries. The class's own `name` must
equal its key; the lookup checks it, and tests/test_plugins.py looks every entry up.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import ClassVar, Protocol, TypeVar

__all__ = ["Plugin", "Table"]


class Plugin(Protocol):
    """What every plug-in class has: the name config uses for it (and its `job`/`kind` label value)."""

    name: ClassVar[str]


P = TypeVar("P", bound=Plugin)


class Table(Mapping[str, type[P]]):
    """name -> plug-in class, each module imported on its first lookup; iterating gives the names only."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self._entries = dict(entries)
        self._loaded: dict[str, type[P]] = {}

    def __getitem__(self, name: str) -> type[P]:
        cls = self._loaded.get(name)
        if cls is None:
            module, _, attr = self._entries[name].partition(":")
            cls = getattr(importlib.import_module(module), attr)
            if cls.name != name:
                raise TypeError(f"{module}:{attr} is named {cls.name!r} but registered as {name!r}")
            self._loaded[name] = cls
        return cls

    def __contains__(self, name: object) -> bool:
        return name in self._entries  # without importing the module

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
