"""The runtime: model versions, full-sequence classification and streams over ONNX Runtime sessions.

Every call that takes a model ``name`` also takes ``version``: None goes to the highest READY version.
Classify calls and streams keep the version that took them to their end, also when it is unloaded
meanwhile (psn_runtime.control loads and unloads versions while serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import KeysView

from psn_runtime.config import RuntimeConfig
from psn_runtime.control import Control
from psn_runtime.errors import (
    Overloaded,
    RuntimeClosed,
    StreamLimit,
    UnknownStream,
    VersionUnavailable,
)
from psn_runtime.manifest import LOGITS_NAME
from psn_runtime.registry import LoadedModel
from psn_runtime.repository import IndexEntry, Repository, Version
from psn_runtime.results import (
    ClassifyResult,
    ModelInfo,
    ModelStatus,
    RuntimeObserver,
    StepResult,
    notify,
)
from psn_runtime.snapshot import SnapshotOrigin, SnapshotSpec, StreamState
from psn_runtime.streams import Stream
from psn_runtime.validate import ClassifyInput, StepInput, classify_input, longest_sequence, step_input

log = logging.getLogger(__name__)

_LOGITS_ONLY = [LOGITS_NAME]


class Runtime:
    def __init__(self, config: RuntimeConfig, observer: RuntimeObserver | None = None) -> None:
        self.config = config
        self._observer = observer
        self._repo = Repository()
        self._streams: dict[str, Stream] = {}
        self._load_lock = threading.Lock()
        self._loaded = False
        self._closed = False
        self._reaper: asyncio.Task | None = None
        self._classify_pending = 0  # classify_async calls queued or running (event-loop thread only)
        self._control = Control(self, self._repo)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model version (in a thread), start the idle-stream reaper and, with model control
        poll, the poller."""
        self._check_open()
        await asyncio.get_running_loop().run_in_executor(None, self.load)
        self._ensure_reaper()
        self._control.start()

    def load(self) -> None:
        """Load every model version under models_dir (as the version policy selects), synchronously. A
        version that fails is FAILED with its reason; the others still load. Raises ModelLoadError only if
        models_dir itself is unusable."""
        with self._load_lock:
            if self._loaded:
                return
            try:
                self._control.load_all()
            finally:
                self._loaded = True

    async def close(self) -> None:
        """Stop the poller, the batchers and the reaper, answer pending steps with RuntimeClosed, close
        every stream."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self._control.stop()
        for sid in list(self._streams):
            self.close_stream(sid, reason="shutdown")

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def closed(self) -> bool:
        return self._closed

    # -- registry ----------------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """One record per model name (the version that answers now, with every version's record)."""
        return self._repo.infos()

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """A model's record, or one version's (VersionUnavailable when this runtime has no such version)."""
        return self._repo.record(name, version)

    def versions(self, name: str) -> list[ModelInfo]:
        """Every version of a model, lowest first."""
        return [e.info() for e in self._repo.versions(name)]

    def _serving(self, name: str, version: str | None = None) -> Version:
        """The READY version that takes a new request (ModelNotReady, UnknownModel, VersionUnavailable)."""
        self._check_open()
        return self._repo.serving(name, version, loading=not self._loaded)

    def serving(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded version that takes a new request now (None: the highest READY), without building a
        record: UnknownModel, ModelNotReady or VersionUnavailable at once (a server asks before it reads
        a request's body). Its manifest says what the request must hold."""
        entry = self._serving(name, version)
        assert entry.model is not None  # a READY version has its sessions
        return entry.model

    # -- model control (psn_runtime.control) -------------------------------------------------------------
    async def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model version known or on disk, with its state and the reason (Triton's index)."""
        return await self._control.index(ready_only)

    async def load_model(self, name: str) -> list[ModelInfo]:
        """Load (or reload) model ``name`` from the models dir: new or changed versions load, versions no
        longer on disk unload. Only with model control explicit (ModelControlDisabled). Returns the
        versions it loaded; ModelLoadError (with the reasons) when one failed, while what served before
        keeps serving."""
        return await self._control.load_model(name)

    async def unload_model(self, name: str) -> list[ModelInfo]:
        """Unload every version of model ``name``: each takes no new work at once, and unloads when its
        open streams have ended (at most unload_grace_s). Only with model control explicit."""
        return await self._control.unload_model(name)

    async def poll(self) -> list[ModelInfo]:
        """Scan the models dir once: load new or changed versions, unload removed ones (what the poller
        does every poll_interval_s). Returns the versions it tried to load."""
        return await self._control.poll()

    # -- full-sequence classification --------------------------------------------------------------------
    def classify_input(self, name: str, x: object, version: str | None = None) -> ClassifyInput:
        """x [B, T, *shape] or [T, *shape] validated for model ``name`` (BadInput naming what is wrong)."""
        return self._checked(self._serving(name, version), x)

    def _checked(self, entry: Version, x: object) -> ClassifyInput:
        assert entry.model is not None
        m = entry.model.manifest
        return classify_input(
            x,
            T=m.T,
            shape=m.input_shape,
            variable_length=m.variable_length,
            max_batch=self.config.max_classify_batch,
            longest=longest_sequence(m.T, m.variable_length, m.streams, self.config.max_stream_steps),
        )

    def classify(self, name: str, x: object, version: str | None = None) -> ClassifyResult:
        """x [B, T, *shape] or [T, *shape] -> one prediction per sequence. Synchronous and thread-safe."""
        entry = self._serving(name, version)
        return self._classify(entry, self._checked(entry, x))

    def _classify(self, entry: Version, x: ClassifyInput) -> ClassifyResult:
        model = entry.model
        if model is None:  # unloaded since it was chosen (only a synchronous caller can see this)
            raise VersionUnavailable(f"model {entry.name!r} version {entry.version!r} was unloaded")
        return model.classify(x, entry.version)

    async def classify_async(
        self, name: str, x: object, version: str | None = None, admitted: str | None = None
    ) -> ClassifyResult:
        """classify; at most config.max_classify_pending at once (else Overloaded), so that a burst is shed
        instead of queueing without bound in the executor. Small work (at most config.inline_max_rows // 2
        sequences) runs on this (the event loop's) thread: a hop to a worker thread costs several context
        switches, more than the ORT call itself; larger batches run in a worker thread. The version chosen
        first answers, also when it is unloaded meanwhile.

        ``admitted``: the version a server chose for this request before it read the body (what ``x`` was
        built for): it answers while it still has its sessions, even if it is unloading by now; if it is
        gone and the request named no version, the version serving now does."""
        self._check_open()
        limit = self.config.max_classify_pending
        if self._classify_pending >= limit:
            raise Overloaded(f"{self._classify_pending} classify calls are pending (the limit); retry later")
        self._classify_pending += 1
        try:
            entry = self._admitted(name, version, admitted)
            checked = self._checked(entry, x)
            if checked.sequences <= self.config.inline_max_rows // 2 and not checked.unrolled:
                await asyncio.sleep(0)  # one turn of the loop: calls that arrive together still count
                return self._classify(entry, checked)
            entry.busy += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(None, self._classify, entry, checked)
            finally:
                entry.busy -= 1
        finally:
            self._classify_pending -= 1

    def _admitted(self, name: str, version: str | None, admitted: str | None) -> Version:
        if admitted is not None:
            entry = self._repo.get(name, admitted)
            loaded = entry is not None and entry.model is not None
            if loaded and entry.status in (ModelStatus.READY, ModelStatus.UNLOADING):
                return entry
        return self._serving(name, version)

    # -- streams -----------------------------------------------------------------------------------------
    async def open_stream(self, name: str, version: str | None = None) -> str:
        """A new stream on version ``version`` of model ``name`` (None: the highest READY one); it stays on
        that version until it is closed."""
        entry = self._serving(name, version)
        if len(self._streams) >= self.config.max_streams:
            raise StreamLimit(
                f"{len(self._streams)} streams are open, the limit is {self.config.max_streams}"
            )
        stream_id = uuid.uuid4().hex
        self._streams[stream_id] = self._open_on(entry, stream_id)
        self._ensure_reaper()
        self._observe("on_stream_open", name, entry.version)
        return stream_id

    @staticmethod
    def _open_on(entry: Version, stream_id: str) -> Stream:
        assert entry.streams is not None
        stream = entry.streams.open(stream_id)
        stream.owner = entry
        return stream

    async def step(self, stream_id: str, x: StepInput | object) -> StepResult:
        """One timestep x [*shape] -> the stream's result after it. x is a StepInput
        (``psn_runtime.validate.step_input``) or anything that validates into one."""
        stream = self._stream(stream_id)
        streams = stream.owner.streams
        return await streams.step(stream, step_input(x, shape=streams.shape))

    def stream_shape(self, stream_id: str) -> tuple[int, ...]:
        """The per-step input shape of a stream's model (what its StepInputs must have)."""
        return self._stream(stream_id).owner.streams.shape

    def stream_info(self, stream_id: str) -> ModelInfo:
        """The record of the model version a stream is on."""
        return self._stream(stream_id).owner.info()

    # -- stream snapshots (psn_runtime.snapshot packs, signs and checks them) ------------------------------
    def snapshot_spec(self, name: str, version: str | None = None) -> SnapshotSpec:
        """What a snapshot of a stream of model ``name`` holds (bound to its version and graph's sha256)."""
        entry = self._serving(name, version)
        assert entry.streams is not None
        return entry.streams.snapshot_spec

    def stream_snapshot_spec(self, stream_id: str) -> SnapshotSpec:
        """What a snapshot of this open stream holds (its version's)."""
        return self._stream(stream_id).owner.streams.snapshot_spec

    def snapshot_version(self, made_by: SnapshotOrigin) -> str:
        """The version here that resumes a snapshot made by ``made_by``: the version it names (with the same
        graph), or for a snapshot without one, the version with its graph. VersionUnavailable when this
        runtime has no such version READY (another replica may have it); BadSnapshot when its version here
        has other files."""
        return self._repo.resuming(made_by).version

    async def move_stream(self, stream_id: str, version: str) -> None:
        """Put an open stream on another READY version of its model (its state starts over: restore one
        next). VersionUnavailable when there is no such version ready."""
        stream = self._stream(stream_id)
        old: Version = stream.owner
        if old.version == version:
            return
        entry = self._serving(old.name, version)
        async with stream.lock:  # no step of it in flight
            new = self._open_on(entry, stream_id)
            self._streams[stream_id] = new
            old.streams.close(stream)
        self._observe("on_stream_close", old.name, old.version, "moved")
        self._observe("on_stream_open", entry.name, entry.version)

    async def stream_state(self, stream_id: str) -> StreamState:
        """A copy of an open stream's state, between two of its steps."""
        stream = self._stream(stream_id)
        return await stream.owner.streams.export_state(stream)

    async def restore_stream(self, stream_id: str, state: StreamState) -> None:
        """Give an open stream the state ``state`` (from ``stream_state``, here or on another replica)."""
        stream = self._stream(stream_id)
        await stream.owner.streams.restore_state(stream, state)

    def reset_stream(self, stream_id: str) -> None:
        stream = self._stream(stream_id)
        stream.owner.streams.reset(stream)

    def close_stream(self, stream_id: str, reason: str = "client") -> None:
        """Idempotent: closing an unknown or already closed stream does nothing."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        stream.owner.streams.close(stream)
        self._observe("on_stream_close", stream.model, stream.owner.version, reason)

    def names(self) -> KeysView[str]:
        """The model names known (a live view: models loaded later join it)."""
        return self._repo.names.keys()

    def stream_ids(self) -> KeysView[str]:
        """The ids of the open streams (a live view)."""
        return self._streams.keys()

    def streams_on(self, entry: Version) -> list[str]:
        """The ids of the streams open on one model version."""
        return [sid for sid, s in self._streams.items() if s.owner is entry]

    def stream_count(self, name: str | None = None, version: str | None = None) -> int:
        if name is None:
            return len(self._streams)
        entries = self._repo.versions(name)  # UnknownModel
        if version is not None:
            entries = [e for e in entries if e.version == version]
        return sum(s.owner in entries for s in self._streams.values())

    def stats(self) -> dict:
        models = {}
        for info in self.models():
            entry: dict = {"status": str(info.status), "streams": 0}
            head = self._repo.default.get(info.name)
            if head is not None and head.streams is not None:
                entry.update(**head.streams.stats())
            entry["streams"] = self.stream_count(info.name)
            entry["versions"] = {
                e.version: {"status": str(e.status), "streams": self.stream_count(info.name, e.version)}
                for e in self._repo.versions(info.name)
            }
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

    def on_batch(self, model: str, version: str, size: int, seconds: float) -> None:
        self._observe("on_step_batch", model, version, size, seconds)

    def observe_poll(self, loaded: list[ModelInfo]) -> None:
        """Tell the observer a scan of the models dir is done (``loaded``: the versions it tried to load)."""
        self._observe("on_poll", loaded)

    def observe_status(self, entry: Version) -> None:
        """Tell the observer a version's status changed."""
        self._observe("on_model_status", entry.info())

    def _observe(self, hook: str, *args: object) -> None:
        notify(self._observer, hook, *args)
