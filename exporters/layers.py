"""Time-local layers (Conv1d, Linear, BatchNorm, pooling, (un)flatten) lowered to ONNX nodes.

Activations live in one of two layouts, and a Reshape is emitted only when a consumer needs the other:

- ``SEQ``:  [N, T, D]  (the step graph has T = 1: [N, 1, D]); MatMul-based layers and PSN neurons use it
- ``ROWS``: [N*T, *dims] (the step graph: [N, *dims]); Conv1d and pooling need [N*T, C, L]

BatchNorm (eval-mode running statistics) is folded into the Conv1d or Linear before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import nn

from exporters.errors import ExportError
from exporters.graph import GraphBuilder


class Layout(Enum):
    SEQ = "seq"  # [N, T, D]
    ROWS = "rows"  # [N*T, *dims]


class Mode(Enum):
    FULL = "full"  # x [N, T, F]
    STEP = "step"  # x [N, F]: one timestep


@dataclass(frozen=True)
class Act:
    """An activation tensor: its name, actual layout and trailing dims, and its logical per-row shape."""

    name: str
    layout: Layout
    dims: tuple[int, ...]  # actual trailing dims: (D,) for SEQ, (*row,) or a reshaped view for ROWS
    row: tuple[int, ...]  # logical shape of one timestep of one sample (what torch sees after [T*N])

    @property
    def width(self) -> int:
        return math.prod(self.row)


class Lowering:
    """Shared state of one graph being built: the builder, the mode, cached dynamic shape tensors."""

    def __init__(self, b: GraphBuilder, mode: Mode, x: str) -> None:
        self.b = b
        self.mode = mode
        self.x = x
        self._cache: dict[str, str] = {}

    # dynamic shapes, computed once per graph from the input x [N, T, F]
    def _shared(self, key: str, build) -> str:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def seq_shape(self, width: int) -> str:
        """Shape tensor for a reshape to SEQ."""
        if self.mode is Mode.STEP:
            return self.b.shape_const([-1, 1, width])  # [N, 1, D]

        def build() -> str:
            nt = self.b.op("Shape", [self.x], start=0, end=2)  # [N, T]
            return self.b.op("Concat", [nt, self.b.shape_const([-1])], axis=0)  # [N, T, -1]

        return self._shared("seq_shape", build)

    def time_len(self) -> str:
        """[T, T] as an int64 tensor: the ends of a Slice of a [T_max, T_max] matrix (full mode)."""

        def build() -> str:
            t = self.b.op("Shape", [self.x], start=1, end=2)  # [T]
            return self.b.op("Concat", [t, t], axis=0)  # [T, T]

        return self._shared("time_len", build)

    def batch_by_one(self) -> str:
        """[N, 1] as an int64 tensor (to Expand a [1, D] zero state to [N, D])."""

        def build() -> str:
            n = self.b.op("Shape", [self.x], start=0, end=1)  # [N]
            return self.b.op("Concat", [n, self.b.shape_const([1])], axis=0)  # [N, 1]

        return self._shared("batch_by_one", build)

    # layout changes
    def to_rows(self, a: Act, dims: tuple[int, ...]) -> Act:
        if a.layout is Layout.ROWS and a.dims == dims:
            return a
        if math.prod(dims) != a.width:
            raise ExportError(f"cannot view an activation of width {a.width} as {dims}")
        name = self.b.op("Reshape", [a.name, self.b.shape_const([-1, *dims])])  # [N*T, *dims]
        return Act(name, Layout.ROWS, dims, a.row)

    def to_seq(self, a: Act) -> Act:
        if a.layout is Layout.SEQ:
            return a
        name = self.b.op("Reshape", [a.name, self.seq_shape(a.width)])  # [N, T, D]
        return Act(name, Layout.SEQ, (a.width,), a.row)

    def to_flat(self, a: Act, prefer: Layout) -> Act:
        """Any layout whose last axis is the whole row (what MatMul needs)."""
        if a.layout is Layout.SEQ or len(a.dims) == 1:
            return a
        return self.to_seq(a) if prefer is Layout.SEQ else self.to_rows(a, (a.width,))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def bn_scale_shift(bn: nn.BatchNorm1d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = x * scale + shift (per channel), in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("BatchNorm1d without running statistics cannot be folded")
    scale = 1.0 / np.sqrt(_np(bn.running_var) + bn.eps)
    if bn.weight is not None:
        scale = scale * _np(bn.weight)
    shift = -_np(bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + _np(bn.bias)
    return scale, shift


def _single(v, what: str) -> int:
    vals = v if isinstance(v, tuple) else (v,)
    if len(vals) != 1:
        raise ExportError(f"{what}: expected a 1-d value, got {v}")
    return int(vals[0])


def conv1d(low: Lowering, a: Act, conv: nn.Conv1d, bn: nn.BatchNorm1d | None) -> Act:
    if len(a.row) != 2 or a.row[0] != conv.in_channels:
        raise ExportError(f"Conv1d expects rows [C={conv.in_channels}, L], got {a.row}")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ExportError("Conv1d: only explicit zero padding is supported")
    a = low.to_rows(a, a.row)
    w = _np(conv.weight)  # [C_out, C_in/groups, K]
    bias = _np(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels)
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        w = w * scale[:, None, None]
        bias = bias * scale + shift
    k = _single(conv.kernel_size, "Conv1d kernel")
    pad = _single(conv.padding, "Conv1d padding")
    stride = _single(conv.stride, "Conv1d stride")
    dilation = _single(conv.dilation, "Conv1d dilation")
    inputs = [a.name, low.b.const("conv_w", w.astype(np.float32))]
    if conv.bias is not None or bn is not None:
        inputs.append(low.b.const("conv_b", bias.astype(np.float32)))
    name = low.b.op(
        "Conv",
        inputs,
        kernel_shape=[k],
        pads=[pad, pad],
        strides=[stride],
        dilations=[dilation],
        group=conv.groups,
    )
    length = (a.row[1] + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    row = (conv.out_channels, length)
    return Act(name, Layout.ROWS, row, row)


def linear(low: Lowering, a: Act, lin: nn.Linear, bn: nn.BatchNorm1d | None, prefer: Layout) -> Act:
    if a.width != lin.in_features or len(a.row) != 1:
        raise ExportError(f"Linear expects rows of {lin.in_features} features, got {a.row}")
    a = low.to_flat(a, prefer)
    w = _np(lin.weight)  # [out, in]
    bias = _np(lin.bias) if lin.bias is not None else None
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        w = w * scale[:, None]
        bias = (bias if bias is not None else 0.0) * scale + shift
    name = low.b.op("MatMul", [a.name, low.b.const("linear_w", w.T.astype(np.float32))])  # [..., out]
    if bias is not None:
        name = low.b.op("Add", [name, low.b.const("linear_b", bias.astype(np.float32))])
    return Act(name, a.layout, (lin.out_features,), (lin.out_features,))


def batchnorm(low: Lowering, a: Act, bn: nn.BatchNorm1d) -> Act:
    """A BatchNorm with nothing to fold into: a per-channel Mul + Add."""
    scale, shift = bn_scale_shift(bn)
    if len(a.row) == 2:  # [C, L]
        a = low.to_rows(a, a.row)
        scale, shift = scale[:, None], shift[:, None]
    elif len(a.row) != 1:
        raise ExportError(f"BatchNorm1d on rows of shape {a.row} is not supported")
    name = low.b.op("Mul", [a.name, low.b.const("bn_scale", scale.astype(np.float32))])
    name = low.b.op("Add", [name, low.b.const("bn_shift", shift.astype(np.float32))])
    return Act(name, a.layout, a.dims, a.row)


def avgpool1d(low: Lowering, a: Act, pool: nn.AvgPool1d) -> Act:
    if len(a.row) != 2:
        raise ExportError(f"AvgPool1d expects rows [C, L], got {a.row}")
    a = low.to_rows(a, a.row)
    k = _single(pool.kernel_size, "AvgPool1d kernel")
    stride = _single(pool.stride, "AvgPool1d stride")
    pad = _single(pool.padding, "AvgPool1d padding")
    if pad == 0 and not pool.ceil_mode:
        # a MatMul with the pooling matrix: same values (the 1/k weights are exact for k = 2), and
        # several times faster than onnxruntime's CPU AveragePool on these small rows
        length = (a.row[1] - k) // stride + 1
        pmat = np.zeros((a.row[1], length), dtype=np.float32)  # [L, L_out]
        for j in range(length):
            pmat[j * stride : j * stride + k, j] = 1.0 / k
        name = low.b.op("MatMul", [a.name, low.b.const("avgpool", pmat)])  # [N*T, C, L_out]
        row = (a.row[0], length)
        return Act(name, Layout.ROWS, row, row)
    name = low.b.op(
        "AveragePool",
        [a.name],
        kernel_shape=[k],
        strides=[stride],
        pads=[pad, pad],
        ceil_mode=int(pool.ceil_mode),
        count_include_pad=int(pool.count_include_pad),
    )
    num = a.row[1] + 2 * pad - k
    length = (-(-num // stride) if pool.ceil_mode else num // stride) + 1
    row = (a.row[0], length)
    return Act(name, Layout.ROWS, row, row)


def unflatten(a: Act, mod: nn.Unflatten) -> Act:
    if mod.dim not in (1, -len(a.row)) or math.prod(mod.unflattened_size) != a.row[0]:
        raise ExportError(f"Unflatten(dim={mod.dim}, {tuple(mod.unflattened_size)}) on rows {a.row}")
    return Act(a.name, a.layout, a.dims, (*mod.unflattened_size, *a.row[1:]))  # no node: lazy view


def flatten(a: Act, mod: nn.Flatten) -> Act:
    if mod.start_dim != 1 or mod.end_dim != -1:
        raise ExportError("only Flatten(start_dim=1, end_dim=-1) is supported")
    return Act(a.name, a.layout, a.dims, (a.width,))  # no node: lazy view
