"""What the ``neurons`` suite times: LIF baselines (τ = 2, V_th = 1, hard reset, as ``psn.neurons.LIF``) in
the best plain-PyTorch forms we could write (inference: eager, one TorchScript loop, ``torch.compile`` of
the loop; training: autograd per step, hand-written BPTT in TorchScript or ``torch.compile``'d steps), PSN
inference forms and an ONNX Runtime PSN layer. All give ``psn.neurons.LIF``'s spikes and input gradient."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

TAU = 2.0
V_TH = 1.0
ALPHA = 2.0  # the arctan surrogate's α, as psn.neurons uses by default

# ------------------------------------------------------------------------------------------ LIF inference


def _script(fn: Callable[..., Any]) -> Any:
    """torch.jit.script without its deprecation warning (torch 2.13 deprecates TorchScript; it still works,
    and the scripted loop is one of the baseline forms on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(fn)


@_script
def lif_forward_script(x: Tensor, tau: Tensor, v_th: float) -> Tensor:
    """Spikes [T, N] of LIF over x [T, N]; tau is a 0-d tensor (addcdiv keeps v + (x - v)/tau exact)."""
    out = torch.empty_like(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        v.addcdiv_(x[t] - v, tau)  # H = V + (X - V) / tau
        spike = v >= v_th
        out[t].copy_(spike)
        v.masked_fill_(spike, 0.0)  # hard reset: V = H (1 - S)
    return out


def lif_forward_loop(x: Tensor, tau: float, v_th: float) -> Tensor:
    """The same loop written for torch.compile (which fuses all steps into one kernel)."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / tau
        s = (h >= v_th).to(x.dtype)
        out.append(s)
        v = h * (1.0 - s)
    return torch.stack(out)  # [T, N]


# ------------------------------------------------------------------------------------------- LIF training


# One neuron for both the LIF baselines and the memory suite's fused IF: H = V + (X - leak V) / tau
# (LIF: leak 1, tau 2; IF: leak 0, tau 1), S = Θ(H - V_th), V = H (1 - S) (reset not detached).


@_script
def _bptt_forward(x: Tensor, leak: float, tau: float, v_th: float) -> tuple[Tensor, Tensor]:
    """Spikes and membrane H [T, N]; H is all the backward needs."""
    spikes = torch.empty_like(x)
    h = torch.empty_like(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        ht = h[t]
        torch.sub(x[t], v, alpha=leak, out=ht)
        ht.div_(tau).add_(v)  # H = (X - leak V) / tau + V
        spike = ht >= v_th
        spikes[t].copy_(spike)
        v = ht.masked_fill(spike, 0.0)
    return spikes, h


@_script
def _bptt_backward(grad_s: Tensor, h: Tensor, leak: float, tau: float, v_th: float, alpha: float) -> Tensor:
    """dL/dX from dL/dS through the neuron above."""
    grad_x = torch.empty_like(h)
    grad_v = torch.zeros_like(h[0])
    k = math.pi / 2.0 * alpha
    for t in range(h.shape[0] - 1, -1, -1):
        ht = h[t]
        u = ht - v_th
        sg = (alpha / 2.0) / (1.0 + (k * u) ** 2)
        grad_h = (grad_s[t] - grad_v * ht) * sg + grad_v * (u < 0)
        grad_x[t] = grad_h / tau
        grad_v = grad_h * (1.0 - leak / tau)
    return grad_x


def _forward_step(
    x_t: Tensor, v: Tensor, leak: float, tau: float, v_th: float
) -> tuple[Tensor, Tensor, Tensor]:
    h = v + (x_t - leak * v) / tau
    s = (h >= v_th).to(h.dtype)
    return s, h, h * (1.0 - s)


def _backward_step(
    grad_s: Tensor, h: Tensor, grad_v: Tensor, leak: float, tau: float, v_th: float, alpha: float
) -> tuple[Tensor, Tensor]:
    u = h - v_th
    sg = (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * u) ** 2)
    grad_h = (grad_s - grad_v * h) * sg + grad_v * (u < 0).to(h.dtype)
    return grad_h / tau, grad_h * (1.0 - leak / tau)


@functools.cache
def _compiled_steps() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """torch.compile'd single steps (dynamic shapes: one compilation serves every N)."""
    return torch.compile(_forward_step, dynamic=True), torch.compile(_backward_step, dynamic=True)


def _compiled_forward(x: Tensor, leak: float, tau: float, v_th: float) -> tuple[Tensor, Tensor]:
    step, _ = _compiled_steps()
    v = torch.zeros_like(x[0])
    spikes, hs = [], []
    for t in range(x.shape[0]):
        s, h, v = step(x[t], v, leak, tau, v_th)
        spikes.append(s)
        hs.append(h)
    return torch.stack(spikes), torch.stack(hs)  # [T, N] each


def _compiled_backward(
    grad_s: Tensor, h: Tensor, leak: float, tau: float, v_th: float, alpha: float
) -> Tensor:
    _, step = _compiled_steps()
    grad_v = torch.zeros_like(h[0])
    grads: list[Tensor] = []
    for t in range(h.shape[0] - 1, -1, -1):
        g, grad_v = step(grad_s[t], h[t], grad_v, leak, tau, v_th, alpha)
        grads.append(g)
    return torch.stack(grads[::-1])  # [T, N]


class LIFBPTT(torch.autograd.Function):
    """Multi-step LIF (or IF: leak 0, tau 1) with hand-written BPTT; saves only H [T, ...] for the backward
    (the layout of SpikingJelly's CUDA kernels, which save h_seq)."""

    @staticmethod
    def forward(ctx, x: Tensor, compiled: bool, leak: float, tau: float) -> Tensor:  # type: ignore[override]
        run = _compiled_forward if compiled else _bptt_forward
        spikes, h = run(x, leak, tau, V_TH)
        ctx.save_for_backward(h)
        ctx.compiled = compiled
        ctx.leak = leak
        ctx.tau = tau
        return spikes

    @staticmethod
    def backward(ctx, grad_s: Tensor):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        run = _compiled_backward if ctx.compiled else _bptt_backward
        return run(grad_s.contiguous(), h, ctx.leak, ctx.tau, V_TH, ALPHA), None, None, None


def lif_bptt(x: Tensor, compiled: bool = False, leak: float = 1.0, tau: float = TAU) -> Tensor:
    return LIFBPTT.apply(x, compiled, leak, tau)


# -------------------------------------------------------------------------------------- PSN inference forms


def psn_inplace(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """PSN inference with the threshold applied in place: H = addmm(B, W, X); S = (H >= 0) into H."""
    return torch.addmm(bias.unsqueeze(1), weight, x).ge_(0)  # [T, N]


def psn_blocked(weight: Tensor, bias: Tensor, x: Tensor, block_bytes: int = 1 << 20) -> Tensor:
    """PSN inference in column blocks small enough that H stays in cache between the product and Θ."""
    T, N = x.shape
    out = torch.empty_like(x)
    cols = max(256, block_bytes // (4 * T))
    b = bias.unsqueeze(1)  # [T, 1]
    for start in range(0, N, cols):
        o = out[:, start : start + cols]  # [T, cols]
        torch.addmm(b, weight, x[:, start : start + cols], out=o)
        o.ge_(0)
    return out


# ------------------------------------------------------------------------------------- ONNX Runtime layer


def psn_onnx_model(weight: np.ndarray, bias: np.ndarray, opset: int = 17) -> bytes:
    """A PSN layer as ONNX: S = Cast(GreaterOrEqual(MatMul(W, X) + B, 0)), X [T, M] -> S [T, M]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    T = weight.shape[0]
    inits = [
        numpy_helper.from_array(weight.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32).reshape(T, 1), "B"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("MatMul", ["W", "x"], ["wx"]),
        helper.make_node("Add", ["wx", "B"], ["h"]),
        helper.make_node("GreaterOrEqual", ["h", "zero"], ["fired"]),
        helper.make_node("Cast", ["fired"], ["s"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "psn_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "M"])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [T, "M"])],
        initializer=inits,
    )
    # IR 9 (onnx 1.15): onnx may write a newer IR than the installed onnxruntime reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OrtPSN:
    """An ONNX Runtime session for the PSN layer, run with IO binding on torch tensors (no copies)."""

    def __init__(self, weight: Tensor, bias: Tensor, device: torch.device, threads: int) -> None:
        import onnxruntime as ort

        if device.type == "cuda":
            if hasattr(ort, "preload_dlls"):
                with contextlib.suppress(Exception):  # CUDA libraries may come from a system install
                    ort.preload_dlls()
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider here")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = psn_onnx_model(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())
        self.session = ort.InferenceSession(model, opts, providers=providers)
        self.provider = self.session.get_providers()[0]
        if device.type == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime fell back to {self.provider} instead of CUDA")
        self.device = device

    def bind(self, x: Tensor, out: Tensor) -> Callable[[], Tensor]:
        """A no-argument function that runs the layer on x into out (both contiguous float32 [T, M])."""
        if (
            not (x.is_contiguous() and out.is_contiguous())
            or x.dtype != torch.float32
            or out.shape != x.shape
        ):
            raise ValueError("OrtPSN.bind needs contiguous float32 x and out of the same shape")
        binding = self.session.io_binding()
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = self.device.index or 0
        binding.bind_input("x", kind, index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output("s", kind, index, np.float32, list(out.shape), out.data_ptr())

        def run() -> Tensor:
            self.session.run_with_iobinding(binding)
            return out  # the closure keeps x and out alive while ONNX Runtime holds their pointers

        run.keepalive = (x, out)  # type: ignore[attr-defined]

        return run
