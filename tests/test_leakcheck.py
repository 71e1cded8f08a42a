"""The session-level leak check itself: a test that prints the sentinel makes the whole run fail."""

from __future__ import annotations

import pytest

from tests.helpers import REPO

pytest_plugins = ["pytester"]


def test_a_leaking_test_fails_the_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        test_leak="""
from tests.helpers import SENTINEL_FORMS

def test_prints_it():
    print("dsn=postgresql://app:" + SENTINEL_FORMS[1] + "@h/d")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*SENTINEL PASSWORD LEAKED in: test_leak.py::test_prints_it*"])
