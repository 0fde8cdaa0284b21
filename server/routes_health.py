"""Liveness, readiness (no key needed) and Prometheus metrics (key needed when one is set)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from server.auth import require_key
from server.dataplane import Plane
from server.errors import ErrorRoute
from server.jsonio import JSONBytesResponse
from server.metrics import CONTENT_TYPE
from server.schemas import METRICS_RESPONSE, Health, Readiness, errors, ok

router = APIRouter(route_class=ErrorRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={**ok(Readiness), 503: {"model": Readiness, "description": "loading, or no model ready"}},
)
async def readyz(plane: Plane) -> Response:
    """Readiness: 200 when at least one model is READY, else 503 (still loading, or every model failed).
    The body lists every model's status, and the reason for each FAILED one."""
    ready, body = plane.readiness()
    return JSONBytesResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    dependencies=[Depends(require_key)],
    response_model=None,
    response_class=Response,  # text, declared in METRICS_RESPONSE
    responses={**METRICS_RESPONSE, **errors(401)},
)
async def metrics(plane: Plane) -> Response:
    """Prometheus text exposition of this process's metrics."""
    if plane.attached is not None:
        plane.metrics.observe_runtime(plane.attached.stats())
    return Response(plane.metrics.render(), media_type=CONTENT_TYPE)
