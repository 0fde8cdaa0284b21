"""Loading and unloading model versions while serving (model control none | poll | explicit).

- The first load (``Runtime.load``) loads every version the version policy selects, in the loading
  thread; each serves as soon as it is ready.
- poll: every poll_interval_s the models dir is scanned (off the event loop); new versions and versions
  whose files changed load, versions no longer on disk (or left out by the policy) unload.
- explicit: ``load_model(name)`` does the same for one model; ``unload_model(name)`` unloads all of it.

A version loads in a worker thread, never on the event loop, and takes traffic only once its checks and
warm-up have passed (``registry.load_model``). One that fails leaves what serves untouched and is FAILED
with its reason; a changed copy of a READY version that fails keeps the old one READY, with the reason as
its error (retried when the files change again, or on an explicit load).

A version that unloads (removed, replaced by a changed copy, or unloaded on request) is UNLOADING: it
takes no new streams or classify calls and keeps serving the streams open on it until they end or go
idle, at most unload_grace_s; then the streams still open are closed, its sessions dropped and the memory
handed back to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from psn_runtime.config import ModelControl, latest_versions
from psn_runtime.errors import ModelControlDisabled, ModelLoadError, ModelNotReady, UnknownModel
from psn_runtime.layout import VersionDir, scan, select
from psn_runtime.registry import load_model
from psn_runtime.repository import IndexEntry, Repository, Version
from psn_runtime.results import ModelInfo, ModelStatus
from psn_runtime.streams import ModelStreams

if TYPE_CHECKING:
    from psn_runtime.runtime import Runtime

log = logging.getLogger(__name__)

DRAIN_CHECK_S = 0.05  # how often an unloading version looks whether its last stream has ended


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_memory() -> None:
    """Collect garbage and hand free heap pages back to the system (glibc's malloc_trim; elsewhere a no-op):
    after an unload the resident size drops by what the sessions held."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class Control:
    """The model control of one runtime (its repository of versions, its poller and unloads)."""

    def __init__(self, runtime: Runtime, repo: Repository) -> None:
        self.runtime = runtime
        self.repo = repo
        self.config = runtime.config
        self.latest = latest_versions(self.config.version_policy)
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._drains: set[asyncio.Task] = set()
        self._retiring: set[Version] = set()

    # -- the first load (synchronous, in the loading thread) ---------------------------------------------
    def load_all(self) -> None:
        found, _ = select(scan(self.config.models_dir), self.latest)
        todo = []
        for vd in found:
            if self.repo.get(vd.name, vd.version) is not None:  # a duplicate whose folder name is taken
                log.error("model directory %s FAILED: %s", vd.directory, vd.error)
                continue
            entry = Version(vd, ModelStatus.FAILED if vd.error else ModelStatus.LOADING, vd.error)
            self.repo.add(entry)
            self.runtime.observe_status(entry)
            if vd.error:
                log.error("model directory %s FAILED: %s", vd.directory, vd.error)
            else:
                todo.append(entry)
        for entry in todo:
            if self._build(entry):
                self._ready(entry)
            else:
                self.runtime.observe_status(entry)

    def _build(self, entry: Version) -> bool:
        """Load a version's sessions and make its streams (any thread); False when it FAILED (the reason in
        its error)."""
        vd = entry.found
        assert vd.manifest is not None
        try:
            model = load_model(vd.directory, vd.manifest, self.config)
            streams = ModelStreams(model, self.config, self.runtime.on_batch)
        except ModelLoadError as e:
            entry.status, entry.error = ModelStatus.FAILED, e.message
            log.error("model %s version %s (%s) FAILED: %s", vd.name, vd.version, vd.directory, e.message)
            return False
        except Exception as e:  # a bug or an unexpected ORT error must not stop the other models
            log.exception("model %s version %s (%s) FAILED unexpectedly", vd.name, vd.version, vd.directory)
            entry.status, entry.error = ModelStatus.FAILED, f"unexpected error: {e!r}"
            return False
        entry.model, entry.streams = model, streams
        return True

    def _ready(self, entry: Version) -> None:
        """Let a built version take traffic (the highest READY version answers unnamed requests)."""
        entry.status = ModelStatus.READY
        self.repo.add(entry)
        self.runtime.observe_status(entry)
        assert entry.model is not None
        log.info(
            "model %s version %s ready (%s, providers %s)",
            entry.name,
            entry.version,
            entry.model.manifest.kind,
            entry.model.providers,
        )

    # -- running: the poller, explicit load and unload ---------------------------------------------------
    def start(self) -> None:
        if self.config.model_control is ModelControl.POLL and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="psn-poller")

    async def stop(self) -> None:
        """Stop the poller and the unloads in progress, then every version's batcher."""
        tasks = [t for t in (self._poller, *self._drains) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for entry in [*self.repo.entries(), *self._retiring]:
            if entry.streams is not None:
                await entry.streams.stop()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self.poll()
            except ModelLoadError as e:  # the models dir itself is unusable now: change nothing
                log.error("poll: %s", e.message)
            except Exception:
                log.exception("poll of %s failed", self.config.models_dir)

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """One model-control operation at a time, and none before the first load has finished."""
        if not self.runtime.loaded:
            raise ModelNotReady("the runtime is still loading its models")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            yield

    def _explicit(self) -> None:
        mode = self.config.model_control
        if mode is not ModelControl.EXPLICIT:
            raise ModelControlDisabled(
                f"model control is {mode}: loading and unloading on request needs model control explicit "
                "(--model-control explicit, PSN_MODEL_CONTROL=explicit)"
            )

    async def poll(self) -> list[ModelInfo]:
        async with self._locked():
            loaded = await self._reconcile(None, retry_failed=False)
        self.runtime.observe_poll(loaded)
        return loaded

    async def load_model(self, name: str) -> list[ModelInfo]:
        self._explicit()
        async with self._locked():
            outcomes = await self._reconcile(name, retry_failed=True)
        failed = [i for i in outcomes if i.status is ModelStatus.FAILED or i.error]
        if failed:
            reasons = "; ".join(f"version {i.version}: {i.error}" for i in failed)
            raise ModelLoadError(f"model {name!r} failed to load ({reasons})")
        return outcomes

    async def unload_model(self, name: str) -> list[ModelInfo]:
        self._explicit()
        async with self._locked():
            entries = self.repo.versions(name)  # UnknownModel
            for entry in entries:
                if entry.status is ModelStatus.READY:
                    self._retire(entry, removed=False)
                elif entry.status is ModelStatus.FAILED:
                    entry.status = ModelStatus.UNAVAILABLE
                    self.runtime.observe_status(entry)
        return [e.info() for e in entries]

    async def index(self, ready_only: bool) -> list[IndexEntry]:
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, scan, self.config.models_dir)
        except ModelLoadError:
            found = []
        wanted, left_out = select(found, self.latest)
        not_loaded = {
            ModelControl.NONE: "not loaded: found after the start, and model control is none",
            ModelControl.POLL: "not loaded yet: the next poll loads it",
            ModelControl.EXPLICIT: "not loaded: load it on request",
        }[self.config.model_control]
        on_disk = [IndexEntry(v.name, v.version, "UNAVAILABLE", v.error or not_loaded) for v in wanted]
        policy = f"left out by the version policy {self.config.version_policy}"
        on_disk += [IndexEntry(v.name, v.version, "UNAVAILABLE", v.error or policy) for v in left_out]
        return self.repo.index(on_disk, ready_only)

    # -- reconciling the versions served with the versions on disk ---------------------------------------
    async def _reconcile(self, name: str | None, retry_failed: bool) -> list[ModelInfo]:
        """Load what is new or changed on disk (for one model, or all), unload what is gone. Returns the
        records of the versions it tried to load."""
        found = await asyncio.get_running_loop().run_in_executor(None, scan, self.config.models_dir)
        wanted, _ = select(found, self.latest)
        if name is not None:
            if not any(v.name == name for v in found):
                raise UnknownModel(name)
            wanted = [v for v in wanted if v.name == name]
        keys = {v.key for v in wanted}
        scope = (
            self.repo.entries()
            if name is None
            else self.repo.versions(name)
            if name in self.repo.names
            else []
        )
        for entry in scope:
            if (entry.name, entry.version) not in keys:
                self._drop(entry)
        outcomes = []
        for vd in wanted:
            current = self.repo.get(vd.name, vd.version)
            if self._wants_load(current, vd, retry_failed):
                outcomes.append(await self._load_version(vd, current))
        return outcomes

    @staticmethod
    def _wants_load(current: Version | None, vd: VersionDir, retry_failed: bool) -> bool:
        if current is None or current.status in (ModelStatus.UNLOADING, ModelStatus.UNAVAILABLE):
            return True
        changed = current.found.fingerprint != vd.fingerprint
        if current.status is ModelStatus.FAILED:
            return retry_failed or changed
        if current.status is ModelStatus.READY:
            return changed and (retry_failed or vd.fingerprint != current.failed_fingerprint)
        return False  # LOADING: the first load is still at it

    async def _load_version(self, vd: VersionDir, current: Version | None) -> ModelInfo:
        """Load one version off the event loop; it replaces ``current`` only once it is READY."""
        entry = Version(vd, ModelStatus.FAILED if vd.error else ModelStatus.LOADING, vd.error)
        serving = current is not None and current.status is ModelStatus.READY
        if not serving:
            self.repo.add(entry)  # the index shows it LOADING (or FAILED)
            self.runtime.observe_status(entry)
        if vd.error is None:
            log.info("model %s version %s loading from %s", vd.name, vd.version, vd.directory)
            built = await asyncio.get_running_loop().run_in_executor(None, self._build, entry)
            if built and self.runtime.closed:
                assert entry.streams is not None
                await entry.streams.stop()
                return entry.info()
            if built:
                self._ready(entry)
                if current is not None and serving:
                    self._retire(current, removed=True)  # replaced by its changed copy
                return entry.info()
        if current is not None and serving:
            current.error = f"its files changed and the new ones failed to load: {entry.error}"
            current.failed_fingerprint = vd.fingerprint
            return current.info()
        self.runtime.observe_status(entry)
        return entry.info()

    def _drop(self, entry: Version) -> None:
        """A version no longer on disk (or left out by the policy): unload it, then forget it."""
        if entry.status is ModelStatus.READY:
            self._retire(entry, removed=True)
        elif entry.status is ModelStatus.UNLOADING:
            entry.removed = True
        else:
            self.repo.discard(entry)

    def _retire(self, entry: Version, removed: bool) -> None:
        entry.status = ModelStatus.UNLOADING
        entry.removed = removed
        self.repo.refresh(entry.name)
        self._retiring.add(entry)
        self.runtime.observe_status(entry)
        log.info(
            "model %s version %s unloading (%d streams open on it)",
            entry.name,
            entry.version,
            len(self.runtime.streams_on(entry)),
        )
        task = asyncio.get_running_loop().create_task(
            self._drain(entry), name=f"psn-unload-{entry.name}-{entry.version}"
        )
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, entry: Version) -> None:
        """Wait until the version has no stream open and no work in flight (at most unload_grace_s, then
        close what is left), then drop its sessions and hand the memory back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.unload_grace_s
        while not entry.idle and loop.time() < deadline:
            await asyncio.sleep(DRAIN_CHECK_S)
        left = self.runtime.streams_on(entry)
        for stream_id in left:
            self.runtime.close_stream(stream_id, reason="unloaded")
        if left:
            log.warning(
                "model %s version %s: closed %d streams still open after unload_grace_s",
                entry.name,
                entry.version,
                len(left),
            )
        streams = entry.streams
        entry.streams = entry.model = None
        entry.status = ModelStatus.UNAVAILABLE
        self._retiring.discard(entry)
        if entry.removed:
            self.repo.discard(entry)
        self.runtime.observe_status(entry)
        if streams is not None:
            await streams.stop()
            streams.release()
        del streams
        await loop.run_in_executor(None, release_memory)
        log.info("model %s version %s unloaded", entry.name, entry.version)
