"""dbwatch's in-app hook: `instrument(engine, name=...)` and `DbwatchASGIMiddleware`; stdlib and SQLAlchemy only.

Nothing is imported until used: the sidecar imports `dbwatch.hook.wire` (the datagram format) without SQLAlchemy
and without starting anything of the app side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbwatch.hook.asgi import DbwatchASGIMiddleware

__all__ = ["DbwatchASGIMiddleware", "instrument"]


def __getattr__(name: str) -> Any:
    if name == "DbwatchASGIMiddleware":
        from dbwatch.hook.asgi import DbwatchASGIMiddleware  # noqa: PLC0415 - lazy export, see the module docstring

        return DbwatchASGIMiddleware
    raise AttributeError(name)


def instrument(
    engine: Any,
    name: str = "default",
    *,
    app: str | None = None,
    sidecar: str | None = None,
    token: str | None = None,
    interval: float | None = None,
    server_idle_timeout: float | None = None,
) -> bool:
    """Report an AsyncEngine's or Engine's pool to the dbwatch sidecar; idempotent, never raises.

    See `dbwatch.hook.sqlalchemy.instrument` for the arguments.
    """
    from dbwatch.hook.sqlalchemy import instrument as _instrument  # noqa: PLC0415 - keeps SQLAlchemy out of the sidecar

    return _instrument(
        engine,
        name,
        app=app,
        sidecar=sidecar,
        token=token,
        interval=interval,
        server_idle_timeout=server_idle_timeout,
    )
