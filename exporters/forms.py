"""Export forms of the neurons: what ``torch.onnx.export`` traces in place of a neuron's own forward.

A form is built from a neuron module (this project's psn.neurons or SpikingJelly's) with its exact
math and weights, and runs in one of two modes:

- full: x [T, N, *] -> spikes [T, N, *], one time-major sequence, with a graph whose size does not
  depend on T (PSN / masked PSN: one MatMul with W [T, T]; sliding PSN: the Toeplitz band sliced to the
  input length inside the graph; LIF / IF: a ``psn_serve::LIF`` node (``torch.onnx.ops.symbolic``)
  that exporters/onnx_rewrite.py replaces by an ONNX Scan over time);
- step: x [1, N, *] -> spikes [1, N, *], one timestep, reading ``state`` (set by the step wrapper) and
  leaving the new state in ``new_state``: the last k-1 inputs [N, k-1, *] (masked and sliding PSN, the
  masked PSN also reads the step index t [N] int64 from ``t``) or V [N, *] (LIF, IF).

Spikes are ``H >= θ`` written as ``W X >= −B`` (for IEEE floats ``fl(a + b) >= 0`` exactly when
``a >= −b``), as Θ(W X + B) in PyTorch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from exporters.errors import ExportError
from psn import neurons as P
from psn_runtime.manifest import NeuronKind

DOMAIN = "psn_serve"  # the custom ONNX domain of nodes that exporters/onnx_rewrite.py lowers


class Mode(Enum):
    FULL = "full"
    STEP = "step"
    IDENTITY = "identity"  # the time-locality check: the neuron passes its input through


@dataclass(frozen=True)
class NeuronInfo:
    """What the manifest and the wrappers need to know about one neuron layer."""

    kind: NeuronKind
    k: int | None = None
    T: int | None = None  # the fixed sequence length of a PSN / masked PSN

    @property
    def streams(self) -> bool:
        return self.kind.facts.streams

    @property
    def variable_length(self) -> bool:
        return self.kind.facts.variable_length


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).cpu().clone()


def _spike(h: torch.Tensor, neg_bias: torch.Tensor) -> torch.Tensor:
    return (h >= neg_bias).to(torch.float32)


class Form(nn.Module):
    info: NeuronInfo

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.mode = Mode.FULL
        self.state: torch.Tensor | None = None  # step mode: this layer's state in ([N, ...])
        self.t: torch.Tensor | None = None  # step mode: the step index [N] int64 (masked PSN)
        self.new_state: torch.Tensor | None = None  # step mode: the state out
        self.spikes: torch.Tensor | None = None  # the last output, for the checks' spike outputs
        self.exporting = False  # set while torch.onnx.export traces the network

    def initial_state(self, x_t: torch.Tensor) -> tuple[torch.Tensor, float]:
        """A zero-batch-agnostic example state for a step input x_t [N, *], and its init value."""
        raise NotImplementedError

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """H − θ for a full input x [T, N, *] (a spike where >= 0); the checks' tie tolerance reads it."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.IDENTITY:
            return x
        s = self.full(x) if self.mode is Mode.FULL else self.step(x)
        self.spikes = s
        return s

    def full(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MatrixForm(Form):
    """PSN (H = W X + B) and masked PSN at λ = 1 (H = (W ⊙ M_k) X + B): one MatMul over time."""

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor, k: int | None) -> None:
        super().__init__(name)
        T = weight.shape[0]
        kind = NeuronKind.PSN if k is None else NeuronKind.MASKED_PSN
        self.info = NeuronInfo(kind, k, T)
        if k is not None:
            weight = weight * P.masked_psn_mask(T, k, 1.0)
        self.register_buffer("w", _f32(weight))  # [T, T]
        self.register_buffer("neg_b", -_f32(bias).reshape(T, 1))  # [T, 1]
        if k is not None:
            t = torch.arange(T).unsqueeze(1)
            j = t - k + 1 + torch.arange(k).unsqueeze(0)  # [T, k]: the inputs step t reads
            band = torch.where(j >= 0, self.w.gather(1, j.clamp(min=0)), torch.zeros(()))
            self.register_buffer("band", band.reshape(T, 1, k))  # [T, 1, k]
            self.register_buffer("neg_b_t", self.neg_b.reshape(T, 1, 1))  # [T, 1, 1]

    def _check_T(self, x: torch.Tensor) -> None:
        if not self.exporting and x.shape[0] != self.info.T:
            raise ExportError(f"{self.name}: a {self.info.kind} of T={self.info.T} got {x.shape[0]} steps")

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        self._check_T(x)
        return (self.w @ x.flatten(1) - self.neg_b).view_as(x)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        self._check_T(x)
        h = torch.matmul(self.w, x.flatten(1))  # [T, T] x [T, N*D] -> [T, N*D]
        return _spike(h, self.neg_b).view_as(x)

    def initial_state(self, x_t: torch.Tensor) -> tuple[torch.Tensor, float]:
        return x_t.new_zeros((x_t.shape[0], self.info.k - 1, *x_t.shape[1:])), 0.0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.info.k is None:
            raise ExportError(f"{self.name}: a PSN has no step form (every H[t] reads all T inputs)")
        window = _window(self, x)  # [N, k, D]
        row = self.band[self.t]  # [N, 1, k]
        h = torch.matmul(row, window)  # [N, 1, k] x [N, k, D] -> [N, 1, D]
        return _spike(h, self.neg_b_t[self.t]).view_as(x)  # [1, N, *]


