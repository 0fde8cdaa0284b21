"""The protobuf side of the Open Inference Protocol: a ``ModelInferRequest`` decoded into the V2 codec's
transport-neutral request (``server.v2codec.InferRequest``: its one input tensor from ``raw_input_contents``
or typed ``contents``, Triton's sequence parameters, the outputs asked for), and the codec's outputs
encoded as a ``ModelInferResponse``. Only the wire format is checked here; what the tensor must be for the
model (name, datatype, shape, value count, finite values) is the data plane's input builder's
(server.inputs.ModelInputs), as for V2 HTTP.

An answer comes in the form its request used: raw little-endian bytes in ``raw_output_contents`` (what
Triton always answers, tritonclient's form) for a request with ``raw_input_contents``, typed ``contents``
(``fp32_contents``, ``int64_contents``) for a request with typed contents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from psn_runtime.errors import BadInput
from server import v2codec
from server.errors import InvalidRequest

TYPED = {"FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64)}  # no typed FP16
OUTPUT_FIELDS = {"FP32": "fp32_contents", "INT64": "int64_contents"}
CONTENT_FIELDS = tuple(pb.InferTensorContents.DESCRIPTOR.fields_by_name)
RAW_PARAM = "raw_input_contents[0]"


def decode(request: pb.ModelInferRequest) -> v2codec.InferRequest:
    """The request as the V2 codec's InferRequest (outputs as raw bytes when the input came raw)."""
    if len(request.inputs) != 1:
        raise InvalidRequest(
            f"inputs: exactly one input tensor named 'x', got {len(request.inputs)}", "inputs"
        )
    tensor = request.inputs[0]
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
        decoded = v2codec.Tensor(
            tensor.name, tensor.datatype, tuple(tensor.shape), raw=raw[0], raw_param=RAW_PARAM
        )
    else:
        decoded = v2codec.Tensor(tensor.name, tensor.datatype, tuple(tensor.shape), data=_typed(tensor))
    sequence_id, start, end = sequence(request)
    step = None if sequence_id is None else v2codec.SequenceStep(sequence_id, start, end)
    outputs = [(name, bool(raw)) for name in wanted_outputs(request)]
    return v2codec.InferRequest(decoded, outputs, request.id or None, step)


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray | None:
    """The values of the contents field of the tensor's datatype (None when it has none of its own)."""
    contents = tensor.contents
    field, dtype = TYPED.get(tensor.datatype, (None, None))
    for other in CONTENT_FIELDS:
        if other != field and len(getattr(contents, other)):
            where = field or "raw_input_contents"
            raise BadInput(f"inputs[0].contents.{other}", f"a {tensor.datatype} input's values go in {where}")
    if field is None:
        if tensor.datatype in v2codec.DATATYPES:  # FP16: the proto has no typed field for it
            raise BadInput("inputs[0].contents", f"{tensor.datatype} values go in raw_input_contents")
        return None  # a datatype the model does not take: the input builder names it
    values = getattr(contents, field)
    return np.fromiter(values, dtype=dtype, count=len(values))


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
        return v2codec.OUTPUTS
    names = tuple(out.name for out in request.outputs)
    for i, name in enumerate(names):
        if name not in v2codec.OUTPUTS:
            raise InvalidRequest(
                f"outputs[{i}].name: expected one of {list(v2codec.OUTPUTS)}, got {name!r}",
                f"outputs[{i}].name",
            )
    return names


def parameter(value: bool | int | str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=value)


def encode(
    request_id: str,
    model: str,
    version: str,
    outputs: list[v2codec.Output],
    parameters: dict[str, bool | int | str | None] | None = None,
) -> pb.ModelInferResponse:
    """The answer: each output raw (``raw_output_contents``) or typed (``contents``), as it says."""
    answer = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for out in outputs:
        tensor = answer.outputs.add(name=out.name, datatype=out.datatype, shape=out.array.shape)
        if out.binary:
            answer.raw_output_contents.append(out.array.tobytes())
        else:
            getattr(tensor.contents, OUTPUT_FIELDS[out.datatype]).extend(out.array.reshape(-1).tolist())
    for key, value in (parameters or {}).items():
        if value is not None:
            answer.parameters[key].CopyFrom(parameter(value))
    return answer
