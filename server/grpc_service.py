"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs bound to the data plane.

Each unary RPC runs under ``_rpc``: the API key (metadata ``authorization: Bearer KEY`` or ``x-api-key:
KEY``; ServerLive and ServerReady, the probes, need none), a refusal while the server drains, the error
table's gRPC status code with the error's message as details, and the ``psn_grpc_*`` metrics. RPCs this
server does not implement (model config and statistics, shared memory, trace and log settings) answer
UNIMPLEMENTED. The repository calls (index, load, unload) are the data plane's, as V2 HTTP's
``/v2/repository`` routes (the runtime's model control): load and unload need ``--model-control explicit``
(else FAILED_PRECONDITION, as V2 HTTP's 400).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from psn_runtime import ModelStatus
from server import auth, grpc_tensors, resume, v2codec
from server.dataplane import DataPlane, OpenStream
from server.errors import InvalidRequest, ShuttingDown, error_code, error_payload, is_internal, spec_for
from server.metrics import UNKNOWN_MODEL

if TYPE_CHECKING:
    from server.grpc_server import GrpcServer
    from server.state import AppState

log = logging.getLogger("psn.server")

SHUTDOWN = "server shutting down"
Request = TypeVar("Request")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Any]]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The error table's gRPC status code and the message a client sees (generic for internal errors)."""
    return grpc.StatusCode[spec_for(exc).grpc], error_payload(exc)["error"]["message"]


def metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return dict(context.invocation_metadata() or ())


