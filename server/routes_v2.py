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

from psn_runtime import ClassifyResult, ModelInfo, ModelStatus
from psn_runtime.errors import BadInput, ModelNotReady, UnknownModel
from server.auth import require_key
from server.body import read_body, require_media_type
from server.errors import ErrorRoute, InvalidRequest
from server.jsonio import JSONBytesResponse, dumps, loads, to_float32
from server.routes_health import readiness
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
    request_body,
)
from server.state import app_state
from server.views import primary_provider

PLATFORM = "onnxruntime_onnx"
INPUT = "x"
OUTPUTS = ("logits", "probabilities", "label_index")
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}
HEADER_LENGTH = "Inference-Header-Content-Length"

health = APIRouter(prefix="/v2", route_class=ErrorRoute)  # no key: probes
router = APIRouter(prefix="/v2", route_class=ErrorRoute, dependencies=[Depends(require_key)])


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
async def ready(request: Request) -> Response:
    ok, _ = readiness(request)
    return JSONBytesResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("", response_model=V2ServerMetadata, responses=errors(401, v2=True))
async def server_metadata() -> dict:
    return {"name": "psn-serve", "version": _version(), "extensions": ["binary_tensor_data"]}


def _model(request: Request, name: str, version: str | None) -> ModelInfo:
    info = app_state(request.app).require_runtime().model(name)
    if version is not None and (info.manifest is None or info.manifest.version != version):
        raise UnknownModel(f"{name}/versions/{version}")
    return info


def _metadata(info: ModelInfo) -> dict[str, Any]:
    manifest = info.manifest
    if manifest is None:
        raise ModelNotReady(f"model {info.name!r} failed to load: {info.error}")
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
        },
    }


_METADATA = {**ok(V2ModelMetadata), **errors(401, 404, 422, 503, v2=True)}
_READY = {
    **ok(V2ModelReady),
    **errors(401, 404, 422, v2=True),
    503: {"model": V2ModelReady, "description": "the model is not ready"},
}


@router.get("/models/{name}", response_model=None, responses=_METADATA)
async def model_metadata(name: str, request: Request) -> Response:
    return JSONBytesResponse(_metadata(_model(request, name, None)))


@router.get("/models/{name}/versions/{version}", response_model=None, responses=_METADATA)
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    return JSONBytesResponse(_metadata(_model(request, name, version)))


def _ready_response(info: ModelInfo) -> Response:
    ok = info.status is ModelStatus.READY
    return JSONBytesResponse({"name": info.name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}/ready", response_model=None, responses=_READY)
async def model_ready(name: str, request: Request) -> Response:
    return _ready_response(_model(request, name, None))


@router.get("/models/{name}/versions/{version}/ready", response_model=None, responses=_READY)
async def model_version_ready(name: str, version: str, request: Request) -> Response:
    return _ready_response(_model(request, name, version))


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
    doc: dict, binary: memoryview, per_step: tuple[int, ...], text: bytes | None = None
) -> np.ndarray:
    """The request's one input ``x`` as float32 [B, T, *per_step], from JSON ``data`` or the binary section
    (``text``: the JSON the doc was parsed from). Only the rank is checked here (the runtime checks sizes)."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"inputs: expected exactly one input tensor named {INPUT!r}", "inputs")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise InvalidRequest(
            f"inputs[0].name: expected {INPUT!r}, got {tensor.get('name')!r}", "inputs[0].name"
        )
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        raise InvalidRequest(f"inputs[0].datatype: expected FP32, got {datatype!r}", "inputs[0].datatype")
    shape = tensor.get("shape")
    rank = 2 + len(per_step)
    if not isinstance(shape, list) or len(shape) != rank or not all(type(d) is int and d > 0 for d in shape):
        want = ", ".join(["B", "T", *map(str, per_step)])
        raise BadInput("inputs[0].shape", f"expected [{want}] (rank {rank}) positive integers, got {shape!r}")
    count = math.prod(shape)
    params = _parameters(tensor.get("parameters"), "inputs[0].parameters")
    size = params.get("binary_data_size")
    if size is not None:
        dtype = DTYPES[datatype]
        if type(size) is not int or size != count * dtype.itemsize or size > len(binary):
            raise BadInput(
                "inputs[0].parameters.binary_data_size",
                f"{size!r} bytes does not match shape {shape} of {datatype} ({count * dtype.itemsize} bytes) "
                f"or the {len(binary)} bytes sent",
            )
        if size != len(binary):
            raise BadInput("inputs[0]", f"{len(binary) - size} bytes of binary data follow the tensor")
        x = np.frombuffer(binary[:size], dtype=dtype).reshape(shape).astype(np.float32)  # [B, T, *shape]
        if not np.isfinite(x).all():
            raise BadInput("inputs[0]", "binary data holds NaN or Inf (numbers must be finite)")
        return x
    if len(binary):
        raise BadInput("inputs[0]", "binary data sent, but the input has no binary_data_size parameter")
    data = tensor.get("data")
    if data is None:
        raise InvalidRequest(
            "inputs[0].data: required (or binary data with binary_data_size)", "inputs[0].data"
        )
    dims = ("B", "T", *map(str, per_step))
    flat = to_float32(data, "inputs[0].data", ranks=tuple(range(1, rank + 1)), dims=dims, raw=text)
    flat = flat.reshape(-1)  # [B*T*prod(shape)]
    if flat.size != count:
        raise BadInput("inputs[0].data", f"{flat.size} values for shape {shape} ({count} values)")
    return flat.reshape(shape)  # [B, T, *shape]


def _parameters(value: object, where: str) -> dict:
    """A ``parameters`` field: absent/null or an object (anything else is refused, not ignored)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: expected an object, got {type(value).__name__}", where)
    return value


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}.{key}: expected true or false, got {value!r}", f"{where}.{key}")
    return value


