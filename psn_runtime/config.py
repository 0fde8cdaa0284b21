"""The runtime's configuration (validated: nonsense values are rejected when the config is built)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def split_list(value: Any) -> Any:
    """``a,b`` or a JSON list ``["a", "b"]`` (an environment variable, a flag) -> ``["a", "b"]``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class RuntimeConfig(BaseModel):
    """The runtime's settings: the one place their types, defaults, bounds and help live (``psn serve``
    takes its runtime flags and ``PSN_*`` variables from these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: Path = Field(description="folder of model directories to serve")
    providers: list[str] = Field(
        default_factory=lambda: [CUDA, CPU],
        min_length=1,
        description="ONNX Runtime execution providers wanted, in order (comma-separated); those this "
        "onnxruntime build lacks are skipped",
    )
    intra_op_threads: int = Field(
        1, ge=0, le=1024, description="ONNX Runtime intra-op threads per session (0 = ORT default)"
    )
    batching: bool = Field(True, description="batch the steps of concurrent streams into one ORT call")
    max_batch: int = Field(64, ge=1, le=65536, description="most steps in one ORT call")
    max_wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0, description="extra wait for more steps to batch (ms); 0 = none"
    )
    inline_max_rows: int = Field(
        8,
        ge=0,
        le=65536,
        description="run ORT on the event loop for step batches of at most this many steps and classify "
        "calls of at most half as many sequences (no thread hop); 0 = always a worker thread",
    )
    max_queue: int = Field(
        4096,
        ge=1,
        description="pending steps per model; beyond, a step is shed (an 'overloaded' error event on a "
        "WebSocket, 429 for a V2 sequence step) and may be retried",
    )
    max_streams: int = Field(
        1024, ge=1, description="open streams over all models; beyond, StreamLimit (HTTP 503, close 1013)"
    )
    idle_timeout_s: float = Field(300.0, gt=0.0, description="close a stream idle this long (s)")
    max_stream_steps: int = Field(100_000, ge=1, description="most steps per stream of an unbounded model")
    max_classify_batch: int = Field(256, ge=1, description="most sequences in one classify call")
    max_classify_pending: int = Field(
        64,
        ge=1,
        description="classify calls computing or waiting at once; beyond, they are shed (Overloaded, 429)",
    )
    warmup: bool = Field(True, description="run every graph once at load")

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        known = set(ort.get_all_providers())
        unknown = [p for p in value if p not in known]
        if unknown:
            raise ValueError(
                f"unknown execution providers {unknown}: not an ONNX Runtime execution provider this "
                f"onnxruntime knows ({sorted(known)})"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"providers are listed twice: {value}")
        return value
