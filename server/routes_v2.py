"""Open Inference Protocol (KServe V2) for full-sequence inference, with the binary tensor data extension,
so that standard clients (``tritonclient.http``, KServe) work unmodified.

Input ``x`` FP32 [-1, T, F] (T is -1 for variable-length models); outputs ``logits`` FP32 [-1, C],
``probabilities`` FP32 [-1, C], ``label_index`` INT64 [-1]. Errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

import math
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from psn_runtime import ModelInfo, ModelStatus
from psn_runtime.errors import BadInput
from server.auth import require_key
from server.body import read_body, require_media_type
from server.dataplane import DataPlane, Plane
from server.errors import InvalidRequest, V2Route
from server.jsonio import JSONBytesResponse, dumps, loads, to_float32
from server.schemas import (
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RequestParameters,
    V2ServerMetadata,
    errors,
    ok,
    parse,
    request_body,
)
from server.views import primary_provider

PLATFORM = "onnxruntime_onnx"
INPUT = "x"
OUTPUTS = ("logits", "probabilities", "label_index")
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}
HEADER_LENGTH = "Inference-Header-Content-Length"

health = APIRouter(prefix="/v2", route_class=V2Route)  # no key: probes
router = APIRouter(prefix="/v2", route_class=V2Route, dependencies=[Depends(require_key)])


def _version() -> str:
    try:
        return metadata.version("psn-serve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


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
    return {
        "name": "psn-serve",
        "version": _version(),
        "extensions": ["binary_tensor_data", "sequence", "model_repository"],
    }


def _metadata(plane: DataPlane, name: str, version: str | None) -> dict[str, Any]:
    info, manifest = plane.loaded_model(name, version)
    T = -1 if manifest.variable_length else manifest.T
    C = manifest.num_classes
    return {
        "name": info.name,
        "versions": [manifest.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, T, *manifest.input_shape]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, C]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, C]},
            {"name": "label_index", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": {
            "labels": manifest.labels,
            "kind": str(manifest.kind),
            "provider": primary_provider(info),
            "streams": manifest.streams,
        },
    }


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


def _header_length(request: Request, body: bytes) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} {raw!r} does not fit a body of {len(body)} bytes", HEADER_LENGTH
        )
    return int(raw)


def _input_tensor(
    request: V2InferRequest, binary: memoryview, per_step: tuple[int, ...], text: bytes | None = None
) -> np.ndarray:
    """The request's one input ``x`` as float32 in its declared shape, from JSON ``data`` or the binary
    section (``text``: the JSON the request was parsed from). The rank is checked by the caller, the
    values (finite, sizes) by the runtime."""
    tensor = request.inputs[0]
    shape = tensor.shape
    if not all(d > 0 for d in shape):
        raise BadInput("inputs[0].shape", f"expected positive integers, got {shape!r}")
    count = math.prod(shape)
    size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
    if size is not None:
        dtype = DTYPES[tensor.datatype]
        if size != count * dtype.itemsize or size > len(binary):
            raise BadInput(
                "inputs[0].parameters.binary_data_size",
                f"{size!r} bytes does not match shape {shape} of {tensor.datatype} ({count * dtype.itemsize} "
                f"bytes) or the {len(binary)} bytes sent",
            )
        if size != len(binary):
            raise BadInput("inputs[0]", f"{len(binary) - size} bytes of binary data follow the tensor")
        x = np.frombuffer(binary[:size], dtype=dtype).reshape(shape)  # [*shape] as declared
        return x if x.dtype == np.float32 else x.astype(np.float32)
    if len(binary):
        raise BadInput("inputs[0]", "binary data sent, but the input has no binary_data_size parameter")
    if tensor.data is None:
        raise InvalidRequest(
            "inputs[0].data: required (or binary data with binary_data_size)", "inputs[0].data"
        )
    dims = ("B", "T", *map(str, per_step))
    rank = len(per_step) + 2
    flat = to_float32(tensor.data, "inputs[0].data", ranks=tuple(range(1, rank + 1)), dims=dims, raw=text)
    flat = flat.reshape(-1)  # [prod(shape)]
    if flat.size != count:
        raise BadInput("inputs[0].data", f"{flat.size} values for shape {shape} ({count} values)")
    return flat.reshape(shape)


def _check_rank(shape: list[int], per_step: tuple[int, ...], sequence: bool) -> None:
    """[B, T, *per_step] for a classification; one timestep, [1, 1, *per_step] or [1, *per_step], in a
    sequence request."""
    rank = 2 + len(per_step)
    if sequence:
        if tuple(shape[-len(per_step) :]) != per_step or shape[: -len(per_step)] not in ([1], [1, 1]):
            want = ", ".join(map(str, per_step))
            raise BadInput(
                "inputs[0].shape", f"a sequence request takes one timestep: [1, 1, {want}] or [1, {want}], "
                f"got {shape!r}",
            )  # fmt: skip
    elif len(shape) != rank:
        want = ", ".join(["B", "T", *map(str, per_step)])
        raise BadInput("inputs[0].shape", f"expected [{want}] (rank {rank}) positive integers, got {shape!r}")


def _wanted_outputs(request: V2InferRequest) -> list[tuple[str, bool]]:
    """[(output name, binary?)] in the order asked for (all three when the request names none)."""
    params = request.parameters
    default_binary = params.binary_data_output if params is not None else False
    if request.outputs is None:
        return [(name, default_binary) for name in OUTPUTS]
    wanted = []
    for out in request.outputs:
        binary = out.parameters.binary_data if out.parameters is not None else None
        wanted.append((out.name, default_binary if binary is None else binary))
    return wanted


def _response(
    request: V2InferRequest,
    info: ModelInfo,
    logits: np.ndarray,
    probabilities: np.ndarray,
    label_index: np.ndarray,
    wanted: list[tuple[str, bool]],
    parameters: dict[str, Any] | None = None,
) -> Response:
    arrays = {
        "logits": ("FP32", np.ascontiguousarray(logits, dtype="<f4")),  # [B, C]
        "probabilities": ("FP32", np.ascontiguousarray(probabilities, dtype="<f4")),  # [B, C]
        "label_index": ("INT64", np.ascontiguousarray(label_index, dtype="<i8")),  # [B]
    }
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        datatype, array = arrays[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": info.name,
        "model_version": info.manifest.version,
        "outputs": outputs,
    }
    if request.id is not None:
        body["id"] = request.id
    if parameters is not None:
        body["parameters"] = parameters
    header = dumps(body)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


_INFER = {
    "response_model": None,
    "responses": {
        200: {
            "model": V2InferResponse,
            "description": "outputs as JSON, or (binary outputs asked for) a JSON header then the tensors "
            f"as application/octet-stream, the header's length in {HEADER_LENGTH}",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(400, 401, 404, 413, 415, 422, 429, 500, 503, v2=True),
    },
    "openapi_extra": request_body(V2InferRequest),  # the binary extension: see the module docstring
}


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
    info = plane.model(name, version)
    require_media_type(request, ("application/json", "application/octet-stream"))
    body = await read_body(request, plane.settings.max_body_bytes)
    split = _header_length(request, body)
    view = memoryview(body)
    text = bytes(view[:split]) if split is not None else body
    doc = parse(V2InferRequest, loads(text), "the inference request")
    per_step = tuple(info.manifest.input_shape) if info.manifest is not None else (1,)
    params = doc.parameters
    sequence = params is not None and params.sequence_id is not None
    _check_rank(doc.inputs[0].shape, per_step, sequence)
    binary = view[split:] if split is not None else memoryview(b"")
    x = _input_tensor(doc, binary, per_step, text)  # [B, T, *shape], or one timestep
    wanted = _wanted_outputs(doc)
    if sequence:
        assert params is not None and params.sequence_id is not None
        return await _sequence_step(plane, info, doc, x, wanted, params.sequence_id, params)
    result = await plane.classify(name, x)
    return _response(doc, info, result.logits, result.probabilities, result.label_index, wanted)


async def _sequence_step(
    plane: DataPlane,
    info: ModelInfo,
    doc: V2InferRequest,
    x: np.ndarray,
    wanted: list[tuple[str, bool]],
    sequence_id: int | str,
    params: V2RequestParameters,
) -> Response:
    """Triton's sequence extension: one timestep of the sequence ``sequence_id`` (a stream of the data
    plane); the outputs are the stream's answer after it (the running mean logits), with ``t``, ``ready``,
    ``done`` and ``label`` in the response parameters. A full-only model answers its first T-1 steps with
    no rows."""
    result = await plane.sequences.step(
        info.name, sequence_id, x, start=params.sequence_start, end=params.sequence_end, param="inputs[0]"
    )
    C = info.manifest.num_classes if info.manifest is not None else 0
    if result.ready:
        logits, probabilities = result.logits[None], result.probabilities[None]  # [1, C]
        label_index = logits.argmax(axis=1)  # [1]
    else:
        logits = probabilities = np.zeros((0, C), np.float32)  # [0, C]
        label_index = np.zeros(0, np.int64)
    parameters = {
        "sequence_id": sequence_id,
        "t": result.t,
        "ready": result.ready,
        "done": result.done,
        "label": result.label,
    }
    return _response(doc, info, logits, probabilities, label_index, wanted, parameters)
