"""PSN-family neurons and LIF lowered to ONNX nodes, for the full graph and for the step graph.

Spikes are ``Cast(GreaterOrEqual(W X, -B))``: for IEEE floats ``fl(a + b) >= 0`` exactly when
``a >= -b``, so comparing against the negated bias is Θ(W X + B) without the Add node.
The spike tensor of neuron layer ``i`` is named ``spikes_<i>`` in both graphs (the checks read it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from exporters.errors import ExportError
from exporters.graph import FLOAT, GraphBuilder, value_info
from exporters.layers import Act, Layout, Lowering
from psn.neurons import LIF, PSN, MaskedPSN, ResetMode, SlidingPSN, sliding_toeplitz
from psn_runtime.manifest import StateSpec


def spikes_name(index: int) -> str:
    return f"spikes_{index}"


def state_names(index: int) -> tuple[str, str]:
    return f"state_{index}", f"state_{index}_out"


T_STATE, T_STATE_OUT = "t", "t_out"


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def check_causal(neuron: nn.Module) -> None:
    if isinstance(neuron, MaskedPSN) and float(neuron.lam) != 1.0:
        raise ExportError(
            f"masked PSN has λ = {float(neuron.lam):g}: only λ = 1 is causal and exportable "
            "(train until the λ schedule reaches 1, or call model.set_lambda(1.0) if that is intended)"
        )


def _spike(b: GraphBuilder, h: str, threshold: str, index: int) -> str:
    ge = b.op("GreaterOrEqual", [h, threshold])
    return b.op("Cast", [ge], out=spikes_name(index), to=FLOAT)


# ---------------------------------------------------------------------------------------------- full


def psn_full(low: Lowering, a: Act, neuron: PSN, index: int) -> Act:
    """PSN and masked PSN (λ = 1 baked into W ⊙ M_k): one MatMul of W [T, T] with X [N, T, D]."""
    check_causal(neuron)
    a = low.to_seq(a)
    w = low.b.const("psn_w", _f32(neuron.effective_weight()))  # [T, T]
    thr = low.b.const("psn_thr", -_f32(neuron.bias).reshape(-1, 1))  # [T, 1]
    h = low.b.op("MatMul", [w, a.name])  # [T, T] x [N, T, D] -> [N, T, D]
    return Act(_spike(low.b, h, thr, index), Layout.SEQ, a.dims, a.row)


def sliding_full(low: Lowering, a: Act, neuron: SlidingPSN, t_max: int, index: int) -> Act:
    """Sliding PSN: the causal Toeplitz matrix for T_max, sliced in-graph to [:T, :T] for the input's T."""
    a = low.to_seq(a)
    toeplitz = sliding_toeplitz(neuron.weight.detach(), t_max)  # [T_max, T_max]
    w = low.b.const("sliding_w", _f32(toeplitz))
    zeros = low.b.shape_const([0, 0])
    axes = low.b.shape_const([0, 1])
    w_t = low.b.op("Slice", [w, zeros, low.time_len(), axes])  # [T, T]
    h = low.b.op("MatMul", [w_t, a.name])  # [N, T, D]
    thr = low.b.scalar(-float(neuron.bias.detach()))
    return Act(_spike(low.b, h, thr, index), Layout.SEQ, a.dims, a.row)


def lif_update(
    b: GraphBuilder, x: str, v: str, lif: LIF, *, v_out: str | None = None, s_out: str | None = None
) -> tuple[str, str]:
    """One LIF step with torch's exact float ops: H = V + (X − V)/τ, S = [H >= V_th], reset."""
    d = b.op("Sub", [x, v])
    d = b.op("Div", [d, b.scalar(lif.tau)])
    h = b.op("Add", [v, d])
    vth = b.scalar(lif.v_threshold)
    ge = b.op("GreaterOrEqual", [h, vth])
    if lif.reset is ResetMode.HARD:
        v_new = b.op("Where", [ge, b.scalar(0.0), h], out=v_out)
    elif lif.reset is ResetMode.SOFT:
        v_new = b.op("Where", [ge, b.op("Sub", [h, vth]), h], out=v_out)
    else:
        v_new = b.op("Identity", [h], out=v_out) if v_out else h
    s = b.op("Cast", [ge], out=s_out, to=FLOAT)
    return s, v_new


