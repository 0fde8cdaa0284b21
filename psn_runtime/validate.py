"""Input validation: every check raises BadInput naming the parameter (down to the offending element,
``x[3]``, ``inputs[1][4][2]``) and the offending value. NaN and Inf are refused here and nowhere else.

``step_input`` and ``classify_input`` build the only values the runtime trusts: a ``StepInput`` (one
timestep) and a ``ClassifyInput`` (a batch of sequences). Their constructors take a key only this module
holds, so nothing else can build one, and a value built once is not checked again (only that it fits the
model it is given to). The fast path (a C-contiguous float32 array of the right shape) copies nothing.

How long a classified sequence may be is :func:`longest_sequence`'s to say, for the runtime and the server
alike: T for a model whose full graph takes exactly T steps; any 1 <= T' <= the stream step limit for a
variable-length model that streams (the full graph runs T' <= T; the step graph runs longer ones, as a
stream would: psn_runtime.unrolled).
"""

from __future__ import annotations

import math

import numpy as np

from psn_runtime.errors import BadInput

_NUMERIC_KINDS = frozenset("fiu")  # float, signed int, unsigned int (bool, complex, str, object refused)
_F32 = np.dtype(np.float32)
_sum = np.add.reduce
_KEY = object()  # only this module builds validated inputs


class StepInput:
    """One validated timestep: a finite, C-contiguous float32 array of a model's per-step ``shape``."""

    __slots__ = ("array", "shape")

    def __init__(self, array: np.ndarray, key: object) -> None:
        if key is not _KEY:
            raise TypeError("a StepInput is built by psn_runtime.validate.step_input only")
        self.array = array  # [*shape] float32
        self.shape = array.shape


class ClassifyInput:
    """Validated sequences: a finite, C-contiguous float32 array [B, T', *shape] within a model's limits;
    ``unrolled``: T' is beyond the full graph's T, so the step graph runs them (psn_runtime.unrolled)."""

    __slots__ = ("array", "sequences", "steps", "unrolled")

    def __init__(self, array: np.ndarray, unrolled: bool, key: object) -> None:
        if key is not _KEY:
            raise TypeError("a ClassifyInput is built by psn_runtime.validate.classify_input only")
        self.array = array  # [B, T', *shape] float32
        self.sequences, self.steps = array.shape[:2]
        self.unrolled = unrolled


def as_float32(x: object, param: str) -> np.ndarray:
    """x as a C-contiguous float32 array (no copy when it already is one)."""
    if type(x) is np.ndarray and (x.dtype is _F32 or x.dtype == _F32):
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise BadInput(param, f"not a rectangular array of numbers ({e})") from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise BadInput(param, f"must hold numbers, got dtype {arr.dtype}", str(arr.dtype))
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf: refused below
        return np.ascontiguousarray(arr, dtype=np.float32)


def check_finite(arr: np.ndarray, param: str) -> None:
    """Refuse NaN and Inf (and numbers beyond float32, which became Inf), naming the first offending
    element: ``param[i][j]``."""
    if math.isfinite(_sum(arr, axis=None, dtype=np.float64)):  # one reduction, no temporary: a float64
        return  # sum of float32 values cannot overflow, so it is finite exactly when every value is
    finite = np.isfinite(arr)
    where = tuple(int(i) for i in np.argwhere(~finite)[0])
    value = float(arr[where])
    path = param + "".join(f"[{i}]" for i in where)
    raise BadInput(
        path,
        f"contains NaN or Inf (first at index {list(where)}: {value}); numbers must be finite float32",
        value,
    )


def shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def longest_sequence(T: int, variable_length: bool, streams: bool, max_stream_steps: int) -> int:
    """The most steps a classified sequence may have (the module docstring): a variable-length model with
    a step graph takes as many as one of its streams may (max_stream_steps), any other T."""
    return max(T, max_stream_steps) if variable_length and streams else T


def _check_steps(t: int, T: int, variable_length: bool, longest: int, param: str) -> None:
    if variable_length:
        if t > longest:
            raise BadInput(param, f"expected 1 <= T <= {longest} steps, got {t}", t)
    elif t != T:
        raise BadInput(param, f"expected exactly T={T} steps, got {t}", t)


def classify_input(
    x: object,
    *,
    T: int,
    shape: tuple[int, ...],
    variable_length: bool,
    max_batch: int,
    longest: int | None = None,
    param: str = "inputs",
) -> ClassifyInput:
    """x [B, T', *shape] or [T', *shape] -> float32 [B, T', *shape] (T' == T, or 1 <= T' <= ``longest``,
    default T, when variable_length); ``shape`` is the model's per-step input shape. A ClassifyInput is
    returned as it is when it fits these limits (it was checked when it was built)."""
    longest = T if longest is None else longest
    shape = tuple(shape)
    if isinstance(x, ClassifyInput):
        t = x.steps
        fits = t == T or (variable_length and t <= longest)
        if fits and x.array.shape[2:] == shape and x.sequences <= max_batch and x.unrolled == (t > T):
            return x
        x = x.array
    arr = as_float32(x, param)
    rank = len(shape)
    if arr.ndim != rank + 1 and arr.ndim != rank + 2:
        raise BadInput(
            param,
            f"expected [B, T, *{shape_text(shape)}] or [T, *{shape_text(shape)}] "
            f"(rank {rank + 2} or {rank + 1}), got rank {arr.ndim} (shape {list(arr.shape)})",
            arr.ndim,
        )
    batch = arr if arr.ndim == rank + 2 else arr[None]  # [T, *shape] -> [1, T, *shape]
    b, t = batch.shape[:2]
    if batch.size == 0:
        raise BadInput(param, f"empty input (shape {list(batch.shape)})", list(batch.shape))
    if batch.shape[2:] != shape:
        got = list(batch.shape[2:])
        raise BadInput(param, f"expected per-step shape {shape_text(shape)}, got {got}", got)
    _check_steps(t, T, variable_length, longest, param)
    if b > max_batch:
        raise BadInput(param, f"batch of {b} sequences exceeds the limit of {max_batch}", b)
    check_finite(arr, param)  # on the array as sent: the path names its own indices
    return ClassifyInput(batch, t > T, _KEY)


def step_input(x: object, *, shape: tuple[int, ...], param: str = "x") -> StepInput:
    """One timestep x [*shape] -> a StepInput (float32 [*shape]); a StepInput of that shape is returned as
    it is (it was validated when it was built)."""
    shape = tuple(shape)
    if isinstance(x, StepInput):
        if x.shape == shape:
            return x
        x = x.array
    arr = as_float32(x, param)
    if arr.shape != shape:
        raise BadInput(
            param,
            f"expected one timestep of shape {shape_text(shape)}, got shape {list(arr.shape)}",
            list(arr.shape),
        )
    check_finite(arr, param)
    return StepInput(arr, _KEY)
