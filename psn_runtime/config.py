"""The runtime's configuration (validated: nonsense values are rejected when the config is built)."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelControl(StrEnum):
    """How the models dir is followed while serving (Triton's model control modes)."""

    NONE = "none"  # load every version once at start; later changes on disk are ignored
    POLL = "poll"  # rescan every poll_interval_s: load new or changed versions, unload removed ones
    EXPLICIT = "explicit"  # load and unload on request (the V2 repository extension)


VERSION_POLICY = re.compile(r"^(all|latest:([1-9][0-9]{0,5}))$")


def latest_versions(policy: str) -> int | None:
    """``latest:N`` -> N (keep the N highest versions on disk); ``all`` -> None."""
    match = VERSION_POLICY.match(policy)
    if match is None:
        raise ValueError(f"version policy {policy!r}: expected 'all' or 'latest:N' (N >= 1)")
    return int(match.group(2)) if match.group(2) else None


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
    model_control: ModelControl = Field(
        ModelControl.NONE,
        description="none: load the models dir once at start; poll: rescan it every poll_interval_s, load "
        "new or changed versions and unload removed ones; explicit: load and unload through POST "
        "/v2/repository/models/NAME/load and /unload",
    )
    poll_interval_s: float = Field(
        5.0,
        gt=0.0,
        le=3600.0,
        description="with model_control poll: seconds between two scans of the models dir",
    )
    version_policy: str = Field(
        "all",
        description="which versions of a model on disk load: 'all', or 'latest:N' (the N highest version "
        "numbers)",
    )
    unload_grace_s: float = Field(
        600.0,
        ge=0.0,
        description="a version that is unloaded or removed takes no new work but keeps serving its open "
        "streams until they end or go idle, at most this long (s); then they are closed and it unloads",
    )

    @field_validator("version_policy")
    @classmethod
    def _version_policy(cls, value: str) -> str:
        latest_versions(value)  # raises ValueError naming the expected forms
        return value

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
