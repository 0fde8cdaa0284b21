"""The runtime's configuration (validated: nonsense values are rejected when the config is built)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: Path
    providers: list[str] = Field(
        default_factory=lambda: [CUDA, CPU],
        min_length=1,
        description="execution providers wanted, in order; those this onnxruntime build lacks are skipped",
    )
    intra_op_threads: int = Field(1, ge=0, description="ORT intra-op threads per session; 0 = ORT default")
    batching: bool = Field(True, description="cross-stream step batching on/off")
    max_batch: int = Field(64, ge=1, description="most steps in one ORT call")
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description="extra wait for more steps; 0 = none")
    inline_max_rows: int = Field(
        8,
        ge=0,
        description="step batches of at most this many steps, and classify calls of at most half as many "
        "sequences, run ORT on the calling (event-loop) thread instead of the worker; 0 = always the worker",
    )
    max_queue: int = Field(4096, ge=1, description="pending steps per model; beyond -> Overloaded")
    max_streams: int = Field(1024, ge=1, description="open streams over all models; beyond -> StreamLimit")
    idle_timeout_s: float = Field(300.0, gt=0.0, description="idle streams are closed after this long")
    max_stream_steps: int = Field(100_000, ge=1, description="cap on the steps of one stream")
    max_classify_batch: int = Field(256, ge=1, description="larger classify batches -> BadInput")
    max_classify_pending: int = Field(
        64, ge=1, description="classify_async calls queued or running at once; beyond -> Overloaded"
    )
    warmup: bool = True

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        known = set(ort.get_all_providers())
        unknown = [p for p in value if p not in known]
        if unknown:
            raise ValueError(f"unknown execution providers {unknown}; onnxruntime knows {sorted(known)}")
        if len(set(value)) != len(value):
            raise ValueError(f"providers listed twice: {value}")
        return value