def lif_full(low: Lowering, a: Act, lif: LIF, index: int) -> Act:
    """LIF as an ONNX Scan over the time axis of [N, T, D] (state V [N, D]): constant node count."""
    a = low.to_seq(a)
    width = a.width
    body = GraphBuilder(prefix=f"lif{index}_")
    v_in, x_t = body.reserve(f"lif{index}_v_in"), body.reserve(f"lif{index}_x_t")
    s, v_new = lif_update(body, x_t, v_in, lif, v_out=f"lif{index}_v_out", s_out=f"lif{index}_s_out")
    graph = body.graph(
        f"lif{index}_step",
        [value_info(v_in, FLOAT, ["N", width]), value_info(x_t, FLOAT, ["N", width])],
        [value_info(v_new, FLOAT, ["N", width]), value_info(s, FLOAT, ["N", width])],
    )
    zeros = low.b.const("lif_v0", np.zeros((1, width), dtype=np.float32), share=True)
    v0 = low.b.op("Expand", [zeros, low.batch_by_one()])  # [N, D]
    low.b.op(
        "Scan",
        [v0, a.name],
        outputs=[low.b.fresh("lif_v_last"), low.b.reserve(spikes_name(index))],
        body=graph,
        num_scan_inputs=1,
        scan_input_axes=[1],
        scan_output_axes=[1],
    )
    return Act(spikes_name(index), Layout.SEQ, a.dims, a.row)


def neuron_full(low: Lowering, a: Act, neuron: nn.Module, t_max: int, index: int) -> Act:
    if isinstance(neuron, PSN):  # PSN and MaskedPSN
        return psn_full(low, a, neuron, index)
    if isinstance(neuron, SlidingPSN):
        return sliding_full(low, a, neuron, t_max, index)
    if isinstance(neuron, LIF):
        return lif_full(low, a, neuron, index)
    raise ExportError(f"unsupported neuron {type(neuron).__name__}")


# ---------------------------------------------------------------------------------------------- step


def window_step(low: Lowering, a: Act, k: int, index: int) -> tuple[Act, str, StateSpec]:
    """The ring buffer of the last k−1 inputs: window = [state, x_t] [N, k, D], new state = window[:, 1:]."""
    a = low.to_seq(a)  # [N, 1, D]
    s_in, s_out = state_names(index)
    low.b.reserve(s_in)
    window = low.b.op("Concat", [s_in, a.name], axis=1)  # [N, k, D]
    starts, ends, axes = (low.b.shape_const([v]) for v in (1, k, 1))
    low.b.op("Slice", [window, starts, ends, axes], out=s_out)  # [N, k-1, D]
    spec = StateSpec(input=s_in, output=s_out, shape=(k - 1, a.width), dtype="float32", init=0.0)
    return a, window, spec


def neuron_step(low: Lowering, a: Act, neuron: nn.Module, index: int) -> tuple[Act, StateSpec]:
    """One step of a streaming neuron; the masked PSN reads the shared step index ``t`` [N] int64."""
    b = low.b
    if isinstance(neuron, MaskedPSN):
        check_causal(neuron)
        a, window, spec = window_step(low, a, neuron.k, index)
        band = b.const("masked_band", _f32(neuron.band()).reshape(neuron.T, 1, neuron.k))  # [T, 1, k]
        thr_table = b.const("masked_thr", -_f32(neuron.bias).reshape(neuron.T, 1, 1))  # [T, 1, 1]
        row = b.op("Gather", [band, T_STATE], axis=0)  # [N, 1, k]
        h = b.op("MatMul", [row, window])  # [N, 1, k] x [N, k, D] -> [N, 1, D]
        thr = b.op("Gather", [thr_table, T_STATE], axis=0)  # [N, 1, 1]
        return Act(_spike(b, h, thr, index), Layout.SEQ, a.dims, a.row), spec
    if isinstance(neuron, SlidingPSN):
        a, window, spec = window_step(low, a, neuron.k, index)
        w = b.const("sliding_w", _f32(neuron.weight).reshape(1, neuron.k))  # [1, k]
        h = b.op("MatMul", [w, window])  # [1, k] x [N, k, D] -> [N, 1, D]
        thr = b.scalar(-float(neuron.bias.detach()))
        return Act(_spike(b, h, thr, index), Layout.SEQ, a.dims, a.row), spec
    if isinstance(neuron, LIF):
        a = low.to_rows(a, (a.width,))  # [N, D]
        v_in, v_out = state_names(index)
        b.reserve(v_in)
        s, _ = lif_update(b, a.name, v_in, neuron, v_out=v_out, s_out=spikes_name(index))
        spec = StateSpec(input=v_in, output=v_out, shape=(a.width,), dtype="float32", init=0.0)
        return Act(s, Layout.ROWS, a.dims, a.row), spec
    raise ExportError(f"{type(neuron).__name__} has no step graph (a PSN needs all T inputs at once)")
