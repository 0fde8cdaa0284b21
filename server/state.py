"""Typed access to what an app holds (settings, metrics, the data plane and, once the lifespan has started
it, the runtime)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection

    from fastapi import FastAPI

    from psn_runtime import Runtime
    from server.dataplane import DataPlane
    from server.metrics import Metrics
    from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    api_key: str | None
    plane: DataPlane
    sockets: set[Any] = field(default_factory=set)  # open stream WebSockets (closed 1001 on shutdown)
    draining: bool = False  # shutting down: new streams are refused, open ones closed
    loop: Any = None  # the event loop the lifespan (and so every stream) runs on
    grpc: Any = None  # server.grpc_server.GrpcServer while gRPC is served (``--grpc-port``), else None

    @property
    def runtime(self) -> Runtime | None:
        """The runtime once the lifespan has started it (None before and after)."""
        return self.plane.attached

    @property
    def model_names(self) -> Collection[str]:
        """The model names the runtime knows (a live view: models loaded while serving join it)."""
        runtime = self.plane.attached
        return runtime.names() if runtime is not None else ()


def app_state(app: FastAPI) -> AppState:
    return app.state.psn
