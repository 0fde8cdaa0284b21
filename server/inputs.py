"""The data plane's input builder: every check of what a client sends, written once for every transport.

A transport (v1 HTTP, V2 HTTP, the WebSocket, gRPC) first asks the data plane for the model's
:class:`ModelInputs` (``DataPlane.inputs(name, version)``: 404 for an unknown model, 503 for one that is not
ready, before any body is read or converted), then decodes its bytes (JSON values, a binary frame, a V2
tensor: ``server.v2codec.Tensor``) and hands them to one of the builders here. They return the only inputs
the runtime takes (``psn_runtime.validate``'s ClassifyInput and StepInput), checking on the way:

- JSON tensors: nested lists of numbers, rectangular, of an accepted rank; refused with the path of the
  first bad element (``inputs[0][3][2]: ragged array ...``);
- V2 tensors: the input's name and datatype, the rank ([B, T, *shape]; one timestep [1, 1, *shape] or
  [1, *shape] in a sequence), the values or binary bytes against the declared shape;
- WebSocket frames: the message length (``check_message``, before decoding), a binary frame's byte count
  (prod(shape) little-endian float32), a JSON frame's ``x``: flat (prod(shape) numbers, C order) or nested
  as the per-step shape, for every shape;
- then psn_runtime.validate: NaN and Inf, the per-step shape, the sequence length (T; up to the stream step
  limit for a variable-length model) and the batch limit.

Nothing here takes a web framework's type: a gRPC servicer calls the same builders.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from psn_runtime.errors import BadInput
from psn_runtime.validate import (
    ClassifyInput,
    StepInput,
    as_float32,
    classify_input,
    longest_sequence,
    step_input,
)
from server.errors import BodyTooLarge, InvalidRequest
from server.v2codec import DATATYPES, INPUT, Tensor
from server.views import primary_provider

if TYPE_CHECKING:
    from psn_runtime import ModelInfo
    from psn_runtime.manifest import Manifest
    from server.settings import Settings

F32_MAX_SQUARED = float(np.finfo(np.float32).max) ** 2  # 1.16e77, a float64
SMALL = 64  # arrays of at most this many numbers are walked for booleans without the cheaper checks first
_F32 = np.dtype(np.float32)
_FRAME = np.dtype("<f4")  # a binary WebSocket frame's values


class ModelInputs:
    """What one READY model accepts, and the builders of its checked inputs (the module docstring)."""

    def __init__(self, name: str, manifest: Manifest, info: ModelInfo, settings: Settings) -> None:
        self.name = name
        self.manifest = manifest
        self.version = manifest.version
        self.provider = primary_provider(info)  # the execution provider its sessions got
        self.shape: tuple[int, ...] = tuple(manifest.input_shape)  # per-step shape
        self.features = manifest.features  # prod(shape)
        self.T = manifest.T
        self.variable_length = manifest.variable_length
        self.longest = longest_sequence(
            manifest.T, manifest.variable_length, manifest.streams, settings.max_stream_steps
        )
        self.max_batch = settings.max_classify_batch
        self.max_message = settings.max_ws_message_bytes
        rank = len(self.shape)
        dims = "×".join(map(str, self.shape))
        # (accepted ranks, what they are in words) of a JSON sequence batch and of a JSON timestep
        self._sequence = ((rank + 2, rank + 1), f"B×T×{dims} or T×{dims} numbers")
        flat = f"{self.features} numbers" if rank == 1 else f"{self.features} numbers (flat) or {dims}"
        self._step = ((1,) if rank == 1 else (1, rank), flat)
        self._nested = rank > 1  # a flat JSON timestep is reshaped
        self._tensor_want = f"numbers, flat or nested, for [B, T, {', '.join(map(str, self.shape))}]"

    # -- whole sequences ---------------------------------------------------------------------------------
    def classify_json(
        self, value: Any, param: str = "inputs", raw: bytes | str | None = None
    ) -> ClassifyInput:
        """JSON [B, T, *shape] or [T, *shape] numbers (``raw``: the JSON text they were parsed from)."""
        ranks, want = self._sequence
        return self._sequences(json_float32(value, param, ranks, want, raw), param)

    def classify_tensor(self, tensor: Tensor) -> ClassifyInput:
        """A V2 input tensor of shape [B, T, *shape]."""
        return self._sequences(self._tensor_array(tensor, sequence=False), tensor.param)

    def _sequences(self, x: np.ndarray, param: str) -> ClassifyInput:
        """x [B, T', *shape] or [T', *shape] within this model's length and batch limits, finite."""
        return classify_input(
            x,
            T=self.T,
            shape=self.shape,
            variable_length=self.variable_length,
            max_batch=self.max_batch,
            longest=self.longest,
            param=param,
        )

    # -- one timestep ------------------------------------------------------------------------------------
    def check_message(self, size: int, unit: str = "bytes") -> None:
        """A WebSocket message's length (bytes, or characters of a text frame), before it is decoded."""
        if size > self.max_message:
            raise BodyTooLarge(
                f"message of {size} {unit} is over the limit of {self.max_message} (--max-ws-message-bytes)"
            )

    def step_json(self, value: Any, param: str = "x", raw: bytes | str | None = None) -> StepInput:
        """One timestep as JSON: prod(shape) numbers (flat, C order) or nested as the per-step shape."""
        ranks, want = self._step
        x = json_float32(value, param, ranks, want, raw)
        if x.ndim == 1 and self._nested:  # flat: [prod(shape)] -> [*shape]
            if x.size != self.features:
                raise BadInput(
                    param, f"expected {want} (one timestep of shape {list(self.shape)}), got {x.size}"
                )
            x = x.reshape(self.shape)
        return step_input(x, shape=self.shape, param=param)

    def step_bytes(self, data: bytes, param: str = "x") -> StepInput:
        """One timestep as a binary frame: prod(shape) little-endian float32, C order."""
        self.check_message(len(data))
        if len(data) != 4 * self.features:
            raise BadInput(
                param,
                f"a binary frame must hold {self.features} float32 ({4 * self.features} bytes: one timestep "
                f"of shape {list(self.shape)}), got {len(data)} bytes",
            )
        return step_input(
            np.frombuffer(data, dtype=_FRAME).reshape(self.shape), shape=self.shape, param=param
        )

    def step_tensor(self, tensor: Tensor) -> StepInput:
        """A V2 sequence request's input: one timestep, [1, 1, *shape] or [1, *shape]."""
        x = self._tensor_array(tensor, sequence=True)
        return step_input(x.reshape(self.shape), shape=self.shape, param=tensor.param)

    # -- V2 tensors --------------------------------------------------------------------------------------
    def _tensor_array(self, tensor: Tensor, sequence: bool) -> np.ndarray:
        """The tensor's values as an array of its declared shape (float32 unless converted by the caller's
        validator), after its name, datatype, shape, rank and value count are checked."""
        param = tensor.param
        if tensor.name != INPUT:
            raise BadInput(f"{param}.name", f"expected {INPUT!r}, the model's one input, got {tensor.name!r}")
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise BadInput(
                f"{param}.datatype", f"expected one of {sorted(DATATYPES)}, got {tensor.datatype!r}"
            )
        shape = tuple(tensor.shape)
        if not shape or not all(type(d) is int and d > 0 for d in shape):
            raise BadInput(f"{param}.shape", f"expected positive integers, got {list(shape)!r}")
        self._check_rank(shape, sequence, f"{param}.shape")
        count = math.prod(shape)
        raw = tensor.raw
        if raw is not None:
            if len(raw) != count * dtype.itemsize:
                raise BadInput(
                    tensor.raw_param,
                    f"{len(raw)} bytes do not match shape {list(shape)} of {tensor.datatype} "
                    f"({count * dtype.itemsize} bytes)",
                )
            x = np.frombuffer(raw, dtype=dtype).reshape(shape)  # [*shape] as declared
            return x if x.dtype == _F32 else x.astype(np.float32)
        if tensor.data is None:
            raise InvalidRequest(
                f"{param}.data: required (or binary data with binary_data_size)", f"{param}.data"
            )
        data = tensor.data
        if isinstance(data, list):  # JSON: nested lists, checked element by element
            ranks = tuple(range(1, len(self.shape) + 3))
            flat = json_float32(data, f"{param}.data", ranks, self._tensor_want, tensor.text).reshape(-1)
        else:  # typed values already (a gRPC contents field, an array)
            flat = as_float32(data, f"{param}.data").reshape(-1)
        if flat.size != count:
            raise BadInput(f"{param}.data", f"{flat.size} values for shape {list(shape)} ({count} values)")
        return flat.reshape(shape)

    def _check_rank(self, shape: tuple[int, ...], sequence: bool, param: str) -> None:
        per_step = self.shape
        if sequence:
            if shape[-len(per_step) :] != per_step or shape[: -len(per_step)] not in ((1,), (1, 1)):
                want = ", ".join(map(str, per_step))
                raise BadInput(
                    param,
                    f"a sequence request takes one timestep: [1, 1, {want}] or [1, {want}], "
                    f"got {list(shape)!r}",
                )
        elif len(shape) != len(per_step) + 2:
            want = ", ".join(["B", "T", *map(str, per_step)])
            raise BadInput(
                param, f"expected [{want}] (rank {len(per_step) + 2}) positive integers, got {list(shape)!r}"
            )


