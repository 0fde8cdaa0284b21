"""The protobuf side of the Open Inference Protocol's tensors: a ``ModelInferRequest``'s one input as an
array (from ``raw_input_contents`` or typed ``contents``), its sequence parameters and requested outputs, and
a ``ModelInferResponse`` built from the answer's arrays.

An answer comes in the form its request used: raw little-endian bytes in ``raw_output_contents`` (what
Triton always answers, tritonclient's form) for a request with ``raw_input_contents``, typed ``contents``
(``fp32_contents``, ``int64_contents``) for a request with typed contents.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from psn_runtime.errors import BadInput
from server.errors import InvalidRequest

INPUT = "x"
OUTPUTS = ("logits", "probabilities", "label_index")
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2")}
TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents"}  # the proto has no typed FP16 field
OUTPUT_TYPES = {"FP32": ("<f4", "fp32_contents"), "INT64": ("<i8", "int64_contents")}
CONTENT_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)


def input_array(request: pb.ModelInferRequest) -> tuple[np.ndarray, bool]:
    """(x float32 in its declared shape, raw?): the request's one input ``x``. Checks the envelope (one
    input, its name, datatype, a positive shape that the data fills exactly); the caller checks the shape
    against the model."""
    if len(request.inputs) != 1:
        raise InvalidRequest(
            f"inputs: exactly one input tensor named 'x', got {len(request.inputs)}", "inputs"
        )
    tensor = request.inputs[0]
    if tensor.name != INPUT:
        raise InvalidRequest(f"inputs[0].name: expected 'x', got {tensor.name!r}", "inputs[0].name")
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise BadInput("inputs[0].datatype", f"expected one of {sorted(DTYPES)}, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    if not shape or not all(d > 0 for d in shape):
        raise BadInput("inputs[0].shape", f"expected positive integers, got {shape!r}")
    count = math.prod(shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidRequest(
                f"raw_input_contents: one entry for the one input, got {len(raw)}", "raw_input_contents"
            )
        if tensor.HasField("contents"):
            raise InvalidRequest(
                "inputs[0].contents: send the input either as raw_input_contents or as contents, not both",
                "inputs[0].contents",
            )
        data = raw[0]
        size = count * dtype.itemsize
        if len(data) != size:
            message = f"{len(data)} bytes for shape {shape} of {tensor.datatype} ({size} bytes)"
            raise BadInput("raw_input_contents[0]", message)
        x = np.frombuffer(data, dtype=dtype).reshape(shape)
        return (x if x.dtype == np.float32 else x.astype(np.float32)), True
    field = TYPED.get(tensor.datatype)
    if field is None:
        raise BadInput("inputs[0].datatype", f"{tensor.datatype} data goes in raw_input_contents")
    contents = tensor.contents
    for other in CONTENT_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise BadInput(f"inputs[0].contents.{other}", f"a {tensor.datatype} input's values go in {field}")
    values = getattr(contents, field)
    if len(values) != count:
        raise BadInput(
            f"inputs[0].contents.{field}", f"{len(values)} values for shape {shape} ({count} values)"
        )
    return np.array(values, dtype=np.float32).reshape(shape), False


def _value(param: pb.InferParameter) -> Any:
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def sequence(request: pb.ModelInferRequest) -> tuple[int | str | None, bool, bool]:
    """(sequence_id or None, sequence_start, sequence_end) of Triton's sequence parameters (ids as V2 HTTP
    takes them: tritonclient sends none for its "no sequence", 0)."""
    params = request.parameters
    if "sequence_id" not in params:
        return None, False, False
    sequence_id = _value(params["sequence_id"])
    if not (
        (type(sequence_id) is int and sequence_id > 0)
        or (isinstance(sequence_id, str) and 0 < len(sequence_id) <= 256)
    ):
        raise InvalidRequest(
            f"parameters.sequence_id: a positive integer or a non-empty string (at most 256 characters), "
            f"got {sequence_id!r}",
            "parameters.sequence_id",
        )
    flags = []
    for name in ("sequence_start", "sequence_end"):
        value = _value(params[name]) if name in params else False
        if not isinstance(value, bool):
            raise InvalidRequest(f"parameters.{name}: true or false (bool_param)", f"parameters.{name}")
        flags.append(value)
    return sequence_id, flags[0], flags[1]


def control(
    request: pb.ModelInferRequest, sequence_id: int | str | None, start: bool
) -> tuple[str, str] | None:
    """A resumable sequence's control request, or None for a step: ("snapshot", "") for the parameter
    ``snapshot`` (true), ("resume", SNAPSHOT) for ``resume`` (a snapshot, with ``sequence_start``), as
    the WebSocket's ``{"snapshot": true}`` and ``{"resume": "..."}``. Such a request has no inputs."""
    params = request.parameters
    asked = [name for name in ("snapshot", "resume") if name in params]
    if not asked:
        return None
    if len(asked) > 1:
        raise InvalidRequest("parameters: snapshot or resume, not both", "parameters.resume")
    name = asked[0]
    value = _value(params[name])
    if sequence_id is None:
        raise InvalidRequest(f"parameters.{name}: a sequence's (send sequence_id)", f"parameters.{name}")
    if request.inputs or request.raw_input_contents:
        raise InvalidRequest(f"inputs: a {name} request has none", "inputs")
    if name == "snapshot":
        if value is not True:
            raise InvalidRequest("parameters.snapshot: true (bool_param)", "parameters.snapshot")
        return name, ""
    if not isinstance(value, str) or not value:
        raise InvalidRequest("parameters.resume: a snapshot (string_param)", "parameters.resume")
    if not start:
        raise InvalidRequest(
            "parameters.resume: resuming opens the sequence: set sequence_start", "parameters.sequence_start"
        )
    return name, value


def wanted_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The outputs asked for, in order (all three when the request names none)."""
    if not request.outputs:
        return OUTPUTS
    names = tuple(out.name for out in request.outputs)
    for i, name in enumerate(names):
        if name not in OUTPUTS:
            raise InvalidRequest(
                f"outputs[{i}].name: expected one of {list(OUTPUTS)}, got {name!r}", f"outputs[{i}].name"
            )
    return names


def parameter(value: bool | int | str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=value)


def response(
    request: pb.ModelInferRequest,
    model: str,
    version: str,
    outputs: tuple[str, ...],
    arrays: dict[str, tuple[str, np.ndarray]],
    raw: bool,
    parameters: dict[str, bool | int | str | None] | None = None,
) -> pb.ModelInferResponse:
    """The answer: ``outputs`` in order, from ``arrays`` (output name -> (datatype, array))."""
    answer = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for name in outputs:
        datatype, array = arrays[name]
        dtype, field = OUTPUT_TYPES[datatype]
        out = answer.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            answer.raw_output_contents.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
        else:
            getattr(out.contents, field).extend(array.reshape(-1).tolist())
    for key, value in (parameters or {}).items():
        if value is not None:
            answer.parameters[key].CopyFrom(parameter(value))
    return answer
