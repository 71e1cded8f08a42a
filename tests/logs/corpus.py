"""Write real logging/structlog output with real tracebacks, once per session, for the format tests."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from tests.logs import sampleapp

__all__ = ["EXPECT", "ORDER", "Expected", "expected", "sampleapp", "write_plain", "write_structlog"]


@dataclass(frozen=True)
class Expected:
    """One logged traceback: which raiser, the final and root classes, and the app line it points at."""

    kind: str
    final: str
    root: str
    line: int
    leaves: int = 0


EXPECT = {
    "chained": ("ValueError", "KeyError", "chained", 0),
    "during": ("RuntimeError", "ZeroDivisionError", "during", 0),
    "long": ("ValueError", "ValueError", "long", 0),
    "group": ("ExceptionGroup", "ExceptionGroup", "leaf", 3),
}
ORDER = ["chained", "during", "group", "long", "chained", "group"]


def _exc_info(kind: str) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    try:
        sampleapp.RAISERS[kind]()
    except BaseException:
        info = sys.exc_info()
        assert info[0] is not None
        assert info[1] is not None
        return info[0], info[1], info[2]
    raise AssertionError(kind)


def expected() -> list[Expected]:
    return [Expected(k, EXPECT[k][0], EXPECT[k][1], sampleapp.marker_line(EXPECT[k][2]), EXPECT[k][3]) for k in ORDER]


def write_plain(path: Path) -> None:
    """stdlib logging with the usual format; info lines and decoys around each logged traceback."""
    logger = logging.Logger("app.auth")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
    for i, kind in enumerate(ORDER):
        logger.info("request %d ok", i)
        logger.info('user searched for "Traceback (most recent call last):"')  # a decoy
        logger.error("Login failed for request %d", i, exc_info=_exc_info(kind))
    logger.info("done")
    handler.close()


def write_structlog(path: Path, *, dict_tracebacks: bool) -> None:
    """structlog JSON lines: the traceback as a string (format_exc_info) or structured (dict_tracebacks)."""
    with path.open("w") as f:
        log = structlog.wrap_logger(
            structlog.PrintLogger(f),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.dict_tracebacks if dict_tracebacks else structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
        for i, kind in enumerate(ORDER):
            log.info("request_ok", n=i)
            log.info("search", q="Traceback (most recent call last):")
            log.error("login_failed", n=i, logger="app.auth", exc_info=_exc_info(kind))
        f.write(json.dumps({"event": "done"}) + "\n")
