"""The data plane (after KServe's ``DataPlane``): what every transport does, written once.

Registry and readiness, the input builder of each model (``inputs``: server.inputs.ModelInputs, which owns
every check of what a client sends), classification, streams (open, step, reset, close) and Triton-style
sequences over those streams, with the metrics each bumps. The transports (v1 JSON, Open Inference
Protocol V2 over HTTP or gRPC, WebSocket) only decode bytes, call these and encode the answers:

    inputs = plane.inputs(name, version)  # 404 / 503 at once: before any body is read or converted
    x = inputs.classify_json(doc["inputs"])  # or classify_tensor(v2codec.Tensor(...)), step_json, ...
    result = await plane.classify(name, x, version)

Every call that names a model takes ``version: str | None = None`` (None: the version that serves now).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from psn_runtime import ClassifyResult, ModelInfo, ModelStatus, Runtime, StepResult
from psn_runtime.errors import ModelLoadError, ModelNotReady, UnknownStream
from psn_runtime.manifest import Manifest
from psn_runtime.repository import IndexEntry
from psn_runtime.validate import ClassifyInput, StepInput
from server.errors import LoadFailed, SequenceNotStarted
from server.inputs import ModelInputs

if TYPE_CHECKING:
    from prometheus_client import Counter

    from server.metrics import Metrics
    from server.settings import Settings

log = logging.getLogger("psn.server")


@dataclass(eq=False, slots=True)
class OpenStream:
    """A stream opened through the data plane: its runtime id and what a transport needs per step."""

    id: str
    inputs: ModelInputs  # builds its steps (step_json, step_bytes, step_tensor)
    max_steps: int  # steps before ``done`` (the model's bound, T for a full-only PSN, or the server's)
    steps: Counter = field(repr=False)  # the model's step counter (resolved once, not per step)

    @property
    def manifest(self) -> Manifest:
        return self.inputs.manifest

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-step input shape."""
        return self.inputs.shape


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._runtime: Runtime | None = None
        self._inputs: dict[tuple[str, str], ModelInputs] = {}  # by (name, version); rebuilt on a reload
        self.sequences = Sequences(self)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def attach(self, runtime: Runtime | None) -> None:
        """The runtime the app's lifespan started (None once it stops)."""
        self._runtime = runtime
        self._inputs.clear()
        if runtime is None:
            self.sequences.clear()

    @property
    def attached(self) -> Runtime | None:
        return self._runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise ModelNotReady("the server is still starting: models are loading")
        return self._runtime

    # -- registry and readiness --------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return self.runtime.models()

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """A model's record, or one version's (UnknownModel, VersionUnavailable)."""
        return self.runtime.model(name, version)

    def inputs(self, name: str, version: str | None = None) -> ModelInputs:
        """The input builder of the model version that takes a new request: UnknownModel or
        VersionUnavailable (404), ModelNotReady (503) at once, so that a transport asks for it before it
        reads or converts any body."""
        model = self.runtime.serving(name, version)
        manifest = model.manifest
        key = (model.name, manifest.version)
        cached = self._inputs.get(key)
        if cached is not None and cached.manifest is manifest:
            return cached
        built = self._inputs[key] = ModelInputs(model.name, manifest, model.info(), self.settings)
        return built

    def loaded_model(self, name: str, version: str | None = None) -> tuple[ModelInfo, Manifest]:
        """A model and its manifest (ModelNotReady when it failed to load)."""
        info = self.model(name, version)
        if info.manifest is None:
            raise ModelNotReady(f"model {info.name!r} failed to load: {info.error}")
        return info, info.manifest

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): ready once loading has finished and at least one model is READY."""
        runtime = self._runtime
        if runtime is None or not runtime.loaded:
            return False, {"status": "loading", "models": {}}
        models: dict[str, dict[str, Any]] = {}
        for info in runtime.models():
            entry: dict[str, Any] = {"status": str(info.status)}
            if info.status is ModelStatus.FAILED:
                entry["error"] = info.error
            models[info.name] = entry
        ready = any(entry["status"] == ModelStatus.READY for entry in models.values())
        return ready, {"status": "ready" if ready else "no model ready", "models": models}

    # -- classification ----------------------------------------------------------------------------------
    async def classify(
        self, name: str, x: ClassifyInput, version: str | None = None, admitted: str | None = None
    ) -> ClassifyResult:
        """Sequences built by ``inputs(name, version)`` -> one prediction each. ``admitted``: the version of
        those inputs (``inputs.version``): the request finishes on it, also when it is unloading by now."""
        result = await self.runtime.classify_async(name, x, version, admitted)
        self.metrics.child(self.metrics.sequences, name, result.version).inc(len(result.labels))
        return result

    # -- streams -----------------------------------------------------------------------------------------
    def max_steps(self, manifest: Manifest) -> int:
        if manifest.max_steps is not None:
            return manifest.max_steps
        if not manifest.streams:  # full-only PSN: the runtime gathers T steps, then answers
            return manifest.T
        return self.settings.max_stream_steps

    async def open_stream(self, name: str, version: str | None = None) -> OpenStream:
        inputs = self.inputs(name, version)
        stream_id = await self.runtime.open_stream(name, inputs.version)  # the version of those inputs
        steps = self.metrics.steps.labels(name, inputs.version)
        return OpenStream(stream_id, inputs, self.max_steps(inputs.manifest), steps)

    def moved(self, stream: OpenStream, version: str) -> OpenStream:
        """The same stream after a resume put it on another version of its model: that version's input
        builder, bound and counter."""
        inputs = self.inputs(stream.inputs.name, version)
        steps = self.metrics.steps.labels(inputs.name, version)
        return OpenStream(stream.id, inputs, self.max_steps(inputs.manifest), steps)

    async def step(self, stream: OpenStream, x: StepInput) -> StepResult:
        result = await self.runtime.step(stream.id, x)
        stream.steps.inc()
        return result

    def reset(self, stream: OpenStream) -> None:
        self.runtime.reset_stream(stream.id)

    def close(self, stream: OpenStream) -> None:
        """Idempotent; a no-op once the runtime is gone."""
        if self._runtime is not None:
            self._runtime.close_stream(stream.id)

    # -- model repository (Triton's extension; model control) -------------------------------------------
    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model version known or on the models dir: name, version, state, reason."""
        return await self.runtime.repository_index(ready_only)

    async def load_model(self, name: str) -> list[ModelInfo]:
        """Load or reload a model from the models dir (model control explicit); LoadFailed (400) with the
        reasons when a version failed, what served before serving on."""
        try:
            return await self.runtime.load_model(name)
        except ModelLoadError as e:
            raise LoadFailed(e.message) from None

    async def unload_model(self, name: str) -> list[ModelInfo]:
        """Unload every version of a model once its streams end (model control explicit)."""
        return await self.runtime.unload_model(name)


