"""What the OpenAPI schema says about every route: request bodies and every response the route can give
(status, media type, body). The handlers read their bodies themselves (size limit first, then strict
conversion), so these models document and never validate; tests/test_fuzz_schema.py holds the server to
them (schemathesis: status codes, content types and bodies must conform)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.metrics import CONTENT_TYPE


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error kind: bad_input, unknown_model, overloaded, ...")
    message: str = Field(description="what is wrong, naming the field (never a traceback)")
    param: str | None = Field(None, description="the offending field, e.g. inputs[0][3]")


class ErrorBody(BaseModel):
    """v1 and every route outside /v2."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Open Inference Protocol error body."""

    model_config = ConfigDict(extra="forbid")
    error: str


class Health(BaseModel):
    status: str


class ModelReadiness(BaseModel):
    status: str
    error: str | None = None


class Readiness(BaseModel):
    status: str = Field(description="ready, loading, or no model ready")
    models: dict[str, ModelReadiness]


class ModelView(BaseModel):
    name: str
    status: str = Field(description="loading, ready or failed")
    error: str | None
    provider: str | None
    providers: dict[str, list[str]]
    warnings: list[str]
    manifest: dict[str, Any] | None


class ModelList(BaseModel):
    models: list[ModelView]


Row = list[float]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Row] | list[list[Row]] = Field(
        description="one sequence T×F, or a batch B×T×F, of finite numbers", min_length=1
    )
    return_logits: bool = True


class Prediction(BaseModel):
    label: str
    probabilities: list[float]
    logits: list[float] | None = Field(None, description="left out when return_logits is false")


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction]
    latency_ms: float
    provider: str | None


# -- Open Inference Protocol (KServe V2) -------------------------------------------------------------------
class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any]


class V2InputTensor(BaseModel):
    name: str = Field(description="x")
    shape: list[int] = Field(description="[B, T, F]", min_length=3, max_length=3)
    datatype: str = Field(description="FP32 (FP16 and FP64 are converted)")
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="the values, flat or nested (or binary data)")


class V2RequestedOutput(BaseModel):
    name: str = Field(description="logits, probabilities or label_index")
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    id: str | None = None
    model_name: str
    model_version: str
    outputs: list[V2OutputTensor]


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


_V1_TEXT = {
    400: "malformed JSON",
    401: "missing or invalid API key",
    404: "unknown model",
    413: "body over the size limit",
    415: "unsupported Content-Type or Content-Encoding",
    422: "a field is missing, unknown, or of the wrong type, shape or value",
    429: "overloaded: retry later (Retry-After)",
    500: "internal error (details only in the server's log)",
    503: "model not ready, or the server is starting or stopping (Retry-After)",
}


def errors(*statuses: int, v2: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries for these error statuses (v1 or v2 error bodies)."""
    model = V2ErrorBody if v2 else ErrorBody
    return {status: _json(model, _V1_TEXT[status]) for status in statuses}


def ok(model: type[BaseModel], description: str = "success") -> dict[int | str, dict[str, Any]]:
    return {200: _json(model, description)}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every ``{"$ref": "#/$defs/X"}`` by X itself (the OpenAPI document has no ``$defs``)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def request_body(model: type[BaseModel], *extra_media: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body that the handler reads itself."""
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}
    for media in extra_media:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


METRICS_RESPONSE = {
    200: {
        "description": "Prometheus text exposition",
        "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
    }
}