# -- JSON tensors -----------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return type(value).__name__


def _find_problem(value: Any, param: str, ranks: tuple[int, ...], want: str) -> BadInput:
    """Walk a nested list that numpy refused (or that holds non-numbers) and name its first bad element."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list) and len(shape) <= max(ranks):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    ndim = len(shape)
    if ndim > max(ranks):
        return BadInput(param, f"nested too deep: expected {want}")

    def walk(item: Any, path: str, level: int) -> BadInput | None:
        if level == ndim:
            if type(item) is int or (type(item) is float and math.isfinite(item)):
                return None
            return BadInput(path, f"expected a number, got {_describe(item)}", item if item is None else None)
        if not isinstance(item, list):
            return BadInput(path, f"expected an array of {shape[level]} values, got {_describe(item)}")
        if len(item) != shape[level]:
            return BadInput(path, f"ragged array: {len(item)} values where the first row has {shape[level]}")
        for i, sub in enumerate(item):
            problem = walk(sub, f"{path}[{i}]", level + 1)
            if problem is not None:
                return problem
        return None

    found = walk(value, param, 0)
    return found or BadInput(param, f"expected {want}")


def _has_bool(value: list, ndim: int) -> bool:
    flat: Any = value
    for _ in range(ndim - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in set(map(type, flat))


def _may_hold_bool(array: np.ndarray, raw: bytes | str | None) -> bool:
    """Whether numpy may have taken JSON booleans for numbers (true -> 1, false -> 0); the cheapest check
    first: the raw JSON text (when given) spells true or false somewhere, and the array has a 0 or a 1."""
    if isinstance(raw, str):
        if "true" not in raw and "false" not in raw:
            return False
    elif raw is not None and b"true" not in raw and b"false" not in raw:
        return False
    return bool(((array == 0) | (array == 1)).any())


def json_float32(
    value: Any, param: str, ranks: tuple[int, ...], want: str, raw: bytes | str | None = None
) -> np.ndarray:
    """A JSON value (nested lists of numbers) -> a float32 array of one of ``ranks`` dimensions; ``want``
    says in words what is accepted (``B×T×28 or T×28 numbers``). Numbers beyond float32 become Inf, which
    the runtime's validator names.

    BadInput names the first offending element: ``inputs[1][3]: ragged array ...``. ``raw``, the JSON text
    the value was parsed from, lets it skip the walk that looks for booleans when the text has none.
    """
    if not isinstance(value, list):
        raise BadInput(param, f"expected an array of {want}, got {_describe(value)}")
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raise _find_problem(value, param, ranks, want) from None
    if array.size == 0:
        raise BadInput(param, f"empty array: expected {want}")
    kind = array.dtype.kind
    if kind not in "fiu" or array.ndim not in ranks:
        if kind in "fiu":
            deep = "nested too deep: " if array.ndim > max(ranks) else ""
            raise BadInput(param, f"{deep}expected {want}, got {array.ndim} dimensions")
        raise _find_problem(value, param, ranks, want)
    # a few numbers (a stream's text frame): the walk is cheaper than the checks that may skip it
    small = array.size <= SMALL
    if (small or _may_hold_bool(array, raw)) and _has_bool(value, array.ndim):
        raise _find_problem(value, param, ranks, want)
    if kind != "f":
        return array.astype(np.float32)
    flat = array.reshape(-1)  # a view: np.array made it C-contiguous
    if np.dot(flat, flat) <= F32_MAX_SQUARED:  # every |v| <= F32_MAX: the cast cannot overflow
        return array.astype(np.float32)  # (one dot product costs less than an np.errstate)
    with np.errstate(over="ignore"):  # beyond float32 -> Inf: the runtime's validator names it
        return array.astype(np.float32)
