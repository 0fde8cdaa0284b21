"""The client's HTTP requests as flows (server/client_core.py explains flows): models, health, and classify
as JSON or as one V2 binary tensor.

Classify sends JSON to ``POST /v1/models/{name}/classify``, or, when the inputs hold more than
``binary_threshold`` bytes as float32 (default :data:`BINARY_THRESHOLD`, 64 KiB; ``None`` = never, 0 =
always), one V2 binary tensor to ``POST /v2/models/{name}/infer`` (the Open Inference Protocol's binary
tensor data extension: a JSON header, then the raw little-endian float32 bytes), with the outputs as binary
tensors too. Either way the answer is the same :class:`ClassifyResponse`; the V2 path reads the labels and
the provider from the model's V2 metadata (asked once per model version and kept).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from server.client_core import (
    ClassifyResponse,
    Flow,
    HTTPAnswer,
    HTTPCall,
    PlainStream,
    Prediction,
    PSNError,
    auth_headers,
    checked,
    http_error,
    ws_url,
)
from server.client_resume import ResumableStream, RetryPolicy, StreamMachine

BINARY_THRESHOLD = 64 * 1024  # bytes of float32 inputs above which classify sends a V2 binary tensor
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's JSON header length
V2_DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4"}


# -- classify ----------------------------------------------------------------------------------------------
def as_float32(inputs: Any) -> np.ndarray | None:
    """``inputs`` as a float32 array, or None when they are not one (ragged lists: the server names what is
    wrong with them, in JSON)."""
    try:
        return np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        return None


def v1_classify_call(
    name: str, inputs: Any, return_logits: bool, headers: Mapping[str, str], version: str | None = None
) -> HTTPCall:
    data = inputs.tolist() if isinstance(inputs, np.ndarray) else inputs
    body = json.dumps({"inputs": data, "return_logits": return_logits}).encode()
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "") + "/classify"
    return HTTPCall("POST", path, {**headers, "Content-Type": "application/json"}, body)


def v1_classify_result(doc: dict[str, Any]) -> ClassifyResponse:
    predictions = [Prediction(p["label"], p["probabilities"], p.get("logits")) for p in doc["predictions"]]
    return ClassifyResponse(
        doc["model"], predictions, doc["latency_ms"], doc.get("provider"), doc.get("version")
    )


def v2_path(name: str, version: str | None, suffix: str = "") -> str:
    base = f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "")
    return base + suffix


@dataclass(frozen=True)
class V2Model:
    """What the V2 path needs from a model's metadata."""

    name: str
    version: str
    input_rank: int  # of [B, T, *input_shape]
    labels: list[str]
    provider: str | None

    @classmethod
    def from_metadata(cls, doc: dict[str, Any]) -> V2Model:
        params = doc.get("parameters") or {}
        versions = doc.get("versions") or [""]
        rank = len(doc["inputs"][0]["shape"])
        return cls(
            doc["name"], str(versions[0]), rank, list(params.get("labels", [])), params.get("provider")
        )