def _rpc(method: str, *, key: bool = True) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(self: Service, request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                if self.server.draining:
                    raise ShuttingDown(SHUTDOWN)
                if key and self.api_key is not None:
                    auth.check(self.api_key, metadata(context))
                return await fn(self, request, context)
            except Exception as exc:
                status, message = self.failed(exc, method)
                code = status.name
                await context.abort(status, message)
            except BaseException:  # the client cancelled (asyncio.CancelledError)
                code = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                model = self.model_label(getattr(request, "name", "") or getattr(request, "model_name", ""))
                metrics = self.metrics
                metrics.child(metrics.grpc_requests, method, model, code).inc()
                metrics.child(metrics.grpc_latency, method, model).observe(time.perf_counter() - start)

        return handler

    return wrap


def resumer(plane: DataPlane, stream: OpenStream) -> resume.StreamResume:
    return resume.StreamResume.open(plane.runtime, plane.settings, stream.inputs.name, stream.id, 0)


async def _control(plane: DataPlane, name: str, sequence_id: int | str, asked: str, snapshot: str) -> dict:
    """A sequence's snapshot, or a resume that opens it with a snapshot's state: the answer's parameters."""
    if asked == "snapshot":
        stream = await plane.sequences.stream(name, sequence_id, start=False)
        text, t = await resumer(plane, stream).snapshot()
        return {"sequence_id": sequence_id, "snapshot": text, "t": t}
    stream = await plane.sequences.stream(name, sequence_id, start=True)
    resumable = resumer(plane, stream)
    try:
        t = await resumable.resume(snapshot)  # on the model version that made the snapshot
    except BaseException:
        plane.sequences.close(name, sequence_id)  # a snapshot that does not resume opens nothing
        raise
    return {"sequence_id": sequence_id, "resumed": True, "t": t, "version": resumable.spec.version}


async def infer(plane: DataPlane, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """One ModelInfer: a classification, one step of a sequence (Triton's sequence parameters), or a
    sequence's snapshot or resume (``snapshot``, ``resume``: no inputs, no outputs, the answer's parameters
    say ``snapshot`` and ``t``, or ``resumed``, ``t`` and ``version``). The protobuf message is decoded
    into the V2 codec's request; the data plane's input builder checks it and the codec makes the answer,
    as for V2 HTTP."""
    version = request.model_version or None
    inputs = plane.inputs(request.model_name, version)  # unknown or not ready: before any decoding
    sequence_id, start, end = grpc_tensors.sequence(request)
    asked = grpc_tensors.control(request, sequence_id, start)
    if asked is not None:
        assert sequence_id is not None
        parameters = await _control(plane, inputs.name, sequence_id, *asked)
        if end:
            plane.sequences.close(inputs.name, sequence_id)
        return grpc_tensors.encode(request.id, inputs.name, inputs.version, [], parameters)
    decoded = grpc_tensors.decode(request)
    step = decoded.sequence
    if step is None:
        x = inputs.classify_tensor(decoded.tensor)  # [B, T, *shape]
        result = await plane.classify(inputs.name, x, version, admitted=inputs.version)
        outs = v2codec.outputs(result.logits, result.probabilities, result.label_index, decoded.outputs)
        return grpc_tensors.encode(request.id, inputs.name, result.version, outs)
    inputs = plane.sequences.inputs(inputs.name, step.id, step.start, inputs)  # an open one's own version
    x = inputs.step_tensor(decoded.tensor)  # [*shape]
    result = await plane.sequences.step(
        inputs.name, step.id, x, start=step.start, end=step.end, version=version
    )
    arrays, parameters = v2codec.sequence_answer(result, inputs.manifest.num_classes, step.id)
    outs = v2codec.outputs(*arrays, decoded.outputs)
    return grpc_tensors.encode(request.id, inputs.name, inputs.version, outs, parameters)


def _one_repository(request: Any, allowed: frozenset[str] = frozenset()) -> None:
    """This server has one repository (the models dir): a request may name none. Triton's load parameters
    (a config or files to load instead of the directory's) are not supported; an unload's
    ``unload_dependents`` (tritonclient sends it) has nothing to act on (no ensembles)."""
    if request.repository_name:
        raise InvalidRequest(
            f"repository_name: one repository here, leave it empty (got {request.repository_name!r})",
            "repository_name",
        )
    unknown = sorted(set(getattr(request, "parameters", ())) - allowed)
    if unknown:
        raise InvalidRequest(f"parameters: not supported here (got {', '.join(unknown)})", "parameters")


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, server: GrpcServer) -> None:
        self.state = state
        self.server = server
        self.plane = state.plane
        self.metrics = state.metrics
        self.api_key = state.api_key

    def model_label(self, name: str) -> str:
        """A metrics label: the model's name when it is served (bounded cardinality), else a placeholder."""
        if not name:
            return ""
        return name if name in self.state.model_names else UNKNOWN_MODEL

    def failed(self, exc: Exception, where: str) -> tuple[grpc.StatusCode, str]:
        self.metrics.count_error(error_code(exc), "grpc")
        if is_internal(exc):
            log.error("internal error on gRPC %s", where, exc_info=exc)
        return status_of(exc)

    @_rpc("ServerLive", key=False)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc("ServerReady", key=False)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        ready, _ = self.plane.readiness()
        return pb.ServerReadyResponse(ready=ready)

    @_rpc("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        info = self.plane.model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=info.status is ModelStatus.READY)

    @_rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2codec.server_metadata())

    @_rpc("ModelMetadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = v2codec.model_metadata(*self.plane.loaded_model(request.name, request.version or None))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**entry) for entry in meta["inputs"]],
            outputs=[tensor(**entry) for entry in meta["outputs"]],
        )

    @_rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await infer(self.plane, request)

    # -- the repository extension (model control: --model-control explicit) ------------------------------
    @_rpc("RepositoryIndex")
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        _one_repository(request)
        entries = await self.plane.repository_index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries]
        )

    @_rpc("RepositoryModelLoad")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        _one_repository(request)
        await self.plane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc("RepositoryModelUnload")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        _one_repository(request, frozenset({"unload_dependents"}))
        await self.plane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> None:
        from server.grpc_stream import StreamCall

        await StreamCall(self, context).run(request_iterator)
