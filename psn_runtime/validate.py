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


def classify_input(
    x: object, *, T: int, features: int, variable_length: bool, max_batch: int, param: str = "inputs"
) -> np.ndarray:
    """x [B, T, F] or [T, F] -> float32 [B, T', F] (T' == T, or 1 <= T' <= T when variable_length)."""
    arr = as_float32(x, param)
    if arr.ndim == 2:
        arr = arr[None]  # [T, F] -> [1, T, F]
    elif arr.ndim != 3:
        raise BadInput(
            param,
            f"expected shape [B, T, F] or [T, F], got rank {arr.ndim} (shape {list(arr.shape)})",
            arr.ndim,
        )
    b, t, f = arr.shape
    if arr.size == 0:
        raise BadInput(param, f"empty input (shape {list(arr.shape)})", list(arr.shape))
    if f != features:
        raise BadInput(param, f"expected F={features} features per step, got {f}", f)
    if variable_length:
        if t > T:
            raise BadInput(param, f"expected 1 <= T <= {T} steps, got {t}", t)
    elif t != T:
        raise BadInput(param, f"expected exactly T={T} steps, got {t}", t)
    if b > max_batch:
        raise BadInput(param, f"batch of {b} sequences exceeds the limit of {max_batch}", b)
    check_finite(arr, param)
    return arr


def step_input(x: object, *, features: int, param: str = "x") -> np.ndarray:
    """One timestep x [F] -> float32 [F]."""
    arr = as_float32(x, param)
    if arr.shape != (features,):
        raise BadInput(
            param,
            f"expected one timestep of shape [{features}], got shape {list(arr.shape)}",
            list(arr.shape),
        )
    check_finite(arr, param)
    return arr
