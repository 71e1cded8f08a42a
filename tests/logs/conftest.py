"""Log-test fixtures: a corpus of real logged tracebacks in every format, generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.logs import corpus, wrap


@pytest.fixture(scope="session")
def log_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """plain, json (format_exc_info), dict (dict_tracebacks), cri and docker files of the same records."""
    d = tmp_path_factory.mktemp("corpus")
    files = {"plain": d / "app.log", "json": d / "app.json.log", "dict": d / "app.dict.log"}
    corpus.write_plain(files["plain"])
    corpus.write_structlog(files["json"], dict_tracebacks=False)
    corpus.write_structlog(files["dict"], dict_tracebacks=True)
    lines = files["plain"].read_text().splitlines()
    # Traceback lines on stderr; every info line on stdout, put between them so the streams interleave.
    streamed = [("stdout" if " INFO " in ln else "stderr", ln) for ln in lines]
    files["cri"] = d / "app.cri.log"
    files["cri"].write_text(wrap.cri(_interleave(streamed)))
    files["docker"] = d / "app.docker.log"
    files["docker"].write_text(wrap.docker(_interleave(streamed)))
    return files


def _interleave(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Move each stdout line a few lines later, into the middle of the stderr traceback that follows it."""
    out: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for i, item in enumerate(lines):
        if item[0] == "stdout":
            held.append(item)
        else:
            out.append(item)
            if held and i % 3 == 0:
                out.append(held.pop(0))
    return out + held
