"""Typed access to what an app holds (settings, metrics, the runtime once the lifespan has started it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psn_runtime.errors import ModelNotReady

if TYPE_CHECKING:
    from fastapi import FastAPI

    from psn_runtime import Runtime
    from server.metrics import Metrics
    from server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    api_key: str | None
    runtime: Runtime | None = None
    model_names: frozenset[str] = field(default_factory=frozenset)
    sockets: set[Any] = field(default_factory=set)  # open stream WebSockets (closed 1001 on shutdown)
    draining: bool = False  # shutting down: new streams are refused, open ones closed
    loop: Any = None  # the event loop the lifespan (and so every stream) runs on

    def require_runtime(self) -> Runtime:
        if self.runtime is None:
            raise ModelNotReady("the server is still starting: models are loading")
        return self.runtime


def app_state(app: FastAPI) -> AppState:
    return app.state.psn