class Sequences:
    """Triton's sequence extension: each (model, sequence_id) holds one stream of the data plane, opened by
    ``sequence_start``, stepped once per request, closed by ``sequence_end``, by the runtime's idle timeout,
    or when the runtime stops. Limits and errors are a WebSocket stream's (max_streams, steps, NaN, ...)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._open: dict[tuple[str, int | str], OpenStream] = {}

    def clear(self) -> None:
        self._open.clear()

    def _prune(self) -> None:
        """Forget sequences whose stream the runtime closed (idle timeout)."""
        runtime = self.plane.attached
        if runtime is None:
            return
        live = runtime.stream_ids()
        for key in [key for key, stream in self._open.items() if stream.id not in live]:
            del self._open[key]

    async def _stream(self, key: tuple[str, int | str], start: bool, version: str | None) -> OpenStream:
        """The sequence's stream: a new one on ``start`` (a sequence already open under that id starts
        over), else the open one."""
        if start:
            self._prune()
            old = self._open.pop(key, None)
            if old is not None:
                self.plane.close(old)
            stream = await self.plane.open_stream(key[0], version)
            self._open[key] = stream
            return stream
        stream = self._open.get(key)
        if stream is None:
            raise SequenceNotStarted(
                f"sequence {key[1]!r} of model {key[0]!r} is not open: its first request must set "
                "sequence_start",
                "parameters.sequence_id",
            )
        return stream

    async def stream(
        self, name: str, sequence_id: int | str, *, start: bool, version: str | None = None
    ) -> OpenStream:
        """The sequence's stream: a new one with ``start`` (an open sequence of that id starts over), else
        the open one (SequenceNotStarted). For what is not a step: a snapshot, a resume."""
        return await self._stream((name, sequence_id), start, version)

    def inputs(self, name: str, sequence_id: int | str, start: bool, serving: ModelInputs) -> ModelInputs:
        """The input builder of a step of this sequence: an open sequence's own (its stream stays on the
        model version it started on), else ``serving`` (what ``plane.inputs`` gave for the request)."""
        stream = None if start else self._open.get((name, sequence_id))
        return serving if stream is None else stream.inputs

    def close(self, name: str, sequence_id: int | str) -> None:
        """End a sequence, if open (a gRPC stream that ends closes the sequences it started)."""
        stream = self._open.pop((name, sequence_id), None)
        if stream is not None:
            self.plane.close(stream)

    async def step(
        self,
        name: str,
        sequence_id: int | str,
        x: StepInput,
        *,
        start: bool,
        end: bool,
        version: str | None = None,
    ) -> StepResult:
        """One timestep x (built by ``plane.inputs(name, version)``) of the sequence; ``start`` opens it
        (again), ``end`` closes it afterwards, also when the step failed. A bad step leaves the sequence as
        it was."""
        key = (name, sequence_id)
        stream = await self._stream(key, start, version)
        try:
            return await self.plane.step(stream, x)
        except UnknownStream:
            self._open.pop(key, None)
            raise UnknownStream(f"sequence {sequence_id!r} of model {name!r} was closed (idle)") from None
        finally:
            if end:
                if self._open.get(key) is stream:
                    del self._open[key]
                self.plane.close(stream)


async def _plane(connection: HTTPConnection) -> DataPlane:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool (a hop per request)."""
    return connection.app.state.psn.plane


Plane = Annotated[DataPlane, Depends(_plane)]
"""The app's data plane (typed dependency)."""