def _wanted_outputs(doc: dict) -> list[tuple[str, bool]]:
    """[(output name, binary?)] in the order asked for (all three when the request names none)."""
    if "id" in doc and not isinstance(doc["id"], str):
        raise InvalidRequest(f"id: expected a string, got {type(doc['id']).__name__}", "id")
    params = _parameters(doc.get("parameters"), "parameters")
    default_binary = _flag(params, "binary_data_output", False, "parameters")
    asked = doc.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in OUTPUTS]
    if not isinstance(asked, list) or not asked:
        raise InvalidRequest("outputs: expected a non-empty list", "outputs")
    wanted = []
    for i, out in enumerate(asked):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS:
            raise InvalidRequest(
                f"outputs[{i}].name: expected one of {list(OUTPUTS)}, got {name!r}", "outputs"
            )
        out_params = _parameters(out.get("parameters"), f"outputs[{i}].parameters")
        if "classification" in out_params:
            raise InvalidRequest("the classification extension is not supported", f"outputs[{i}].parameters")
        wanted.append((name, _flag(out_params, "binary_data", default_binary, f"outputs[{i}].parameters")))
    return wanted


def _response(doc: dict, info: ModelInfo, result: ClassifyResult, wanted: list[tuple[str, bool]]) -> Response:
    arrays = {
        "logits": ("FP32", np.ascontiguousarray(result.logits, dtype="<f4")),  # [B, C]
        "probabilities": ("FP32", np.ascontiguousarray(result.probabilities, dtype="<f4")),  # [B, C]
        "label_index": ("INT64", np.ascontiguousarray(result.label_index, dtype="<i8")),  # [B]
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
    if "id" in doc:
        body["id"] = doc["id"]
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
async def infer(name: str, request: Request) -> Response:
    return await _infer(name, None, request)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(name, version, request)


async def _infer(name: str, version: str | None, request: Request) -> Response:
    state = app_state(request.app)
    info = _model(request, name, version)
    require_media_type(request, ("application/json", "application/octet-stream"))
    body = await read_body(request, state.settings.max_body_bytes)
    split = _header_length(request, body)
    view = memoryview(body)
    text = bytes(view[:split]) if split is not None else body
    doc = loads(text)
    if not isinstance(doc, dict):
        raise InvalidRequest("the inference request must be a JSON object")
    per_step = tuple(info.manifest.input_shape) if info.manifest is not None else (1,)
    binary = view[split:] if split is not None else memoryview(b"")
    x = _input_tensor(doc, binary, per_step, text)  # [B, T, *shape]
    wanted = _wanted_outputs(doc)
    result = await state.require_runtime().classify_async(name, x)
    state.metrics.sequences.labels(name).inc(len(result.labels))
    return _response(doc, info, result, wanted)
