"""Shared pytest configuration (kept minimal: no imports of torch or the server here, so that a
serving-only install can still collect the tests it can run).

- ``--run-soak``: the long reliability suites marked ``soak`` run only when it is given (``make soak``).
- ``--run-browser``: the headless-Chromium tests marked ``browser`` run only when it is given
  (``make browser-test``); they fail, not skip, when Chromium is missing.
- ``--run-zoo``: the deepest SpikingJelly model-zoo networks (marked ``zoo``, 40-60 s of export each) run
  only when it is given (``make zoo-test``, a stage of .ci/run).
- ``--run-bench``: the quick runs of ``psn bench serving`` and ``psn bench peers`` (marked ``bench``: real
  servers under wrk and WebSocket load for a minute or two) run only when it is given (``make bench-test``,
  a stage of .ci/run that installs wrk).
- One temporary folder per test run, shared by the pytest-xdist workers (``PSNTESTS_SESSION_DIR``): the
  tiny models of tests/fixtures.py are exported there once, whichever worker needs them first.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_SESSION_DIR = pytest.StashKey[str]()

# Tests run in parallel and beside other runs on one machine: no server they start may bind a fixed port.
# gRPC (default 8001) is off unless a test asks for it (grpc_port=0 or --grpc-port 0: any free port).
os.environ.setdefault("PSN_GRPC_PORT", "off")

# the suites that run only when asked: marker -> (what its tests are, the make target that asks)
OPT_IN = {
    "soak": ("long reliability suites", "make soak"),
    "browser": ("the demo page in headless Chromium", "make browser-test"),
    "zoo": ("the deepest SpikingJelly model-zoo networks", "make zoo-test"),
    "bench": ("quick serving and peers benchmark runs", "make bench-test"),
}


def _option(marker: str) -> str:
    return f"--run-{marker}"


def pytest_addoption(parser: pytest.Parser) -> None:
    for marker, (what, _) in OPT_IN.items():
        parser.addoption(_option(marker), action="store_true", help=f"run the tests marked {marker}: {what}")


SESSION_DIR_ENV = "PSNTESTS_SESSION_DIR"  # tests/fixtures.py reads it


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the main process (with -n N, before it starts the workers)
        root = tempfile.mkdtemp(prefix="psn-tests-")
        config.stash[_SESSION_DIR] = root
        os.environ[SESSION_DIR_ENV] = root  # inherited by every worker: one export of the tiny models
    for marker, (what, target) in OPT_IN.items():
        config.addinivalue_line("markers", f"{marker}: {what}, run only with {_option(marker)} ({target})")


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_SESSION_DIR, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
        os.environ.pop(SESSION_DIR_ENV, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the modules that hold slow tests first (in the order found): with pytest-xdist the longest work starts
    # at once and the short modules fill the gaps at the end (the same order in every worker)
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)
    for marker in OPT_IN:
        option = _option(marker)
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker} suite: run with {option}")
        for item in items:
            # the marker, not a keyword: a checkout in a folder named "bench" or "zoo" has that keyword too
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
