"""The Open Inference Protocol (KServe V2) tensor codec, for every V2 transport (HTTP in server.routes_v2;
gRPC builds the same ``InferRequest`` from its messages): datatypes, the binary tensor extension's framing,
requests decoded into transport-neutral values, answers encoded, model and server metadata.

It checks the wire format only (framing, binary section sizes); what a tensor must be for a model (name,
datatype, rank, value count, finite values) is the input builder's (server.inputs.ModelInputs).

Input ``x`` FP32 [-1, T, *input_shape] (T is -1 for variable-length models); outputs ``logits`` FP32 [-1, C],
``probabilities`` FP32 [-1, C], ``label_index`` INT64 [-1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from psn_runtime.errors import BadInput
from server.errors import InvalidRequest
from server.jsonio import dumps
from server.views import primary_provider

if TYPE_CHECKING:
    from psn_runtime import ModelInfo, StepResult
    from psn_runtime.manifest import Manifest
    from server.schemas import V2InferRequest

PLATFORM = "onnxruntime_onnx"
INPUT = "x"
OUTPUTS = ("logits", "probabilities", "label_index")
DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}  # inputs taken
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data", "sequence", "model_repository")
_NO_BYTES = memoryview(b"")


@dataclass(slots=True)
class Tensor:
    """One input tensor as a transport decoded it, not yet checked: its values as ``data`` (JSON numbers,
    flat or nested, or any sequence of numbers: a gRPC ``contents``) or as ``raw`` little-endian bytes (the
    binary extension's section, a gRPC ``raw_input_contents`` entry)."""

    name: str
    datatype: str  # a V2 datatype name
    shape: Sequence[int]  # as declared
    data: Any = None
    raw: bytes | memoryview | None = None
    param: str = "inputs[0]"  # how errors name the tensor
    raw_param: str = "inputs[0].parameters.binary_data_size"  # how errors name the raw bytes' size
    text: bytes | None = None  # the JSON text ``data`` was parsed from (spares the converter a walk)


@dataclass(slots=True)
class SequenceStep:
    """Triton's sequence extension: the request is one timestep of sequence ``id``."""

    id: int | str
    start: bool
    end: bool


@dataclass(slots=True)
class InferRequest:
    """An inference request, decoded (one input: the model has one)."""

    tensor: Tensor
    outputs: list[tuple[str, bool]]  # (output name, as binary?) in the order asked for
    id: str | None = None
    sequence: SequenceStep | None = None


@dataclass(slots=True)
class Output:
    name: str
    datatype: str
    array: np.ndarray  # little-endian, C-contiguous
    binary: bool  # as binary data after the JSON header (HTTP), raw_output_contents (gRPC)


# -- requests ---------------------------------------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The binary tensor extension's framing: (the JSON header, the binary section that follows it);
    ``header_length`` is the Inference-Header-Content-Length header (None: the whole body is JSON)."""
    if header_length is None:
        return body, _NO_BYTES
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes", HEADER_LENGTH
        )
    split = int(header_length)
    view = memoryview(body)
    return bytes(view[:split]), view[split:]


def from_http(doc: V2InferRequest, binary: memoryview, text: bytes) -> InferRequest:
    """A validated JSON request (server.schemas.V2InferRequest, parsed from ``text``) and the binary section
    after it -> InferRequest; a tensor's ``binary_data_size`` takes its bytes from the section."""
    tensor = doc.inputs[0]
    size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
    raw = None
    if size is not None:
        if size > len(binary):
            raise BadInput(
                "inputs[0].parameters.binary_data_size",
                f"{size} bytes, but {len(binary)} bytes of binary data follow the JSON header",
            )
        if size != len(binary):
            raise BadInput("inputs[0]", f"{len(binary) - size} bytes of binary data follow the tensor")
        raw = binary
    elif len(binary):
        raise BadInput("inputs[0]", "binary data sent, but the input has no binary_data_size parameter")
    params = doc.parameters
    sequence = None
    if params is not None and params.sequence_id is not None:
        sequence = SequenceStep(params.sequence_id, params.sequence_start, params.sequence_end)
    return InferRequest(
        Tensor(tensor.name, tensor.datatype, tensor.shape, tensor.data, raw, text=text),
        _wanted_outputs(doc),
        doc.id,
        sequence,
    )


def _wanted_outputs(doc: V2InferRequest) -> list[tuple[str, bool]]:
    """(output name, binary?) in the order asked for (all three when the request names none)."""
    params = doc.parameters
    default_binary = params.binary_data_output if params is not None else False
    if doc.outputs is None:
        return [(name, default_binary) for name in OUTPUTS]
    wanted = []
    for out in doc.outputs:
        binary = out.parameters.binary_data if out.parameters is not None else None
        wanted.append((out.name, default_binary if binary is None else binary))
    return wanted


# -- answers ----------------------------------------------------------------------------------------------
def outputs(
    logits: np.ndarray, probabilities: np.ndarray, label_index: np.ndarray, wanted: Sequence[tuple[str, bool]]
) -> list[Output]:
    """The outputs asked for, from a classification's logits [B, C], probabilities [B, C], labels [B]."""
    arrays = {
        "logits": ("FP32", np.ascontiguousarray(logits, dtype="<f4")),  # [B, C]
        "probabilities": ("FP32", np.ascontiguousarray(probabilities, dtype="<f4")),  # [B, C]
        "label_index": ("INT64", np.ascontiguousarray(label_index, dtype="<i8")),  # [B]
    }
    return [Output(name, *arrays[name], binary) for name, binary in wanted]


def sequence_answer(
    result: StepResult, classes: int, sequence_id: int | str
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]:
    """A sequence step's (logits, probabilities, label_index) and response parameters: the stream's answer
    after the step (the running mean logits, one row), or no rows while a full-only model gathers steps."""
    if result.ready:
        logits, probabilities = result.logits[None], result.probabilities[None]  # [1, C]
        label_index = logits.argmax(axis=1)  # [1]
    else:
        logits = probabilities = np.zeros((0, classes), np.float32)  # [0, C]
        label_index = np.zeros(0, np.int64)
    parameters = {
        "sequence_id": sequence_id,
        "t": result.t,
        "ready": result.ready,
        "done": result.done,
        "label": result.label,
    }
    return (logits, probabilities, label_index), parameters


def to_http(
    request: InferRequest,
    model_name: str,
    model_version: str,
    outs: list[Output],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """(the HTTP body, the JSON header's length when binary outputs follow it, else None)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if out.binary:
            data = out.array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = out.array.reshape(-1)
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    if parameters is not None:
        body["parameters"] = parameters
    header = dumps(body)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


# -- metadata ---------------------------------------------------------------------------------------------
def server_metadata() -> dict[str, Any]:
    try:
        version = metadata.version("psn-serve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "0"
    return {"name": "psn-serve", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(info: ModelInfo, manifest: Manifest) -> dict[str, Any]:
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
