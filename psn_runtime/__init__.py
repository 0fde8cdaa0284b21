"""psn_runtime: serve PSN-family model directories with ONNX Runtime (no torch, no fastapi).

The public API is documented in docs/runtime-api.md.
"""

from psn_runtime.config import RuntimeConfig
from psn_runtime.providers import available_providers
from psn_runtime.results import ClassifyResult, ModelInfo, ModelStatus, RuntimeObserver, StepResult
from psn_runtime.runtime import Runtime

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
