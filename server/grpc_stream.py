"""Triton's bidirectional ``ModelStreamInfer``: many sequences (and classifications) on one gRPC stream.

Each request message is one ModelInfer (``server.grpc_service.infer``): with Triton's sequence parameters
(``sequence_id``, ``sequence_start``, ``sequence_end``) it is one timestep of a sequence of the data plane
(``DataPlane.sequences``, the V2 HTTP sequence extension's streams, limits and answers), without them a
classification. Messages are handled concurrently, up to ``MAX_IN_FLIGHT`` per call (then the call stops
reading: HTTP/2 flow control pushes back on the client), so the steps of many sequences batch together;
the steps of one sequence run one after the other, in the order they arrived, and are answered in that
order. Answers of different sequences may overtake each other (as in Triton); an answer carries its
request's ``id`` and the sequence parameters.

An error answers its message only, in-stream (``error_message``, with ``infer_response.id`` naming the
request), and the call goes on: it may carry other sequences. A wrong API key ends the call itself
(UNAUTHENTICATED), as does a drain (UNAVAILABLE), after the answers in flight and, with resumable streams
(``--stream-secret``), a snapshot of each sequence the call holds (an answer with the parameters
``sequence_id``, ``snapshot``, ``t``: the WebSocket's drain); the client resumes it on another replica
with ``sequence_start`` and the parameter ``resume``, then replays its steps from ``t`` on. When the call
ends, the sequences it started and did not end are closed (as a WebSocket's stream is with its socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from tritonclient.grpc import service_pb2 as pb

from server import auth, grpc_tensors
from server.errors import ShuttingDown
from server.grpc_service import SHUTDOWN, infer, metadata, resumer

if TYPE_CHECKING:
    from server.grpc_service import Service

MAX_IN_FLIGHT = 128  # messages of one call being handled at once
DRAIN_TIMEOUT_S = 5.0  # a call's answers in flight, and its last writes, when the server drains
METHOD = "ModelStreamInfer"

_END = None  # the writer's stop signal


class _Ordered:
    """A sequence's turn: the steps of one sequence run one at a time, first come first served (asyncio's
    Lock wakes its waiters in order); forgotten when no step of it is pending."""

    __slots__ = ("lock", "pending")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.pending = 0


class StreamCall:
    """One ModelStreamInfer call: a reader that starts a task per message, a writer that sends answers."""

    def __init__(self, service: Service, context: grpc.aio.ServicerContext) -> None:
        self.service = service
        self.context = context
        self.plane = service.plane
        self.answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        self.turns: dict[tuple[str, int | str], _Ordered] = {}
        self.opened: set[tuple[str, int | str]] = set()  # sequences this call started and did not end
        self.tasks: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.draining = False
        self.finished = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def run(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        service, context = self.service, self.context
        try:
            if service.server.draining:
                raise ShuttingDown(SHUTDOWN)
            if service.api_key is not None:
                auth.check(service.api_key, metadata(context))
        except Exception as exc:
            status, message = service.failed(exc, METHOD)
            service.metrics.child(service.metrics.grpc_requests, METHOD, "", status.name).inc()
            await context.abort(status, message)
        service.server.calls.add(self)
        self._reader = asyncio.create_task(self._read(requests))
        try:
            while (answer := await self.answers.get()) is not _END:
                await context.write(answer)
        finally:
            self._reader.cancel()
            for task in list(self.tasks):
                task.cancel()
            for name, sequence_id in self.opened:
                self.plane.sequences.close(name, sequence_id)
            service.server.calls.discard(self)
            self.finished.set()
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN)

    async def _read(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        async for request in requests:
            await self.slots.acquire()
            task = asyncio.create_task(self._handle(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        # the client half-closed: answer what is in flight, then end the call (OK)
        while self.tasks:
            await asyncio.wait(list(self.tasks))
        self.answers.put_nowait(_END)

    async def _handle(self, request: pb.ModelInferRequest) -> None:
        service = self.service
        start = time.perf_counter()
        code = "OK"
        key: tuple[str, int | str] | None = None
        turn: _Ordered | None = None
        try:
            sequence_id, started, ended = grpc_tensors.sequence(request)
            if sequence_id is None:
                answer = await infer(self.plane, request)
            else:
                key = (request.model_name, sequence_id)
                turn = self.turns.get(key)
                if turn is None:
                    turn = self.turns[key] = _Ordered()
                turn.pending += 1
                async with turn.lock:
                    try:
                        answer = await infer(self.plane, request)
                    finally:
                        if started:
                            self.opened.add(key)
                        if ended:
                            self.opened.discard(key)
            self.answers.put_nowait(pb.ModelStreamInferResponse(infer_response=answer))
        except Exception as exc:
            status, message = service.failed(exc, METHOD)
            code = status.name
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            self.answers.put_nowait(pb.ModelStreamInferResponse(error_message=message, infer_response=failed))
        finally:
            if turn is not None and key is not None:
                turn.pending -= 1
                if turn.pending == 0:
                    del self.turns[key]
            self.slots.release()
            metrics = service.metrics
            model = service.model_label(request.model_name)
            metrics.child(metrics.grpc_requests, METHOD, model, code).inc()
            metrics.child(metrics.grpc_latency, METHOD, model).observe(time.perf_counter() - start)

    async def _snapshot(self, name: str, sequence_id: int | str) -> None:
        """The sequence's snapshot as an answer (parameters sequence_id, snapshot, t), if it is resumable."""
        stream = await self.plane.sequences.stream(name, sequence_id, start=False)
        resumable = resumer(self.plane, stream)
        if not resumable.enabled:
            return
        snapshot, t = await resumable.snapshot()
        answer = pb.ModelInferResponse(model_name=name, model_version=stream.manifest.version)
        for key, value in (("sequence_id", sequence_id), ("snapshot", snapshot), ("t", t)):
            answer.parameters[key].CopyFrom(grpc_tensors.parameter(value))
        self.answers.put_nowait(pb.ModelStreamInferResponse(infer_response=answer))

    async def drain(self) -> None:
        """Stop reading, let the answers in flight go out, send a snapshot of every resumable sequence this
        call holds, then end the call with UNAVAILABLE."""
        if self.draining or self.finished.is_set():
            return
        self.draining = True
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while self.tasks:
                    await asyncio.wait(list(self.tasks))
                for name, sequence_id in list(self.opened):
                    with contextlib.suppress(Exception):  # a sequence that cannot give one is closed anyway
                        await self._snapshot(name, sequence_id)
        self.answers.put_nowait(_END)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self.finished.wait()