def v2_infer_call(
    name: str, x: np.ndarray, return_logits: bool, headers: Mapping[str, str], version: str | None = None
) -> HTTPCall:
    """x: [B, T, *input_shape] float32, sent as one binary tensor; the outputs asked for as binary too."""
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    outputs = (
        ["logits", "probabilities", "label_index"] if return_logits else ["probabilities", "label_index"]
    )
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": out, "parameters": {"binary_data": True}} for out in outputs],
    }
    head = json.dumps(header).encode()
    call_headers = {**headers, "Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return HTTPCall("POST", v2_path(name, version, "/infer"), call_headers, head + data)


def v2_outputs(answer: HTTPAnswer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the JSON header, the output tensors by name) of a V2 infer answer, binary parts or JSON data."""
    split = answer.headers.get(HEADER_LENGTH.lower())
    end = int(split) if split is not None else len(answer.body)
    head = json.loads(answer.body[:end])
    offset = end
    arrays: dict[str, np.ndarray] = {}
    for out in head["outputs"]:
        dtype = np.dtype(V2_DTYPES[out["datatype"]])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(answer.body, dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        else:
            array = np.asarray(out["data"], dtype)
        arrays[out["name"]] = array.reshape(out["shape"])
    return head, arrays


def v2_classify_result(
    model: V2Model, arrays: Mapping[str, np.ndarray], return_logits: bool, elapsed_ms: float
) -> ClassifyResponse:
    probabilities = arrays["probabilities"]  # [B, C]
    logits = arrays.get("logits") if return_logits else None  # [B, C]
    predictions = [
        Prediction(
            model.labels[int(index)],
            probabilities[i].astype(float).tolist(),
            logits[i].astype(float).tolist() if logits is not None else None,
        )
        for i, index in enumerate(arrays["label_index"])
    ]
    return ClassifyResponse(model.name, predictions, elapsed_ms, model.provider, model.version)


# -- the flows ---------------------------------------------------------------------------------------------
class ClassifyOptions(TypedDict, total=False):
    """``classify``'s options (:meth:`ClientCore.classify` has their defaults)."""

    return_logits: bool
    binary: bool | None
    version: str | None


class StreamOptions(TypedDict, total=False):
    """``stream``'s options of the stream itself (:meth:`ClientCore.stream` has their defaults)."""

    logits: bool
    resumable: bool
    snapshot_every: int
    retry: RetryPolicy | None
    version: str | None


class ClientCore:
    """The client's requests as flows (run by server/client.py's drivers), and what they remember: the V2
    metadata of the models classified with binary tensors."""

    def __init__(
        self, base_url: str = "", *, api_key: str | None, binary_threshold: int | None = BINARY_THRESHOLD
    ) -> None:
        if binary_threshold is not None and binary_threshold < 0:
            raise ValueError(f"binary_threshold must be >= 0 or None, got {binary_threshold}")
        self.base_url = base_url.rstrip("/")
        self.headers = auth_headers(api_key)
        self.binary_threshold = binary_threshold
        self._v2_models: dict[tuple[str, str | None], V2Model] = {}

    def _get(self, path: str) -> Flow[HTTPAnswer]:
        return (yield HTTPCall("GET", path, self.headers))

    def health(self) -> Flow[bool]:
        return (yield from self._get("/healthz")).status == 200

    def ready(self) -> Flow[dict[str, Any]]:
        """The readiness body (``status``, every model's status); does not raise when not ready."""
        return json.loads((yield from self._get("/readyz")).body)

    def models(self) -> Flow[list[dict[str, Any]]]:
        return checked((yield from self._get("/v1/models")))["models"]

    def model(self, name: str) -> Flow[dict[str, Any]]:
        return checked((yield from self._get(f"/v1/models/{name}")))

    def use_binary(self, x: np.ndarray | None, binary: bool | None) -> bool:
        """binary=None: by size (more than binary_threshold bytes of float32); True/False: as asked."""
        if binary is not None:
            return binary
        return x is not None and self.binary_threshold is not None and x.size * 4 > self.binary_threshold

    def classify(
        self,
        name: str,
        inputs: Any,
        *,
        return_logits: bool = True,
        binary: bool | None = None,
        version: str | None = None,
    ) -> Flow[ClassifyResponse]:
        """inputs: [T, *input_shape] (one sequence) or [B, T, *input_shape]; a numpy array or nested lists.
        version: the model version to ask (None: the highest the server has ready)."""
        x = as_float32(inputs)
        if not self.use_binary(x, binary):
            answer = yield v1_classify_call(name, inputs, return_logits, self.headers, version)
            return v1_classify_result(checked(answer))
        if x is None:
            raise PSNError(
                "the inputs are not a rectangular array of numbers", code="bad_input", param="inputs"
            )
        model = yield from self._v2_model(name, version)
        if x.ndim == model.input_rank - 1:
            x = x[None]  # one sequence: [1, T, *input_shape]
        answer = yield v2_infer_call(name, x, return_logits, self.headers, version)
        if answer.status >= 400:
            raise http_error(answer)
        head, arrays = v2_outputs(answer)
        version = str(head.get("model_version", model.version))
        if version != model.version:  # a newer version answered: its labels may differ
            model = yield from self._v2_model(name, version)
        return v2_classify_result(model, arrays, return_logits, answer.elapsed_ms)

    def _v2_model(self, name: str, version: str | None) -> Flow[V2Model]:
        key = (name, version)
        if key not in self._v2_models:
            model = V2Model.from_metadata(checked((yield from self._get(v2_path(name, version)))))
            self._v2_models[key] = self._v2_models[(name, model.version)] = model
        return self._v2_models[key]

    def stream(
        self,
        name: str,
        *,
        logits: bool = False,
        resumable: bool = False,
        snapshot_every: int = 16,
        retry: RetryPolicy | None = None,
        version: str | None = None,
    ) -> StreamMachine:
        """The flows of a stream of model ``name`` (not yet open): resumable or plain; on ``version`` (None:
        the highest the server has ready; the stream stays on the version it opened on)."""
        url = ws_url(self.base_url, name, logits, snapshot_every if resumable else 0, version)
        if resumable:
            return ResumableStream(url, self.headers, retry or RetryPolicy())
        return PlainStream(url, self.headers)
