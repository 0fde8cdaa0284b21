"""Open Inference Protocol (KServe V2) over HTTP: full-sequence inference, the binary tensor data extension
and Triton's sequence extension, so that standard clients (``tritonclient.http``, KServe) work unmodified.
The tensors' wire format is server.v2codec's (shared with gRPC), their checks server.inputs'. Errors are
``{"error": "<message>"}`` (the routes' class, server.errors.V2Route).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from psn_runtime import ModelInfo, ModelStatus
from server import v2codec
from server.auth import require_key
from server.body import read_body, require_media_type
from server.dataplane import DataPlane, Plane
from server.errors import V2Route
from server.inputs import ModelInputs
from server.jsonio import JSONBytesResponse, loads
from server.schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    errors,
    ok,
    parse,
    request_body,
)

health = APIRouter(prefix="/v2", route_class=V2Route)  # no key: probes
router = APIRouter(prefix="/v2", route_class=V2Route, dependencies=[Depends(require_key)])


@health.get("/health/live", response_model=V2Live)
async def live() -> dict:
    return {"live": True}


@health.get(
    "/health/ready",
    response_model=None,
    responses={**ok(V2Ready), 503: {"model": V2Ready, "description": "not ready"}},
)
async def ready(plane: Plane) -> Response:
    ok, _ = plane.readiness()
    return JSONBytesResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", response_model=V2ServerMetadata, responses=errors(401, v2=True))
async def server_metadata() -> dict:
    return v2codec.server_metadata()


def _metadata(plane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    return v2codec.model_metadata(*plane.loaded_model(name, version))


_METADATA = {**ok(V2ModelMetadata), **errors(401, 404, 422, 503, v2=True)}
_READY = {
    **ok(V2ModelReady),
    **errors(401, 404, 422, v2=True),
    503: {"model": V2ModelReady, "description": "the model is not ready"},
}


@router.get("/models/{name}", response_model=None, responses=_METADATA)
async def model_metadata(name: str, plane: Plane) -> Response:
    return JSONBytesResponse(_metadata(plane, name, None))


@router.get("/models/{name}/versions/{version}", response_model=None, responses=_METADATA)
async def model_version_metadata(name: str, version: str, plane: Plane) -> Response:
    return JSONBytesResponse(_metadata(plane, name, version))


def _ready_response(info: ModelInfo) -> Response:
    ok = info.status is ModelStatus.READY
    return JSONBytesResponse({"name": info.name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}/ready", response_model=None, responses=_READY)
async def model_ready(name: str, plane: Plane) -> Response:
    return _ready_response(plane.model(name))


@router.get("/models/{name}/versions/{version}/ready", response_model=None, responses=_READY)
async def model_version_ready(name: str, version: str, plane: Plane) -> Response:
    return _ready_response(plane.model(name, version))


_INFER = {
    "response_model": None,
    "responses": {
        200: {
            "model": V2InferResponse,
            "description": "outputs as JSON, or (binary outputs asked for) a JSON header then the tensors "
            f"as application/octet-stream, the header's length in {v2codec.HEADER_LENGTH}",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(400, 401, 404, 413, 415, 422, 429, 500, 503, v2=True),
    },
    "openapi_extra": request_body(
        V2InferRequest,
        binary="the JSON request, then each binary_data_size tensor's bytes (the binary tensor extension), "
        f"the JSON's length in the {v2codec.HEADER_LENGTH} header",
    ),
}
_MEDIA = ("application/json", "application/octet-stream")


@router.post("/models/{name}/infer", **_INFER)
async def infer(name: str, request: Request, plane: Plane) -> Response:
    return await _infer(plane, name, None, request)


async def infer_request(name: str, request: Request, plane: DataPlane) -> Response:
    """The infer route's work, after the API key check (server.fastpath calls it without FastAPI's
    routing in front)."""
    return await _infer(plane, name, None, request)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(name: str, version: str, request: Request, plane: Plane) -> Response:
    return await _infer(plane, name, version, request)


async def _infer(plane: DataPlane, name: str, version: str | None, request: Request) -> Response:
    inputs = plane.inputs(name, version)  # 404 or 503 before reading any body
    require_media_type(request, _MEDIA)
    body = await read_body(request, plane.settings.max_body_bytes)
    text, binary = v2codec.split_body(body, request.headers.get(v2codec.HEADER_LENGTH))
    infer = v2codec.from_http(parse(V2InferRequest, loads(text), "the inference request"), binary, text)
    parameters = None
    if infer.sequence is None:
        x = inputs.classify_tensor(infer.tensor)  # [B, T, *shape]
        result = await plane.classify(name, x, version, admitted=inputs.version)
        arrays = (result.logits, result.probabilities, result.label_index)
        answered = result.version
    else:
        inputs = plane.sequences.inputs(name, infer.sequence.id, infer.sequence.start, inputs)
        arrays, parameters = await _sequence_step(plane, inputs, infer.sequence, infer.tensor, version)
        answered = inputs.version
    outs = v2codec.outputs(*arrays, infer.outputs)
    content, header = v2codec.to_http(infer, inputs.name, answered, outs, parameters)
    if header is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={v2codec.HEADER_LENGTH: str(header)}
    )


async def _sequence_step(
    plane: DataPlane,
    inputs: ModelInputs,
    sequence: v2codec.SequenceStep,
    tensor: v2codec.Tensor,
    version: str | None,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
    """Triton's sequence extension: one timestep of the sequence (a stream of the data plane); the outputs
    are the stream's answer after it (the running mean logits), with ``t``, ``ready``, ``done`` and
    ``label`` in the response parameters. A full-only model answers its first T-1 steps with no rows."""
    x = inputs.step_tensor(tensor)  # [*shape]
    result = await plane.sequences.step(
        inputs.name, sequence.id, x, start=sequence.start, end=sequence.end, version=version
    )
    return v2codec.sequence_answer(result, inputs.manifest.num_classes, sequence.id)
