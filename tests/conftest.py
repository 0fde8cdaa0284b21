"""Shared pytest configuration (kept minimal: no imports of torch or the server here, so that a
serving-only install can still collect the tests it can run).

- ``--run-soak``: the long reliability suites marked ``soak`` run only when it is given (``make soak``).
- ``--run-browser``: the headless-Chromium tests marked ``browser`` run only when it is given
  (``make browser-test``); they fail, not skip, when Chromium is missing.
"""

from __future__ import annotations

import os

import pytest

# Tests run in parallel and beside other runs on one machine: no server they start may bind a fixed port.
# gRPC (default 8001) is off unless a test asks for it (grpc_port=0 or --grpc-port 0: any free port).
os.environ.setdefault("PSN_GRPC_PORT", "off")

OPT_IN = {"soak": "--run-soak", "browser": "--run-browser"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-soak", action="store_true", default=False, help="run the tests marked soak")
    parser.addoption(
        "--run-browser", action="store_true", default=False, help="run the tests marked browser (Chromium)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long reliability suites, run only with --run-soak (make soak)")
    config.addinivalue_line(
        "markers",
        "browser: the demo page in headless Chromium, run only with --run-browser (make browser-test)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, option in OPT_IN.items():
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker} suite: run with {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
