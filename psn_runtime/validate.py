"""Input validation: every check raises BadInput naming the parameter and the offending value.

The fast path (a C-contiguous float32 array of the right shape) copies nothing.
"""

from __future__ import annotations

import numpy as np

from psn_runtime.errors import BadInput

_NUMERIC_KINDS = frozenset("fiu")  # float, signed int, unsigned int (bool, complex, str, object refused)
_F32 = np.dtype(np.float32)
_all = np.logical_and.reduce


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
    """Refuse NaN and Inf, naming the first offending element."""
    finite = np.isfinite(arr)
    if _all(finite, axis=None):
        return
    where = tuple(int(i) for i in np.argwhere(~finite)[0])
    value = float(arr[where])
    raise BadInput(param, f"contains NaN or Inf (first at index {list(where)}: {value})", value)


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
) -> np.ndarray:
    """x [B, T, *shape] or [T, *shape] -> float32 [B, T', *shape] (T' == T, or 1 <= T' <= T when
    variable_length); ``shape`` is the model's per-step input shape."""
    arr = as_float32(x, param)
    rank = len(shape)
    if arr.ndim == rank + 1:
        arr = arr[None]  # [T, *shape] -> [1, T, *shape]
    elif arr.ndim != rank + 2:
        raise BadInput(
            param,
            f"expected [B, T, *{shape_text(shape)}] or [T, *{shape_text(shape)}] "
            f"(rank {rank + 2} or {rank + 1}), got rank {arr.ndim} (shape {list(arr.shape)})",
            arr.ndim,
        )
    b, t = arr.shape[:2]
    if arr.size == 0:
        raise BadInput(param, f"empty input (shape {list(arr.shape)})", list(arr.shape))
    if arr.shape[2:] != tuple(shape):
        got = list(arr.shape[2:])
        raise BadInput(param, f"expected per-step shape {shape_text(shape)}, got {got}", got)
    if variable_length:
        if t > T:
            raise BadInput(param, f"expected 1 <= T <= {T} steps, got {t}", t)
    elif t != T:
        raise BadInput(param, f"expected exactly T={T} steps, got {t}", t)
    if b > max_batch:
        raise BadInput(param, f"batch of {b} sequences exceeds the limit of {max_batch}", b)
    check_finite(arr, param)
    return arr


def step_input(x: object, *, shape: tuple[int, ...], param: str = "x") -> np.ndarray:
    """One timestep x [*shape] -> float32 [*shape]."""
    arr = as_float32(x, param)
    if arr.shape != tuple(shape):
        raise BadInput(
            param,
            f"expected one timestep of shape {shape_text(shape)}, got shape {list(arr.shape)}",
            list(arr.shape),
        )
    check_finite(arr, param)
    return arr
