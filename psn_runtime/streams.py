"""Streams of one model and its cross-stream step batcher.

Steps from different streams that are queued together run as ONE ORT call: the batcher awaits the first
queued step, takes everything already queued (up to max_batch), optionally waits max_wait for more, and
runs the session in a worker thread while new steps queue up for the next batch.

Invariants that keep streams from corrupting each other:
- a stream has at most one step queued or in flight (a per-stream lock serialises its steps);
- a slot goes back to the pool only when its stream is closed AND has no step pending, and a reset
  requested while a step is pending is applied right after that step; so a batch never writes a slot
  that another stream has meanwhile taken over;
- a step whose caller was cancelled, or whose stream was closed, writes no state back.

Full-only models (no step graph, e.g. PSN) keep a [T, F] input buffer per slot: steps 0..T-2 only write
it and answer ``ready=False`` at once; step T-1 is batched like any step and runs full.onnx on [B, T, F].

Stream methods are called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from psn_runtime.config import RuntimeConfig
from psn_runtime.errors import (
    BadSnapshot,
    InferenceError,
    Overloaded,
    RuntimeClosed,
    StreamOver,
    UnknownStream,
)
from psn_runtime.manifest import FULL_GRAPH, INPUT_NAME, LOGITS_NAME, STEP_GRAPH
from psn_runtime.pool import ArraySpec, SlotPool
from psn_runtime.registry import LoadedModel
from psn_runtime.results import StepResult, softmax
from psn_runtime.snapshot import ArrayLayout, SnapshotSpec, StreamState
from psn_runtime.validate import StepInput
from psn_runtime.worker import Worker

log = logging.getLogger(__name__)

BatchHook = Callable[[str, str, int, float], None]  # model, version, steps, seconds


@dataclass(eq=False, slots=True)
class Stream:
    id: str
    model: str
    slot: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    t: int = 0  # steps taken in the current sequence (= index of the next step)
    pending: int = 0  # steps queued or in flight
    closed: bool = False
    released: bool = False  # the slot went back to the pool
    reset_requested: bool = False
    last_active: float = field(default_factory=time.monotonic)
    owner: Any = None  # the runtime's record of the model version the stream is on (for its whole life)


@dataclass(eq=False, slots=True)
class _Item:
    stream: Stream
    x: np.ndarray  # [*shape] float32
    future: asyncio.Future


def _wake(fut: asyncio.Future | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class _LoneBinding:
    """A step graph's batch of one, run inline through an ORT IOBinding: the inputs are the slot's rows of the
    pool (views, bound once per slot), the outputs land in preallocated buffers (no allocation by ORT, no
    copy into new numpy arrays). The same kernels run on the same values, so the answers keep their bits.
    Only for sessions on the CPU provider (the binding points ORT at host memory)."""

    def __init__(self, streams: ModelStreams, specs: list[ArraySpec], classes: int) -> None:
        self.streams = streams
        self.session = streams.session
        self.x = np.zeros((1, *streams.shape), np.float32)  # [1, *shape], the step's input, copied in
        self.outs = [np.zeros((1, classes), np.float32)] + [
            np.zeros((1, *s.shape), s.dtype) for s in specs
        ]  # logits [1, C], then each new state [1, *shape]
        self._bound_arrays: list[np.ndarray] | None = None  # the pool arrays the cached bindings point into
        self._bindings: dict[int, object] = {}  # slot -> IOBinding

    @classmethod
    def for_model(cls, streams: ModelStreams, specs: list[ArraySpec], classes: int) -> _LoneBinding | None:
        if streams.full_only or streams.session.get_providers() != ["CPUExecutionProvider"]:
            return None
        return cls(streams, specs, classes)

    def _binding(self, slot: int) -> object:
        arrays = self.streams.pool.arrays
        if arrays is not self._bound_arrays:  # the pool grew: its arrays moved
            self._bindings.clear()
            self._bound_arrays = arrays
        binding = self._bindings.get(slot)
        if binding is None:
            binding = self.session.io_binding()
            for name, arr in zip(self.streams.input_names, arrays, strict=True):
                binding.bind_cpu_input(name, arr[slot : slot + 1])  # [1, *shape], a view of the slot
            binding.bind_cpu_input(INPUT_NAME, self.x)
            for name, out in zip(self.streams.output_names, self.outs, strict=True):
                binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
            self._bindings[slot] = binding
        return binding

    def run(self, slot: int, xb: np.ndarray) -> list[np.ndarray]:
        """xb [1, *shape] -> [logits [1, C], new states [1, *shape]...] (buffers reused by the next run)."""
        binding = self._binding(slot)
        self.x[...] = xb
        self.session.run_with_iobinding(binding)
        return self.outs


class ModelStreams:
    """The streams of one READY model: state pool, step queue and batcher task."""

    def __init__(self, model: LoadedModel, config: RuntimeConfig, on_batch: BatchHook) -> None:
        m = model.manifest
        self.name = model.name
        self.version = m.version
        self.labels = m.labels
        self.shape = tuple(m.input_shape)  # per-step input shape
        self.open_streams = 0
        self.full_only = not m.streams
        if self.full_only:
            specs = [ArraySpec(None, None, (m.T, *m.input_shape), np.dtype(np.float32), 0.0)]  # input buffer
            self.session = model.full
            self.output_names = [LOGITS_NAME]
            self.limit = m.T
            self.limit_reason = f"a full-sequence model answers once, after its T={m.T} steps"
        else:
            if model.step is None:
                raise ValueError(f"model {model.name!r} streams but has no step session")
            specs = [ArraySpec(s.input, s.output, s.shape, np.dtype(s.dtype), s.init) for s in m.states]
            self.session = model.step
            self.output_names = [LOGITS_NAME] + [s.output for s in m.states]
            self.limit = config.max_stream_steps
            self.limit_reason = "the runtime's max_stream_steps"
            if m.max_steps is not None and m.max_steps <= self.limit:
                self.limit = m.max_steps
                self.limit_reason = f"the model's max_steps (kind {m.kind}, T={m.T})"
        self.input_names = [s.input for s in specs]
        self.pool = SlotPool(specs, m.num_classes)
        self._lone = _LoneBinding.for_model(self, specs, m.num_classes)
        graph = FULL_GRAPH if self.full_only else STEP_GRAPH
        layouts = tuple(
            ArrayLayout(s.input or "buffer", s.dtype.name, tuple(s.shape)) for s in specs
        )  # full-only: the [T, F] input buffer
        self.snapshot_spec = SnapshotSpec(
            model.name, m.sha256[graph], m.num_classes, layouts, self.limit, m.version
        )
        self.max_batch = config.max_batch if config.batching else 1
        self.max_wait = config.max_wait_ms / 1000.0 if config.batching else 0.0
        self.max_queue = config.max_queue
        self._worker = Worker(model.name)
        # batches of at most inline_rows steps run ORT on the event loop's thread (no hop to the worker:
        # several context switches saved per batch)
        self.inline_rows = config.inline_max_rows
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._inflight: list[_Item] = []
        self._wakeup: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self.steps = 0
        self.batches = 0

    # -- stream lifecycle --------------------------------------------------------------------------------
    def open(self, stream_id: str) -> Stream:
        stream = Stream(stream_id, self.name, self.pool.acquire())
        self.open_streams += 1
        return stream

    def reset(self, stream: Stream) -> None:
        if stream.pending:
            stream.reset_requested = True  # applied as soon as the pending step is answered
        else:
            self._reset_now(stream)

    def close(self, stream: Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        self.open_streams -= 1
        if not stream.pending:
            self._release(stream)

    async def export_state(self, stream: Stream) -> StreamState:
        """A copy of the stream's state between two steps (waits for a pending step to be answered)."""
        async with stream.lock:
            if stream.closed:
                raise UnknownStream(f"stream {stream.id!r} is closed")
            if stream.reset_requested:
                self._reset_now(stream)
            pool, slot = self.pool, stream.slot
            arrays = tuple(arr[slot].copy() for arr in pool.arrays)  # each [*shape]
            return StreamState(stream.t, int(pool.counts[slot]), pool.sums[slot].copy(), arrays)

    async def restore_state(self, stream: Stream, state: StreamState) -> None:
        """Replace the stream's state with ``state`` (checked against snapshot_spec by the caller's unpack;
        the shapes and ranges are checked again here before anything is written)."""
        spec = self.snapshot_spec
        if not 0 <= state.count <= state.t <= spec.max_t or len(state.arrays) != len(spec.arrays):
            raise BadSnapshot(f"stream state does not fit model {self.name!r}")
        for layout, arr in zip(spec.arrays, state.arrays, strict=True):
            if tuple(arr.shape) != layout.shape:
                raise BadSnapshot(f"state array {layout.name}: shape {arr.shape}, expected {layout.shape}")
        if state.sums.shape != (spec.classes,):
            raise BadSnapshot(f"logit sums of shape {state.sums.shape}, expected ({spec.classes},)")
        async with stream.lock:
            if stream.closed:
                raise UnknownStream(f"stream {stream.id!r} is closed")
            pool, slot = self.pool, stream.slot
            for arr, value in zip(pool.arrays, state.arrays, strict=True):
                arr[slot] = value
            pool.sums[slot] = state.sums
            pool.counts[slot] = state.count
            stream.t = state.t
            stream.reset_requested = False
            stream.last_active = time.monotonic()

    def _reset_now(self, stream: Stream) -> None:
        stream.t = 0
        stream.reset_requested = False
        self.pool.init_slot(stream.slot)

    def _release(self, stream: Stream) -> None:
        if not stream.released:
            stream.released = True
            self.pool.release(stream.slot)

    def _finish(self, item: _Item) -> None:
        s = item.stream
        s.pending -= 1
        s.last_active = time.monotonic()
        if s.pending == 0:
            if s.closed:
                self._release(s)
            elif s.reset_requested:
                self._reset_now(s)

    # -- stepping ----------------------------------------------------------------------------------------
    async def step(self, stream: Stream, step: StepInput) -> StepResult:
        """step: a validated timestep of this model's shape."""
        x = step.array  # [*shape] float32, finite
        async with stream.lock:
            if stream.closed:
                raise UnknownStream(f"stream {stream.id!r} is closed")
            t = stream.t
            if t >= self.limit:
                raise StreamOver(
                    f"stream {stream.id!r} of model {self.name!r} has taken all {self.limit} steps it may "
                    f"({self.limit_reason}); reset it or open a new stream"
                )
            stream.last_active = time.monotonic()
            if self.full_only:
                self.pool.arrays[0][stream.slot, t] = x  # buffer[slot, t, :] = x
                if t < self.limit - 1:
                    stream.t = t + 1
                    self.steps += 1
                    return StepResult(stream.id, t, False, None, None, None, False)
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"model {self.name!r}: {len(self._queue)} steps already queued; retry later")
            loop = asyncio.get_running_loop()
            item = _Item(stream, x, loop.create_future())
            if self.open_streams == 1 and self.inline_rows >= 1 and not self._queue and not self._inflight:
                # the model's only stream: no other step can join a batch, so run it here, inline (the same
                # batch of one the batcher would run, without the hop to its task and back)
                stream.pending += 1
                await self._run_batch([item], loop)  # inline: no await inside, nothing can interleave
                return item.future.result()
            self._queue.append(item)
            stream.pending += 1
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._run(), name=f"psn-batcher-{self.name}")
                self._task.add_done_callback(self._task_done)
            _wake(self._wakeup)
            return await item.future

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher of model %s died", self.name, exc_info=task.exception())
            self.fail_pending(InferenceError(f"model {self.name!r}: step batcher failed: {task.exception()}"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup = loop.create_future()
                await self._wakeup
            batch = self._take([])
            if self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                while len(batch) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                    self._wakeup = fut = loop.create_future()
                    handle = loop.call_later(remaining, _wake, fut)
                    await fut
                    handle.cancel()
                    self._take(batch)
            if batch and await self._run_batch(batch, loop):
                await asyncio.sleep(0)  # it ran inline: let the answered callers (and others) go on

    def _take(self, batch: list[_Item]) -> list[_Item]:
        """Move queued steps into batch (up to max_batch), answering those that may no longer run."""
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # the caller was cancelled
                self._finish(item)
            elif item.stream.closed:
                item.future.set_exception(UnknownStream(f"stream {item.stream.id!r} was closed"))
                self._finish(item)
            else:
                batch.append(item)
        return batch

    async def _run_batch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> bool:
        """Run one batch and answer its steps; True when ORT ran inline (on this thread)."""
        n = len(batch)
        inline = n <= self.inline_rows
        idx = None
        feed: dict[str, np.ndarray] = {}
        lone = self._lone if n == 1 and inline else None  # a step graph's batch of one on CPU: IOBinding
        if lone is not None:
            xb = batch[0].x[None]  # [1, F]
        elif n == 1:  # views, no copies: nothing writes a slot while a step on it is pending
            slot = batch[0].stream.slot
            gathered = [arr[slot : slot + 1] for arr in self.pool.arrays]  # each [1, *shape]
            xb = batch[0].x[None]  # [1, F]
            if self.full_only:  # full.onnx's MatMuls take another kernel for one row (last bits differ):
                gathered = [np.concatenate([g, g]) for g in gathered]  # [2, T, F], as in any larger batch
        else:  # copies: the worker thread never reads the live pool
            idx = np.fromiter((it.stream.slot for it in batch), dtype=np.intp, count=n)  # [B]
            gathered = self.pool.gather(idx)  # each [B, *shape]
            xb = np.stack([it.x for it in batch]) if not self.full_only else None  # [B, F]
        if lone is None:
            if self.full_only:
                feed = {INPUT_NAME: gathered[0]}  # [B, T, F]
            else:
                feed = dict(zip(self.input_names, gathered, strict=True))
                feed[INPUT_NAME] = xb
        self._inflight = batch
        t0 = time.perf_counter()
        session = self.session
        try:
            if lone is not None:
                outs = lone.run(batch[0].stream.slot, xb)
            elif inline:  # nothing can cancel it or close the runtime meanwhile: no await until it is done
                outs = session.run(self.output_names, feed)
            else:
                outs = await self._worker.submit(session.run, self.output_names, feed)
        except asyncio.CancelledError:
            raise  # the runtime is closing: close() answers the in-flight steps
        except Exception as e:  # an ORT failure: answer every step of the batch, keep serving
            self._inflight = []
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(InferenceError(f"model {self.name!r}: onnxruntime failed: {e}"))
                self._finish(it)
            return inline
        self._inflight = []
        self._on_batch(self.name, self.version, n, time.perf_counter() - t0)
        self.batches += 1
        self._deliver(batch, idx, outs)
        return inline

    def _deliver(self, batch: list[_Item], idx: np.ndarray | None, outs: list[np.ndarray]) -> None:
        # a step whose caller was cancelled, or whose stream was closed, writes nothing back
        live = [not it.future.done() and not it.stream.closed for it in batch]
        if self.full_only:
            means = outs[0][: len(batch)]  # [B, C]: full.onnx's logits are already the mean over T steps
        elif idx is None:
            means = self._advance_one(batch[0].stream.slot, live[0], outs)
        else:
            means = self._advance(idx, live, outs)
        probs = softmax(means)
        best = means.argmax(axis=1).tolist()
        labels = self.labels
        limit = self.limit
        for i, it in enumerate(batch):
            s = it.stream
            t = s.t
            if live[i]:
                s.t = t + 1
                self.steps += 1
            if not it.future.done():
                it.future.set_result(
                    StepResult(s.id, t, True, labels[best[i]], probs[i], means[i], t + 1 >= limit)
                )
            self._finish(it)

    def _advance(self, idx: np.ndarray, live: list[bool], outs: list[np.ndarray]) -> np.ndarray:
        """Write the new states and logit sums of the live slots; the running means [B, C] float32."""
        pool = self.pool
        sums = pool.sums[idx] + outs[0]  # [B, C] float64
        counts = pool.counts[idx] + 1  # [B]
        rows = slice(None) if all(live) else np.array(live)
        sel = idx[rows]
        pool.scatter(sel, [o[rows] for o in outs[1:]])
        pool.sums[sel] = sums[rows]
        pool.counts[sel] = counts[rows]
        return (sums / counts[:, None]).astype(np.float32)

    def _advance_one(self, slot: int, live: bool, outs: list[np.ndarray]) -> np.ndarray:
        """_advance for a batch of one, with basic indexing (the same arithmetic, so the same bits)."""
        pool = self.pool
        sums = pool.sums[slot] + outs[0][0]  # [C] float64
        count = pool.counts[slot] + 1
        if live:
            for arr, out in zip(pool.arrays, outs[1:], strict=True):
                arr[slot] = out[0]
            pool.sums[slot] = sums
            pool.counts[slot] = count
        return (sums / count).astype(np.float32)[None]  # [1, C]

    # -- shutdown and stats ------------------------------------------------------------------------------
    def fail_pending(self, error: Exception) -> None:
        """Answer every queued and in-flight step with error (used when the runtime closes)."""
        items = self._inflight + list(self._queue)
        self._inflight = []
        self._queue.clear()
        for it in items:
            if not it.future.done():
                it.future.set_exception(error)
            self._finish(it)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a dead batcher was logged
                await self._task
            self._task = None
        self.fail_pending(RuntimeClosed("the runtime is closed"))
        self._worker.stop()

    def release(self) -> None:
        """Drop the sessions and the state pool (after ``stop``, when the model version unloads). Also breaks
        the reference cycle with the lone-step binding, so that the memory comes back by reference counting
        alone (a server freezes start-up's objects: the cycle collector never looks at them again)."""
        self._lone = None
        self.session = None  # type: ignore[assignment]
        self.pool = None  # type: ignore[assignment]

    def stats(self) -> dict:
        return {
            "queued": len(self._queue),
            "steps": self.steps,
            "batches": self.batches,
            "pool_capacity": self.pool.capacity,
            "pool_in_use": self.pool.in_use,
            "max_steps_per_stream": self.limit,
        }
