"""The runtime: model registry, full-sequence classification and streams over ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import KeysView
from pathlib import Path

from psn_runtime.config import RuntimeConfig
from psn_runtime.errors import (
    InferenceError,
    ModelLoadError,
    ModelNotReady,
    Overloaded,
    RuntimeClosed,
    StreamLimit,
    UnknownModel,
    UnknownStream,
)
from psn_runtime.manifest import INPUT_NAME, LOGITS_NAME
from psn_runtime.registry import LoadedModel, load_model, model_dirs, read_manifest
from psn_runtime.results import (
    ClassifyResult,
    ModelInfo,
    ModelStatus,
    RuntimeObserver,
    StepResult,
    softmax_fast,
)
from psn_runtime.snapshot import SnapshotSpec, StreamState
from psn_runtime.streams import ModelStreams, Stream
from psn_runtime.validate import ClassifyInput, StepInput, classify_input, step_input

log = logging.getLogger(__name__)

_LOGITS_ONLY = [LOGITS_NAME]


class Runtime:
    def __init__(self, config: RuntimeConfig, observer: RuntimeObserver | None = None) -> None:
        self.config = config
        self._observer = observer
        self._infos: dict[str, ModelInfo] = {}
        self._models: dict[str, LoadedModel] = {}
        self._model_streams: dict[str, ModelStreams] = {}
        self._streams: dict[str, Stream] = {}
        self._load_lock = threading.Lock()
        self._loaded = False
        self._closed = False
        self._reaper: asyncio.Task | None = None
        self._classify_pending = 0  # classify_async calls queued or running (event-loop thread only)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model directory (in a thread) and start the idle-stream reaper."""
        self._check_open()
        await asyncio.get_running_loop().run_in_executor(None, self.load)
        self._ensure_reaper()

    def load(self) -> None:
        """Load every model directory under models_dir, synchronously. A model that fails is FAILED with its
        reason; the others still load. Raises ModelLoadError only if models_dir itself is unusable."""
        with self._load_lock:
            if self._loaded:
                return
            try:
                self._load_all()
            finally:
                self._loaded = True

    def _load_all(self) -> None:
        dirs = model_dirs(self.config.models_dir)
        todo = []
        for d in dirs:
            try:
                manifest = read_manifest(d)
            except ModelLoadError as e:
                self._record(ModelInfo(d.name, ModelStatus.FAILED, d, None, {}, e.message), d)
                continue
            if manifest.name in self._infos:
                first = self._infos[manifest.name].directory
                error = f"duplicate model name {manifest.name!r} (already loaded from {first})"
                self._record(ModelInfo(d.name, ModelStatus.FAILED, d, manifest, {}, error), d)
                continue
            self._infos[manifest.name] = ModelInfo(manifest.name, ModelStatus.LOADING, d, manifest)
            todo.append((d, manifest))
        for d, manifest in todo:
            try:
                model = load_model(d, manifest, self.config)
            except ModelLoadError as e:
                self._infos[manifest.name] = ModelInfo(
                    manifest.name, ModelStatus.FAILED, d, manifest, {}, e.message
                )
                log.error("model %s (%s) FAILED: %s", manifest.name, d, e.message)
                continue
            except Exception as e:  # a bug or an unexpected ORT error must not stop the other models
                log.exception("model %s (%s) FAILED unexpectedly", manifest.name, d)
                error = f"unexpected error: {e!r}"
                self._infos[manifest.name] = ModelInfo(
                    manifest.name, ModelStatus.FAILED, d, manifest, {}, error
                )
                continue
            # streams first: a model in _models is served at once, while the others still load
            self._model_streams[model.name] = ModelStreams(model, self.config, self._on_batch)
            self._models[model.name] = model
            self._infos[model.name] = model.info()
            log.info("model %s ready (%s, providers %s)", model.name, manifest.kind, model.providers)

    def _record(self, info: ModelInfo, directory: Path) -> None:
        log.error("model directory %s FAILED: %s", directory, info.error)
        if info.name in self._infos:  # the directory name is taken by a model already known
            return
        self._infos[info.name] = info

    async def close(self) -> None:
        """Stop the batchers and the reaper, answer pending steps with RuntimeClosed, close every stream."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for ms in self._model_streams.values():
            await ms.stop()
        for sid in list(self._streams):
            self.close_stream(sid, reason="shutdown")

    @property
    def loaded(self) -> bool:
        return self._loaded

    # -- registry ----------------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [self._infos[k] for k in sorted(self._infos)]

    def model(self, name: str) -> ModelInfo:
        info = self._infos.get(name)
        if info is None:
            raise UnknownModel(name)
        return info

    def _ready(self, name: str) -> LoadedModel:
        if self._closed:
            raise RuntimeClosed("the runtime is closed")
        model = self._models.get(name)
        if model is not None:
            return model
        info = self._infos.get(name)
        if info is None:
            if not self._loaded:
                raise ModelNotReady(f"model {name!r}: the runtime is still loading its models")
            raise UnknownModel(name)
        if info.status is ModelStatus.LOADING:
            raise ModelNotReady(f"model {name!r} is still loading")
        raise ModelNotReady(f"model {name!r} failed to load: {info.error}")

    # -- full-sequence classification --------------------------------------------------------------------
    def classify_input(self, name: str, x: object) -> ClassifyInput:
        """x [B, T, *shape] or [T, *shape] validated for model ``name`` (BadInput naming what is wrong)."""
        m = self._ready(name).manifest
        return classify_input(
            x,
            T=m.T,
            shape=m.input_shape,
            variable_length=m.variable_length,
            max_batch=self.config.max_classify_batch,
        )

    def classify(self, name: str, x: object) -> ClassifyResult:
        """x [B, T, *shape] or [T, *shape] -> one prediction per sequence. Synchronous and thread-safe."""
        return self._classify(name, self.classify_input(name, x))

    def _classify(self, name: str, x: ClassifyInput) -> ClassifyResult:
        model = self._ready(name)
        try:
            (logits,) = model.full.run(_LOGITS_ONLY, {INPUT_NAME: x.array})  # [B, C]
        except Exception as e:
            raise InferenceError(f"model {name!r}: onnxruntime failed: {e}") from e
        best = logits.argmax(axis=1)  # [B]
        labels = model.manifest.labels
        return ClassifyResult(logits, softmax_fast(logits), best, [labels[i] for i in best.tolist()])

    async def classify_async(self, name: str, x: object) -> ClassifyResult:
        """classify; at most config.max_classify_pending at once (else Overloaded), so that a burst is shed
        instead of queueing without bound in the executor. Small work (at most config.inline_max_rows // 2
        sequences) runs on this (the event loop's) thread: a hop to a worker thread costs several context
        switches, more than the ORT call itself; larger batches run in a worker thread."""
        self._check_open()
        limit = self.config.max_classify_pending
        if self._classify_pending >= limit:
            raise Overloaded(f"{self._classify_pending} classify calls are pending (the limit); retry later")
        self._classify_pending += 1
        try:
            checked = self.classify_input(name, x)
            if checked.sequences <= self.config.inline_max_rows // 2:
                await asyncio.sleep(0)  # one turn of the loop: calls that arrive together still count
                return self._classify(name, checked)
            return await asyncio.get_running_loop().run_in_executor(None, self._classify, name, checked)
        finally:
            self._classify_pending -= 1

    # -- streams -----------------------------------------------------------------------------------------
    async def open_stream(self, name: str) -> str:
        self._ready(name)
        ms = self._model_streams[name]
        if len(self._streams) >= self.config.max_streams:
            raise StreamLimit(
                f"{len(self._streams)} streams are open, the limit is {self.config.max_streams}"
            )
        stream_id = uuid.uuid4().hex
        self._streams[stream_id] = ms.open(stream_id)
        self._ensure_reaper()
        self._observe("on_stream_open", name)
        return stream_id

    async def step(self, stream_id: str, x: StepInput | object) -> StepResult:
        """One timestep x [*shape] -> the stream's result after it. x is a StepInput
        (``psn_runtime.validate.step_input``) or anything that validates into one."""
        stream = self._stream(stream_id)
        ms = self._model_streams[stream.model]
        return await ms.step(stream, step_input(x, shape=ms.shape))

    def stream_shape(self, stream_id: str) -> tuple[int, ...]:
        """The per-step input shape of a stream's model (what its StepInputs must have)."""
        return self._model_streams[self._stream(stream_id).model].shape

    # -- stream snapshots (psn_runtime.snapshot packs, signs and checks them) ------------------------------
    def snapshot_spec(self, name: str) -> SnapshotSpec:
        """What a snapshot of a stream of model ``name`` holds (bound to its graph's sha256)."""
        self._ready(name)
        return self._model_streams[name].snapshot_spec

    async def stream_state(self, stream_id: str) -> StreamState:
        """A copy of an open stream's state, between two of its steps."""
        stream = self._stream(stream_id)
        return await self._model_streams[stream.model].export_state(stream)

    async def restore_stream(self, stream_id: str, state: StreamState) -> None:
        """Give an open stream the state ``state`` (from ``stream_state``, here or on another replica)."""
        stream = self._stream(stream_id)
        await self._model_streams[stream.model].restore_state(stream, state)

    def reset_stream(self, stream_id: str) -> None:
        stream = self._stream(stream_id)
        self._model_streams[stream.model].reset(stream)

    def close_stream(self, stream_id: str, reason: str = "client") -> None:
        """Idempotent: closing an unknown or already closed stream does nothing."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._model_streams[stream.model].close(stream)
        self._observe("on_stream_close", stream.model, reason)

    def stream_ids(self) -> KeysView[str]:
        """The ids of the open streams (a live view)."""
        return self._streams.keys()

    def stream_count(self, name: str | None = None) -> int:
        if name is None:
            return len(self._streams)
        if name not in self._infos:
            raise UnknownModel(name)
        ms = self._model_streams.get(name)
        return 0 if ms is None else ms.open_streams

    def stats(self) -> dict:
        models = {}
        for info in self.models():
            entry: dict = {"status": str(info.status), "streams": 0}
            ms = self._model_streams.get(info.name)
            if ms is not None:
                entry.update(streams=ms.open_streams, **ms.stats())
            models[info.name] = entry
        return {
            "streams": len(self._streams),
            "max_streams": self.config.max_streams,
            "classify_pending": self._classify_pending,
            "models": models,
        }

    def _stream(self, stream_id: str) -> Stream:
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStream(f"unknown stream {stream_id!r}")
        return stream

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("the runtime is closed")

    def _ensure_reaper(self) -> None:
        if self._closed or (self._reaper is not None and not self._reaper.done()):
            return
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="psn-idle-reaper")

    async def _reap(self) -> None:
        timeout = self.config.idle_timeout_s
        period = min(max(timeout / 4, 0.005), 5.0)
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - timeout
            idle = [s.id for s in self._streams.values() if not s.pending and s.last_active < cutoff]
            for stream_id in idle:
                log.info("closing idle stream %s", stream_id)
                self.close_stream(stream_id, reason="idle")

    def _on_batch(self, model: str, size: int, seconds: float) -> None:
        self._observe("on_step_batch", model, size, seconds)

    def _observe(self, hook: str, *args) -> None:
        if self._observer is None:
            return
        try:
            getattr(self._observer, hook)(*args)
        except Exception:
            log.exception("observer hook %s failed", hook)
