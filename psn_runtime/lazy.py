"""Package attributes loaded on first use (PEP 562), so that importing a light submodule of a package does
not load what its heavy public names need (onnxruntime for psn_runtime, torch and onnx for exporters)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``homes[name]`` (a module path) on first use
    of ``name`` and returns its attribute of that name."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return __getattr__
