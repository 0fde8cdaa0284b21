"""v1: model listing and full-sequence classification (JSON). Binds and encodes; the data plane works."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.auth import require_key
from server.body import read_body, require_media_type
from server.dataplane import DataPlane, Plane
from server.errors import ErrorRoute
from server.jsonio import JSONBytesResponse, loads
from server.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ModelList,
    ModelView,
    errors,
    ok,
    parse,
    request_body,
)
from server.views import model_view

router = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_key)])


@router.get("/models", response_model=None, responses={**ok(ModelList), **errors(401, 503)})
async def list_models(plane: Plane) -> Response:
    """Every model directory found: manifest, status (loading, ready, failed), error, providers in use."""
    return JSONBytesResponse({"models": [model_view(info) for info in plane.models()]})


@router.get("/models/{name}", response_model=None, responses={**ok(ModelView), **errors(401, 404, 422, 503)})
async def get_model(name: str, plane: Plane) -> Response:
    """One model: its manifest plus the execution providers its sessions got, its status and error."""
    return JSONBytesResponse(model_view(plane.model(name)))


@router.post(
    "/models/{name}/classify",
    response_model=None,
    responses={**ok(ClassifyResponse), **errors(400, 401, 404, 413, 415, 422, 429, 500, 503)},
    openapi_extra=request_body(ClassifyRequest),
)
async def classify(name: str, request: Request, plane: Plane) -> Response:
    """Classify whole sequences.

    Body: ``{"inputs": [[f, ...], ...]}`` (one sequence, T×F; generally [T, *input_shape]) or
    ``{"inputs": [[[f, ...], ...], ...]}`` (a batch, B×T×F; [B, T, *input_shape]);
    optional ``"return_logits": false`` leaves the logits out.
    Answer: ``{"model", "version", "predictions": [{"label", "probabilities", "logits"}], "latency_ms",
    "provider"}``, one prediction per sequence; ``version`` is the model version that answered (the highest
    ready one); ``latency_ms`` is measured in the server, from the request to the answer.
    """
    return await classify_request(name, request, plane)


@router.post(
    "/models/{name}/versions/{version}/classify",
    response_model=None,
    responses={**ok(ClassifyResponse), **errors(400, 401, 404, 413, 415, 422, 429, 500, 503)},
    openapi_extra=request_body(ClassifyRequest),
)
async def classify_version(name: str, version: str, request: Request, plane: Plane) -> Response:
    """Classify whole sequences with one version of the model (as ``/models/{name}/classify``); 404
    ``version_unavailable`` when this server has no such version ready."""
    return await classify_request(name, request, plane, version)


async def classify_request(
    name: str, request: Request, plane: DataPlane, version: str | None = None
) -> Response:
    """The classify route's work, after the API key check (server.fastpath calls it too, without FastAPI's
    routing in front)."""
    start = time.perf_counter()
    inputs = plane.inputs(name, version)  # 404 or 503 before reading any body
    require_media_type(request, ("application/json",))
    body = await read_body(request, plane.settings.max_body_bytes)
    doc = parse(ClassifyRequest, loads(body))
    x = inputs.classify_json(doc.inputs, "inputs", raw=body)
    result = await plane.classify(name, x, version, admitted=inputs.version)
    predictions = []
    for i, label in enumerate(result.labels):
        item = {"label": label, "probabilities": result.probabilities[i]}
        if doc.return_logits:
            item["logits"] = result.logits[i]
        predictions.append(item)
    return JSONBytesResponse(
        {
            "model": name,
            "version": result.version,
            "predictions": predictions,
            "latency_ms": (time.perf_counter() - start) * 1000.0,
            "provider": inputs.provider,
        }
    )
