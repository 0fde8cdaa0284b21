"""Input validation: every check raises BadInput naming the parameter (down to the offending element,
``x[3]``, ``inputs[1][4][2]``) and the offending value. NaN and Inf are refused here and nowhere else.

``step_input`` and ``classify_input`` build the only values the runtime trusts: a ``StepInput`` (one
timestep) and a ``ClassifyInput`` (a batch of sequences). Their constructors take a key only this module
holds, so nothing else can build one. The fast path (a C-contiguous float32 array of the right shape)
copies nothing.
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
    """Validated sequences: a finite, C-contiguous float32 array [B, T', *shape] within a model's limits."""

    __slots__ = ("array", "sequences")

    def __init__(self, array: np.ndarray, key: object) -> None:
        if key is not _KEY:
            raise TypeError("a ClassifyInput is built by psn_runtime.validate.classify_input only")
        self.array = array  # [B, T', *shape] float32
        self.sequences = array.shape[0]


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


def classify_input(
    x: object,
    *,
    T: int,
    shape: tuple[int, ...],
    variable_length: bool,
    max_batch: int,
    param: str = "inputs",
) -> ClassifyInput:
    """x [B, T, *shape] or [T, *shape] -> float32 [B, T', *shape] (T' == T, or 1 <= T' <= T when
    variable_length); ``shape`` is the model's per-step input shape."""
    if isinstance(x, ClassifyInput):
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
    if batch.shape[2:] != tuple(shape):
        got = list(batch.shape[2:])
        raise BadInput(param, f"expected per-step shape {shape_text(shape)}, got {got}", got)
    if variable_length:
        if t > T:
            raise BadInput(param, f"expected 1 <= T <= {T} steps, got {t}", t)
    elif t != T:
        raise BadInput(param, f"expected exactly T={T} steps, got {t}", t)
    if b > max_batch:
        raise BadInput(param, f"batch of {b} sequences exceeds the limit of {max_batch}", b)
    check_finite(arr, param)  # on the array as sent: the path names its own indices
    return ClassifyInput(batch, _KEY)


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
