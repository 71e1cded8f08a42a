"""The one cross-check of `slos:` against `logs.sources`: an access SLO whose source cannot feed it never fires.

Config loading calls it. It needs nothing of dbwatch's at run time (config types are for the type checker only), so
config.py can call it without an import cycle; it returns the problem and config.py raises it as a ConfigError.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbwatch.config import SLO, LogSource

__all__ = ["slo_source_problem"]


def slo_source_problem(slos: Iterable[SLO], sources: Iterable[LogSource], hook: bool) -> str | None:
    """Why an access SLO can never fire (key path first), or None: its `source:` names no log source, or one without
    `access:`, or it has no `source:` and nothing feeds request metrics.

    Args:
        hook: the in-app hook is configured; its ASGI middleware feeds the same family with `source` = the app's
            name, which the config does not know, so a name that is no log source is then taken as an app.
    """
    by_name = {s.name: (i, s) for i, s in enumerate(sources)}
    with_access = [s.name for _, s in by_name.values() if s.access is not None]
    for n, slo in enumerate(slos):
        if slo.source != "access":
            continue
        if slo.log_source is None:
            if not with_access and not hook:
                return (
                    f"slos[{n}].from: access reads request latency, but no logs.sources[] has an access: mapping "
                    "and no hook: is configured, so this SLO can never fire"
                )
            continue
        found = by_name.get(slo.log_source)
        if found is None:
            if hook:
                continue
            names = ", ".join(with_access) or "none"
            return (
                f"slos[{n}].source: no log source named {slo.log_source!r} (sources with access: {names}; "
                "an in-app middleware's app name needs hook:)"
            )
        i, src = found
        if src.access is None:
            return (
                f"slos[{n}].source: log source {slo.log_source!r} has no access: mapping (logs.sources[{i}].access), "
                "so it feeds no request metrics and this SLO can never fire"
            )
    return None
