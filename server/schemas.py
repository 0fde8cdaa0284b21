"""The wire formats: request envelopes (validated here, and nowhere else) and what the OpenAPI schema says
about every route's responses (status, media type, body).

A request envelope is a strict pydantic model (``extra="forbid"``, no coercion): the routes read the body
(size limit first), parse it, and validate it with :func:`parse`, so the OpenAPI schema is the validator.
Only the tensor payload (``Tensor`` fields) passes through untouched, to the input builder
(``server.inputs``). A validation error becomes an InvalidRequest
that names the field (``inputs[0].datatype``) and says what it expects (the field's description).
tests/test_fuzz_schema.py holds the server to this schema (schemathesis)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from server.errors import InvalidRequest
from server.metrics import CONTENT_TYPE

_NUMBERS = {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]}, "minItems": 1}
Tensor = Annotated[Any, WithJsonSchema(_NUMBERS)]  # nested lists of finite numbers: checked by server.inputs


class Envelope(BaseModel):
    """A request envelope: unknown fields refused, no type coercion ("1" is not a number, 1 not a bool)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Open(BaseModel):
    """An object of free-form parameters: known keys are typed, others pass through."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


M = TypeVar("M", bound=BaseModel)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _description(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The description of the field at ``loc`` (following nested models and lists), if any."""
    current: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        current = info.annotation
        while getattr(current, "__args__", None) and not hasattr(current, "model_fields"):
            current = next((a for a in current.__args__ if hasattr(a, "model_fields")), current.__args__[0])
    return info.description if info is not None else None


def _fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the (nested) model holding ``loc``'s last part."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
        while getattr(current, "__args__", None) and not hasattr(current, "model_fields"):
            current = next((a for a in current.__args__ if hasattr(a, "model_fields")), current.__args__[0])
    return sorted(getattr(current, "model_fields", {}))


def invalid(model: type[BaseModel], exc: ValidationError) -> InvalidRequest:
    """The first validation error (an unknown field first) as an InvalidRequest naming the field and what
    it expects."""
    found = exc.errors()
    error = next((e for e in found if e["type"] == "extra_forbidden"), found[0])
    loc = tuple(error["loc"])
    param = _path(loc) or None
    kind = error["type"]
    if kind == "extra_forbidden":
        return InvalidRequest(f"unknown field {loc[-1]!r}; expected {_fields(model, loc)}", param)
    if kind == "value_error":
        return InvalidRequest(f"{param}: {error['msg'].removeprefix('Value error, ')}", param)
    expected = _description(model, loc) or error["msg"].lower()
    if kind == "missing":
        return InvalidRequest(f"{param}: required ({expected})", param)
    if param is None:
        return InvalidRequest(f"expected a JSON object ({error['msg'].lower()})")
    return InvalidRequest(f"{param}: expected {expected}, got {error.get('input')!r:.80}", param)


def parse(model: type[M], doc: Any, what: str = "the body") -> M:
    """Validate a parsed JSON document against a request envelope (InvalidRequest naming the field)."""
    if not isinstance(doc, dict):
        fields = ", ".join(f'"{name}"' for name in model.model_fields)
        raise InvalidRequest(f"{what} must be a JSON object with the fields {fields}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise invalid(model, exc) from None


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


class VersionView(BaseModel):
    version: str
    status: str = Field(description="loading, ready, failed, unloading or unavailable")
    error: str | None


class ModelView(BaseModel):
    name: str
    status: str = Field(description="loading, ready, failed, unloading or unavailable (of `version`)")
    error: str | None
    version: str = Field(description="the version that answers requests naming none (the highest ready)")
    versions: list[VersionView] = Field(description="every version of the model, lowest first")
    provider: str | None
    providers: dict[str, list[str]]
    warnings: list[str]
    manifest: dict[str, Any] | None


class ModelList(BaseModel):
    models: list[ModelView]


class ClassifyRequest(Envelope):
    inputs: Tensor = Field(
        description="T×shape or B×T×shape numbers: one sequence [T, *input_shape] or a batch "
        "[B, T, *input_shape] of finite numbers"
    )
    return_logits: bool = Field(True, description="true or false (false leaves the logits out)")


class StepFrame(Envelope):
    """A WebSocket text frame carrying one timestep."""

    x: Tensor = Field(
        description="one timestep: prod(input_shape) numbers (flat, C order) or nested as input_shape"
    )
    logits: bool | None = Field(None, description="true or false (true adds the running mean logits)")


class Prediction(BaseModel):
    label: str
    probabilities: list[float]
    logits: list[float] | None = Field(None, description="left out when return_logits is false")


class ClassifyResponse(BaseModel):
    model: str
    version: str = Field(description="the model version that answered")
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


class V2InputParameters(Open):
    binary_data_size: int | None = Field(
        None, ge=0, description="a byte count: the tensor's bytes follow the JSON header (binary extension)"
    )


class V2InputTensor(Envelope):
    name: Literal["x"] = Field(description="'x', the model's one input")
    shape: list[int] = Field(
        description="[B, T, *input_shape] positive integers ([1, 1, *input_shape] or [1, *input_shape] in a "
        "sequence request)"
    )
    datatype: Literal["FP32", "FP64", "FP16"] = Field(description="FP32 (FP16 and FP64 are converted)")
    parameters: V2InputParameters | None = Field(None, description="an object")
    data: Tensor | None = Field(None, description="the values, flat or nested (or binary data)")


class V2OutputParameters(Open):
    binary_data: bool | None = Field(None, description="true or false (true: this output as binary data)")

    @model_validator(mode="before")
    @classmethod
    def _no_classification(cls, data: Any) -> Any:
        if isinstance(data, dict) and "classification" in data:
            raise ValueError("the classification extension is not supported")
        return data


class V2RequestedOutput(Envelope):
    name: Literal["logits", "probabilities", "label_index"] = Field(
        description="one of ['logits', 'probabilities', 'label_index']"
    )
    parameters: V2OutputParameters | None = Field(None, description="an object")


SequenceId = Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1, max_length=256)]


class V2RequestParameters(Open):
    binary_data_output: bool = Field(False, description="true or false (true: every output as binary data)")
    sequence_id: SequenceId | None = Field(
        None,
        description="a positive integer or a non-empty string: the sequence (Triton's extension; 0 is none)",
    )
    sequence_start: bool = Field(False, description="true or false (true: the first step of the sequence)")
    sequence_end: bool = Field(False, description="true or false (true: the last step of the sequence)")


class V2InferRequest(Envelope):
    id: str | None = Field(None, description="a string, echoed in the answer")
    parameters: V2RequestParameters | None = Field(None, description="an object")
    inputs: list[V2InputTensor] = Field(
        min_length=1, max_length=1, description="exactly one input tensor named 'x'"
    )
    outputs: list[V2RequestedOutput] | None = Field(None, min_length=1, description="a non-empty list")


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


def request_body(model: type[BaseModel], binary: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body that the handler reads itself; ``binary`` (its
    description) also declares an application/octet-stream body."""
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}
    if binary is not None:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary", "description": binary}
        }
    return {"requestBody": {"required": True, "content": content}}


METRICS_RESPONSE = {
    200: {
        "description": "Prometheus text exposition",
        "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
    }
}
