"""The runtime's public result and status types, and the observer hooks (metrics without imports)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np

from psn_runtime.manifest import Manifest

log = logging.getLogger("psn_runtime.runtime")  # the observer's failures are logged as the runtime's


class ModelStatus(StrEnum):
    LOADING = "loading"
    READY = "ready"  # takes new work
    FAILED = "failed"  # did not load: ``error`` says why
    UNLOADING = "unloading"  # unloaded or removed: serves the streams open on it, takes no new work
    UNAVAILABLE = "unavailable"  # unloaded (explicitly); loads again on request


@dataclass(frozen=True)
class ModelInfo:
    name: str
    status: ModelStatus
    directory: Path
    manifest: Manifest | None  # None if the manifest itself failed
    providers: dict[str, list[str]] = field(default_factory=dict)  # graph file -> providers it got
    error: str | None = None  # the reason, when FAILED
    warnings: list[str] = field(default_factory=list)  # e.g. CUDA asked for but the session got CPU
    version: str = ""  # the version this record describes (a model's record: the one that answers now)
    versions: tuple[ModelInfo, ...] = ()  # a model's record: every version of it, lowest first


@dataclass(frozen=True)
class ClassifyResult:
    logits: np.ndarray  # [B, C] float32 (mean over time)
    probabilities: np.ndarray  # [B, C] softmax of logits
    label_index: np.ndarray  # [B] int
    labels: list[str]  # [B] label names
    version: str = ""  # the model version that answered


@dataclass(frozen=True)
class StepResult:
    stream_id: str
    t: int  # index of the step just taken (0-based)
    ready: bool  # False while a full-only (PSN) model still waits for T steps
    label: str | None  # argmax of the mean of the logits of steps 0..t
    probabilities: np.ndarray | None  # [C]
    logits: np.ndarray | None  # [C] the running mean logits
    done: bool  # the stream can take no more steps until it is reset


class RuntimeObserver(Protocol):
    """Optional metric hooks (an observer may leave any out). Exceptions raised by a hook are logged and
    ignored. ``version``: the model version the batch, stream or record is of."""

    def on_step_batch(self, model: str, version: str, size: int, seconds: float) -> None: ...

    def on_stream_open(self, model: str, version: str) -> None: ...

    def on_stream_close(self, model: str, version: str, reason: str) -> None: ...

    def on_model_status(self, info: ModelInfo) -> None:
        """A version's record after its status changed (loading, ready, failed, unloading, unloaded)."""

    def on_poll(self, loaded: list[ModelInfo]) -> None:
        """A scan of the models dir is done (model control poll); ``loaded``: the versions it loaded."""


def notify(observer: RuntimeObserver | None, hook: str, *args: object) -> None:
    """Call ``observer``'s ``hook`` with ``args`` when it has that hook; an exception it raises is logged."""
    call = getattr(observer, hook, None)
    if call is None:
        return
    try:
        call(*args)
    except Exception:
        log.exception("observer hook %s failed", hook)


_max = np.maximum.reduce
_sum = np.add.reduce


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [B, C] float32 logits (float32 result); each row's result depends on that row
    alone (stream steps give the same bits whatever batch they ran in)."""
    e = logits - _max(logits, axis=1, keepdims=True)  # a new array: exp and divide in place
    np.exp(e, out=e)
    e /= _sum(e, axis=1, keepdims=True)
    return e


def softmax_fast(logits: np.ndarray) -> np.ndarray:
    """softmax, with a plain-Python path for a single row (five numpy calls cost more on tiny arrays);
    that path computes in float64, so its last bit may differ from softmax's."""
    if logits.shape[0] != 1:
        return softmax(logits)
    row = logits.tolist()[0]
    top = max(row)
    e = [math.exp(v - top) for v in row]
    total = sum(e)
    return np.array([[v / total for v in e]], dtype=np.float32)  # [1, C]
