"""Liveness, readiness (no key needed) and Prometheus metrics (key needed when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from psn_runtime import ModelStatus
from server.auth import require_key
from server.errors import ErrorRoute
from server.jsonio import JSONBytesResponse
from server.metrics import CONTENT_TYPE
from server.schemas import METRICS_RESPONSE, Health, Readiness, errors, ok
from server.state import app_state

router = APIRouter(route_class=ErrorRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


def readiness(request: Request) -> tuple[bool, dict]:
    """(ready, body): ready once loading has finished and at least one model is READY."""
    runtime = app_state(request.app).runtime
    if runtime is None or not runtime.loaded:
        return False, {"status": "loading", "models": {}}
    models: dict[str, dict] = {}
    for info in runtime.models():
        entry: dict = {"status": str(info.status)}
        if info.status is ModelStatus.FAILED:
            entry["error"] = info.error
        models[info.name] = entry
    ready = any(info["status"] == ModelStatus.READY for info in models.values())
    return ready, {"status": "ready" if ready else "no model ready", "models": models}


@router.get(
    "/readyz",
    response_model=None,
    responses={**ok(Readiness), 503: {"model": Readiness, "description": "loading, or no model ready"}},
)
async def readyz(request: Request) -> Response:
    """Readiness: 200 when at least one model is READY, else 503 (still loading, or every model failed).
    The body lists every model's status, and the reason for each FAILED one."""
    ready, body = readiness(request)
    return JSONBytesResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=[Depends(require_key)],
    response_model=None,
    response_class=Response,  # text, declared in METRICS_RESPONSE
    responses={**METRICS_RESPONSE, **errors(401)},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this process's metrics."""
    state = app_state(request.app)
    if state.runtime is not None:
        state.metrics.observe_runtime(state.runtime.stats())
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
