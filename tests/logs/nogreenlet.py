"""Run as a script: an async engine used where greenlet is not installed, logged in plain text, JSON and dict form.

`python -m tests.logs.nogreenlet DIR URL`. The import of greenlet is blocked before SQLAlchemy loads, as in an
environment that installed `sqlalchemy` without its `asyncio` extra (2.1 no longer pulls greenlet in). SQLAlchemy
2.1 refuses at `import sqlalchemy.ext.asyncio`, 2.0 at the first connect.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.modules["greenlet"] = None  # type: ignore[assignment]  # import greenlet -> ImportError, as if not installed

import structlog  # noqa: E402


async def query(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine  # at:greenlet_import

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:  # at:greenlet_connect
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


def main(out: Path, url: str) -> None:
    try:
        asyncio.run(query(url))
    except Exception:
        info = sys.exc_info()
    else:
        raise SystemExit("no error")
    logger = logging.Logger("app")
    handler = logging.FileHandler(out / "plain.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
    logger.error("Request failed", exc_info=info)
    handler.close()
    for key, proc in (("json", structlog.processors.format_exc_info), ("dict", structlog.processors.dict_tracebacks)):
        with (out / f"{key}.log").open("w") as f:
            slog = structlog.wrap_logger(
                structlog.PrintLogger(f), processors=[proc, structlog.processors.JSONRenderer()]
            )
            slog.error("request_failed", exc_info=info)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
