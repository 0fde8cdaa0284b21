"""v1: model listing and full-sequence classification (JSON)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.auth import require_key
from server.body import read_body, require_media_type
from server.errors import ErrorRoute, InvalidRequest
from server.jsonio import JSONBytesResponse, input_dims, loads, to_float32
from server.schemas import ClassifyRequest, ClassifyResponse, ModelList, ModelView, errors, ok, request_body
from server.state import app_state
from server.views import model_view, primary_provider

router = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_key)])

CLASSIFY_FIELDS = frozenset({"inputs", "return_logits"})


@router.get("/models", response_model=None, responses={**ok(ModelList), **errors(401, 503)})
async def list_models(request: Request) -> Response:
    """Every model directory found: manifest, status (loading, ready, failed), error, providers in use."""
    runtime = app_state(request.app).require_runtime()
    return JSONBytesResponse({"models": [model_view(info) for info in runtime.models()]})


@router.get("/models/{name}", response_model=None, responses={**ok(ModelView), **errors(401, 404, 422, 503)})
async def get_model(name: str, request: Request) -> Response:
    """One model: its manifest plus the execution providers its sessions got, its status and error."""
    runtime = app_state(request.app).require_runtime()
    return JSONBytesResponse(model_view(runtime.model(name)))


@router.post(
    "/models/{name}/classify",
    response_model=None,
    responses={**ok(ClassifyResponse), **errors(400, 401, 404, 413, 415, 422, 429, 500, 503)},
    openapi_extra=request_body(ClassifyRequest),
)
async def classify(name: str, request: Request) -> Response:
    """Classify whole sequences.

    Body: ``{"inputs": [[f, ...], ...]}`` (one sequence, T×F; generally [T, *input_shape]) or
    ``{"inputs": [[[f, ...], ...], ...]}`` (a batch, B×T×F; [B, T, *input_shape]);
    optional ``"return_logits": false`` leaves the logits out.
    Answer: ``{"model", "predictions": [{"label", "probabilities", "logits"}], "latency_ms", "provider"}``,
    one prediction per sequence; ``latency_ms`` is measured in the server, from the request to the answer.
    """
    start = time.perf_counter()
    state = app_state(request.app)
    runtime = state.require_runtime()
    info = runtime.model(name)  # 404 before reading any body
    require_media_type(request, ("application/json",))
    body = await read_body(request, state.settings.max_body_bytes)
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidRequest('the body must be a JSON object {"inputs": ...}')
    for key in doc:
        if key not in CLASSIFY_FIELDS:
            raise InvalidRequest(f"unknown field {key!r}; expected {sorted(CLASSIFY_FIELDS)}", key)
    if "inputs" not in doc:
        raise InvalidRequest("inputs: required (T×shape or B×T×shape numbers)", "inputs")
    return_logits = doc.get("return_logits", True)
    if not isinstance(return_logits, bool):
        raise InvalidRequest("return_logits: expected true or false", "return_logits")
    ranks, dims = input_dims(info.manifest.input_shape if info.manifest else (1,))
    x = to_float32(doc["inputs"], "inputs", ranks, dims, raw=body)  # [T, *shape] or [B, T, *shape]
    result = await runtime.classify_async(name, x)
    state.metrics.sequences.labels(name).inc(len(result.labels))
    predictions = []
    for i, label in enumerate(result.labels):
        item = {"label": label, "probabilities": result.probabilities[i]}
        if return_logits:
            item["logits"] = result.logits[i]
        predictions.append(item)
    return JSONBytesResponse(
        {
            "model": name,
            "predictions": predictions,
            "latency_ms": (time.perf_counter() - start) * 1000.0,
            "provider": primary_provider(info),
        }
    )
