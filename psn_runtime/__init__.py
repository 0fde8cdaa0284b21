"""psn_runtime: serve PSN-family model directories with ONNX Runtime (no torch, no fastapi).

The public API is documented in docs/runtime-api.md. Its names load on first use, so that importing a
submodule that needs no onnxruntime (``psn_runtime.manifest``, which training and export read for the
neuron kinds) does not load onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psn_runtime.lazy import lazy_attributes

if TYPE_CHECKING:
    from psn_runtime.config import RuntimeConfig
    from psn_runtime.providers import available_providers
    from psn_runtime.results import ClassifyResult, ModelInfo, ModelStatus, RuntimeObserver, StepResult
    from psn_runtime.runtime import Runtime

_HOMES = {
    "ClassifyResult": "psn_runtime.results",
    "ModelInfo": "psn_runtime.results",
    "ModelStatus": "psn_runtime.results",
    "Runtime": "psn_runtime.runtime",
    "RuntimeConfig": "psn_runtime.config",
    "RuntimeObserver": "psn_runtime.results",
    "StepResult": "psn_runtime.results",
    "available_providers": "psn_runtime.providers",
}

__all__ = [
    "ClassifyResult",
    "ModelInfo",
    "ModelStatus",
    "Runtime",
    "RuntimeConfig",
    "RuntimeObserver",
    "StepResult",
    "available_providers",
]


__getattr__ = lazy_attributes(__name__, _HOMES)