def _window(form: Form, x: torch.Tensor) -> torch.Tensor:
    """Step mode ring buffer: window = [state, x_t] [N, k, D]; the new state is window[:, 1:].

    Shapes are read from tensors inside the graph (flatten, view_as), never from ``.shape`` in Python:
    the TorchScript tracer may bake a traced size into a constant."""
    x_t = x[0]  # [N, *]
    window = torch.cat([form.state, x_t.unsqueeze(1)], 1)  # [N, k, *]
    form.new_state = window[:, 1:]
    return window.flatten(2)  # [N, k, D]


class SlidingForm(Form):
    """Sliding PSN: H[t] = Σ_i W_i X[t−k+1+i] + b, the Toeplitz band for T_max sliced to the input's T."""

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor, t_max: int) -> None:
        super().__init__(name)
        k = weight.shape[0]
        self.info = NeuronInfo(NeuronKind.SLIDING_PSN, k)
        self.register_buffer("toeplitz", P.sliding_toeplitz(_f32(weight), t_max))  # [T_max, T_max]
        self.register_buffer("w_row", _f32(weight).reshape(1, k))  # [1, k]
        self.register_buffer("neg_b", -_f32(bias).reshape(()))

    def _matrix(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]  # symbolic while exporting: a Slice of the [T_max, T_max] band in the graph
        return self.toeplitz[:t, :t]  # [T, T]

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return (self._matrix(x) @ x.flatten(1) - self.neg_b).view_as(x)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        a = self._matrix(x)  # [T, T]
        h = torch.matmul(a, x.flatten(1))  # [T, N*D]
        return _spike(h, self.neg_b).view_as(x)

    def initial_state(self, x_t: torch.Tensor) -> tuple[torch.Tensor, float]:
        return x_t.new_zeros((x_t.shape[0], self.info.k - 1, *x_t.shape[1:])), 0.0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        window = _window(self, x)  # [N, k, D]
        h = torch.matmul(self.w_row, window)  # [1, k] x [N, k, D] -> [N, 1, D]
        return _spike(h, self.neg_b).view_as(x)


@dataclass(frozen=True)
class LIFParams:
    """H = V + (X − (V − V_r))/τ (decay_input), V − (V − V_r)/τ + X (not), or V + X (IF, tau None);
    S = H >= V_th; hard reset V = V_reset where S, soft V = H − V_th where S, none V = H."""

    tau: float | None
    decay_input: bool
    v_threshold: float
    v_reset: float | None  # None: soft reset (subtract V_th); charges against 0
    reset: P.ResetMode

    @property
    def v0(self) -> float:
        return 0.0 if self.v_reset is None or self.reset is not P.ResetMode.HARD else float(self.v_reset)


