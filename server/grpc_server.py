"""The Open Inference Protocol over gRPC on ``--grpc-port`` (Triton's default 8001; ``off`` = none): grpcio's
asyncio server (``grpc.aio``) in the same process and event loop as the HTTP server, started and stopped by
the app's lifespan, reaching the same data plane, streams, limits, error table and metrics.

Message classes and the service come from ``tritonclient.grpc.service_pb2`` / ``service_pb2_grpc``: the
code NVIDIA generates from Triton's ``grpc_service.proto`` and ships in every tritonclient release. Why these
rather than running grpcio-tools on a copy of the .proto at build time:

- the proto is a superset of KServe's predict v2 proto (the same package ``inference``, the same service
  ``GRPCInferenceService``, the same field numbers) with Triton's bidirectional ``ModelStreamInfer`` added,
  so tritonclient.grpc and KServe's ``InferenceGRPCClient`` both work against it unmodified;
- it is generated and released by the protocol's own maintainers, so it cannot drift from what
  tritonclient sends; nothing is vendored here and the build has no protoc step (an editable install would
  otherwise need generated files in the source tree, and grpcio-tools as a build dependency);
- the wheel is pure Python and small. Its cost to the serving install is what its client imports (the
  package's ``__init__`` imports the client): python-rapidjson, ml-dtypes, packaging, urllib3; beside
  grpcio itself, ml-dtypes' compiled extension is the largest part of what gRPC adds to the install.
  The other routes were worse: KServe's package has generated stubs too but no ModelStreamInfer and a
  server's tree of dependencies; generating with grpcio-tools needs the .proto files in this repository
  and a build step.

One process cannot import both these classes and KServe's generated ``grpc_predict_v2_pb2`` (the same
message names in protobuf's one descriptor pool), which only matters to a test that runs KServe's client:
it runs in its own process.

Draining (SIGTERM, ``drain``): new calls are refused with UNAVAILABLE; every open ModelStreamInfer call
sends a snapshot of each resumable sequence it holds, then ends with UNAVAILABLE ("server shutting down");
unary calls in flight get the HTTP grace period to finish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
from tritonclient.grpc import service_pb2_grpc

from server.cli import GRACE_S  # unary calls in flight get as long as HTTP requests
from server.grpc_service import Service

if TYPE_CHECKING:
    from server.grpc_stream import StreamCall
    from server.state import AppState

log = logging.getLogger("psn.server")


def address(host: str, port: int) -> str:
    """gRPC's ``host:port`` (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """One ``grpc.aio`` server serving one app's state."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.calls: set[StreamCall] = set()  # open ModelStreamInfer calls (drained on shutdown)
        self.draining = False
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind ``--host``:``--grpc-port`` and serve; returns the bound port (``--grpc-port 0``: any free)."""
        settings = self.state.settings
        assert settings.grpc_port is not None
        options = [
            # psn serve holds the port from before the models load (server.listen.hold_port: SO_REUSEPORT,
            # not listening) and refuses a port someone else holds; this server (each worker's, with
            # --workers N: the kernel spreads connections) binds it with SO_REUSEPORT beside the holder
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_body_bytes),
        ]
        server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(self.state, self), server)
        where = address(settings.host, settings.grpc_port)
        try:
            port = server.add_insecure_port(where)
        except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
            raise OSError(f"cannot listen for gRPC on {where}: {exc}") from None
        if port == 0:  # older grpcio answers 0 instead of raising
            raise OSError(f"cannot listen for gRPC on {where}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def drain(self) -> int:
        """Refuse new calls, end every ModelStreamInfer call (snapshots first), and stop the server (unary
        calls in flight get GRACE_S). Returns how many stream calls were ended."""
        self.draining = True
        calls = list(self.calls)
        await asyncio.gather(*(call.drain() for call in calls))
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.create_task(self._server.stop(GRACE_S))
        return len(calls)

    async def stop(self) -> None:
        """Stop serving (after ``drain`` or without it); idempotent."""
        if self._server is None:
            return
        if self._stopping is None:
            self.draining = True
            await asyncio.gather(*(call.drain() for call in list(self.calls)))
            self._stopping = asyncio.create_task(self._server.stop(GRACE_S))
        await self._stopping
        self._server = None


async def start(state: AppState) -> GrpcServer:
    server = GrpcServer(state)
    port = await server.start()
    log.info("serving gRPC (Open Inference Protocol) on %s", address(state.settings.host, port))
    return server
