"""Shared pytest configuration (kept minimal: no imports of torch or the server here, so that a
serving-only install can still collect the tests it can run).

- ``--run-soak``: the long reliability suites marked ``soak`` run only when it is given (``make soak``).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-soak", action="store_true", default=False, help="run the tests marked soak")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long reliability suites, run only with --run-soak (make soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="soak suite: run with --run-soak (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