def lif_update(x: torch.Tensor, v: torch.Tensor, p: LIFParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step with SpikingJelly's float expressions: (spikes, new V)."""
    v_r = 0.0 if p.v_reset is None else p.v_reset
    if p.tau is None:
        h = v + x
    elif p.decay_input:
        h = v + (x - (v - v_r)) / p.tau
    else:
        h = v - (v - v_r) / p.tau + x
    fire = h >= p.v_threshold
    if p.reset is P.ResetMode.HARD:
        v_new = torch.where(fire, torch.full_like(h, v_r), h)
    elif p.reset is P.ResetMode.SOFT:
        v_new = torch.where(fire, h - p.v_threshold, h)
    else:
        v_new = h
    return fire.to(torch.float32), v_new


def _lif_loop(x: torch.Tensor, params: LIFParams) -> torch.Tensor:
    """Full-sequence LIF / IF in PyTorch: x [T, N, *] -> spikes [T, N, *]."""
    v = torch.full_like(x[0], params.v0)
    out = []
    for t in range(x.shape[0]):
        s, v = lif_update(x[t], v, params)
        out.append(s)
    return torch.stack(out)


class LIFForm(Form):
    def __init__(self, name: str, kind: NeuronKind, params: LIFParams) -> None:
        super().__init__(name)
        self.info = NeuronInfo(kind)
        self.params = params

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.full_like(x[0], self.params.v0)
        out = []
        for t in range(x.shape[0]):
            v_r = 0.0 if self.params.v_reset is None else self.params.v_reset
            p = self.params
            h = v + x[t] if p.tau is None else (
                v + (x[t] - (v - v_r)) / p.tau if p.decay_input else v - (v - v_r) / p.tau + x[t]
            )  # fmt: skip
            out.append(h - p.v_threshold)
            _, v = lif_update(x[t], v, p)
        return torch.stack(out)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exporting:
            return _lif_loop(x, self.params)
        p = self.params
        attrs = {
            "tau": -1.0 if p.tau is None else float(p.tau),
            "decay_input": int(p.decay_input),
            "v_threshold": float(p.v_threshold),
            "v_reset": 0.0 if p.v_reset is None else float(p.v_reset),
            "reset": p.reset.value,
        }
        # one psn_serve::LIF node, replaced by an ONNX Scan over time in exporters/onnx_rewrite.py
        return torch.onnx.ops.symbolic(f"{DOMAIN}::LIF", (x,), attrs, dtype=x.dtype, shape=x.shape, version=1)

    def initial_state(self, x_t: torch.Tensor) -> tuple[torch.Tensor, float]:
        return torch.full_like(x_t, self.params.v0), self.params.v0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        s, self.new_state = lif_update(x[0], self.state, self.params)
        return s.unsqueeze(0)


# ------------------------------------------------------------------------------------- recognition


def _sj():
    """SpikingJelly's modules, when it has been imported (a network built from it imports it first)."""
    if "spikingjelly.activation_based.neuron" not in sys.modules:
        return None
    from spikingjelly.activation_based import base, neuron

    return neuron, base


def _refuse(name: str, module: nn.Module, why: str) -> ExportError:
    return ExportError(f"neuron layer {name!r} ({type(module).__name__}): {why}")


def _masked_lambda_one(name: str, module: nn.Module, lam: float) -> None:
    if lam != 1.0:
        raise _refuse(
            name,
            module,
            f"a masked PSN at λ = {lam:g} is not causal; only λ = 1 is exportable (train until the λ "
            "schedule reaches 1, or set λ to 1 if that is intended)",
        )


def form_of(name: str, m: nn.Module, t_max: int) -> Form | None:
    """The export form of neuron module ``m`` (None when ``m`` is not a neuron)."""
    if isinstance(m, P.MaskedPSN):
        _masked_lambda_one(name, m, float(m.lam))
        return MatrixForm(name, m.weight, m.bias, m.k)
    if isinstance(m, P.PSN):
        return MatrixForm(name, m.weight, m.bias, None)
    if isinstance(m, P.SlidingPSN):
        return SlidingForm(name, m.weight, m.bias, t_max)
    if isinstance(m, P.LIF):
        return LIFForm(name, NeuronKind.LIF, LIFParams(m.tau, True, m.v_threshold, 0.0, m.reset))
    sj = _sj()
    if sj is None:
        return None
    neuron, base = sj
    if isinstance(m, neuron.PSN):
        return MatrixForm(name, m.weight, m.bias, None)
    stepping = (neuron.MaskedPSN, neuron.SlidingPSN, neuron.LIFNode, neuron.IFNode)
    if isinstance(m, stepping) and getattr(m, "step_mode", "m") != "m":
        raise _refuse(
            name,
            m,
            f"step_mode={m.step_mode!r}; the network must be multi-step ('m'): build it with "
            "step_mode='m' or call spikingjelly.activation_based.functional.set_step_mode(net, 'm')",
        )
    if isinstance(m, neuron.MaskedPSN):
        _masked_lambda_one(name, m, float(m.lambda_))
        return MatrixForm(name, m.weight, m.bias, m.k)
    if isinstance(m, neuron.SlidingPSN):
        return SlidingForm(name, m.weight, m.bias, t_max)
    if type(m) in (neuron.LIFNode, neuron.IFNode):
        if not getattr(m.surrogate_function, "spiking", True):
            raise _refuse(name, m, "its surrogate function is not spiking (spiking=False)")
        v_reset = None if m.v_reset is None else float(m.v_reset)
        reset = P.ResetMode.SOFT if v_reset is None else P.ResetMode.HARD
        if isinstance(m, neuron.LIFNode):
            tau = float(m.tau)
            params = LIFParams(tau, bool(m.decay_input), float(m.v_threshold), v_reset, reset)
            return LIFForm(name, NeuronKind.LIF, params)
        params = LIFParams(None, False, float(m.v_threshold), v_reset, reset)
        return LIFForm(name, NeuronKind.IF, params)
    if isinstance(m, base.MemoryModule) and not _stateless_in_eval(m):
        raise _refuse(
            name,
            m,
            "not a supported neuron (supported: PSN, MaskedPSN at λ = 1, SlidingPSN, LIFNode, IFNode; "
            "this project's psn.neurons PSN, MaskedPSN, SlidingPSN, LIF)",
        )
    return None


def _stateless_in_eval(m: nn.Module) -> bool:
    """SpikingJelly modules that derive from MemoryModule but keep nothing across steps in eval mode:
    containers holding no memory of their own, and dropout (its mask is drawn only in training)."""
    from spikingjelly.activation_based import layer

    dropouts = tuple(getattr(layer, n) for n in ("Dropout", "Dropout2d") if hasattr(layer, n))
    if isinstance(m, dropouts):
        return True
    return not getattr(m, "_memories", {}) and any(True for _ in m.children())
