"""JSON in and out, fast (orjson when installed, else the standard library), and the one converter of JSON
tensor payloads to float32 arrays: ragged rows, strings, booleans, nulls and too deep nesting are rejected
with the path of the first offending element (``inputs[0][3][2]``). Finiteness (NaN, Inf, numbers beyond
float32) is the runtime's validator's to check (``psn_runtime.validate``), once, for every transport."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from psn_runtime.errors import BadInput
from server.errors import InvalidJSON

try:  # optional speed-up: several times faster than json on both sides, and numpy-aware
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]


F32_MAX_SQUARED = float(np.finfo(np.float32).max) ** 2  # 1.16e77, a float64
SMALL = 64  # arrays of at most this many numbers are walked for booleans without the cheaper checks first


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _numpy_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def loads(data: bytes | str) -> Any:
    """Parse a JSON document; InvalidJSON (400) on a syntax error, NaN/Infinity, or too deep nesting
    (orjson refuses more than 1024 levels; the standard library hits RecursionError)."""
    try:
        if orjson is not None:
            return orjson.loads(data)
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise InvalidJSON(f"invalid JSON: {exc}") from None


def dumps(obj: Any) -> bytes:
    """Serialize to JSON bytes; numpy arrays and scalars are written as lists and numbers."""
    if orjson is not None:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, default=_numpy_default, allow_nan=False, separators=(",", ":")).encode()


def dumps_text(obj: Any) -> str:
    return dumps(obj).decode()


class JSONBytesResponse(JSONResponse):
    """A JSON response rendered with :func:`dumps` (orjson when available). A JSONResponse subclass, so that
    the OpenAPI schema takes the route's declared body for it (not a plain string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


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


def _shape_text(ranks: tuple[int, ...], dims: tuple[str, ...]) -> str:
    return " or ".join("×".join(dims[len(dims) - r :]) for r in ranks)


def input_dims(shape: tuple[int, ...], batch: bool = True) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(ranks, dim names) of a request tensor for a model with per-step ``shape``: [B, T, *shape] or
    [T, *shape] (``batch``), else one timestep [*shape]; the names spell the sizes (``B×T×3×32×32``)."""
    per_step = tuple(str(d) for d in shape)
    if not batch:
        return (len(shape),), per_step
    return (len(shape) + 1, len(shape) + 2), ("B", "T", *per_step)


def _find_problem(value: Any, param: str, ranks: tuple[int, ...], dims: tuple[str, ...]) -> BadInput:
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
        return BadInput(param, f"nested too deep: expected {_shape_text(ranks, dims)} numbers")

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
    return found or BadInput(param, f"expected {_shape_text(ranks, dims)} numbers")


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


def to_float32(
    value: Any,
    param: str,
    ranks: tuple[int, ...] = (2, 3),
    dims: tuple[str, ...] = ("B", "T", "F"),
    raw: bytes | str | None = None,
) -> np.ndarray:
    """A JSON value (nested lists of numbers) -> a float32 array of one of ``ranks`` dimensions.

    BadInput names the first offending element: ``inputs[1][3]: ragged array ...``. ``raw``, the JSON text
    the value was parsed from, lets it skip the walk that looks for booleans when the text has none.
    """
    if not isinstance(value, list):
        raise BadInput(
            param, f"expected an array of {_shape_text(ranks, dims)} numbers, got {_describe(value)}"
        )
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        raise _find_problem(value, param, ranks, dims) from None
    if array.size == 0:
        raise BadInput(param, f"empty array: expected {_shape_text(ranks, dims)} numbers")
    kind = array.dtype.kind
    if kind not in "fiu" or array.ndim not in ranks:
        if kind in "fiu":
            deep = "nested too deep: " if array.ndim > max(ranks) else ""
            raise BadInput(
                param, f"{deep}expected {_shape_text(ranks, dims)} numbers, got {array.ndim} dimensions"
            )
        raise _find_problem(value, param, ranks, dims)
    # a few numbers (a stream's text frame): the walk is cheaper than the checks that may skip it
    small = array.size <= SMALL
    if (small or _may_hold_bool(array, raw)) and _has_bool(value, array.ndim):
        raise _find_problem(value, param, ranks, dims)
    if kind != "f":
        return array.astype(np.float32)
    flat = array.reshape(-1)  # a view: np.array made it C-contiguous
    if np.dot(flat, flat) <= F32_MAX_SQUARED:  # every |v| <= F32_MAX: the cast cannot overflow
        return array.astype(np.float32)  # (one dot product costs less than an np.errstate)
    with np.errstate(over="ignore"):  # beyond float32 -> Inf: the runtime's validator names it
        return array.astype(np.float32)
