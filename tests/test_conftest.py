"""tests/conftest.py's opt-in suites: a test is skipped for its marker, never for a keyword that only the
checkout's folder gives it (a clone named "bench" once skipped every test in it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = """
import pytest


def test_plain():
    assert True


@pytest.mark.bench
def test_marked():
    assert True
"""


def test_a_checkout_named_after_a_suite_runs_its_tests(tmp_path: Path) -> None:
    checkout = tmp_path / "bench"  # the folder name of an opt-in suite
    checkout.mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), checkout / "conftest.py")
    (checkout / "test_x.py").write_text(TESTS)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-q",
        "-rs",
        "test_x.py",
    ]
    done = subprocess.run(argv, cwd=checkout, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "bench suite: run with --run-bench" in done.stdout  # the skip is the marked test's
