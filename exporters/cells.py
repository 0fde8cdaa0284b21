"""Neuron dynamics as pure step functions: ``cell(x_t, *states) -> Step(out, spikes, margin, states)``,
one timestep of one neuron layer, with each source's own float expressions and per-neuron parameters.

A parameter is a scalar or an array that broadcasts against the step input x_t [N, *D] without growing
it (one value per neuron [*D], per channel [C, 1, 1], ...). Every state has the shape of x_t and starts
at one value (``Cell.init``). exporters/forms.py runs a cell over a whole sequence (a Python loop
eagerly, ``torch._higher_order_ops.scan`` while exporting: one ONNX Scan over time) and for one step
(the step graph). The cells:

- ``SJLIFCell``: SpikingJelly's LIFNode / IFNode and psn.neurons.LIF; spike ``H >= V_th``.
- ``LeakyCell`` / ``SynapticCell``: snnTorch's Leaky / Synaptic (``init_hidden`` state, reset_mechanism
  subtract / zero / none, reset_delay on and off, graded spikes); spike ``mem − threshold > 0``.
- ``NIRCell``: NIR's LIF, IF, LI, I, CubaLIF, CubaLI by forward Euler at a given dt; spike
  ``v > v_threshold`` (docs/export.md writes out the equations).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from exporters.errors import ExportError
from psn.neurons import ResetMode
from psn_runtime.manifest import NeuronKind


class Step(NamedTuple):
    out: torch.Tensor  # what the next layer reads: the spikes, or a membrane (LI, a mem readout)
    spikes: torch.Tensor | None  # 0/1 spikes, compared by the export checks; None: a non-spiking cell
    margin: torch.Tensor | None  # H − θ: spikes where it is above 0 (at 0 too for SpikingJelly's Θ)
    states: tuple[torch.Tensor, ...]


def param(value: float | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 copy of a scalar or per-neuron parameter, detached from any graph."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32).cpu().clone()
    return torch.as_tensor(np.asarray(value, dtype=np.float32)).clone()


class Cell(nn.Module):
    """One neuron layer's dynamics; its parameters are buffers (the exporter bakes them in)."""

    kind: NeuronKind
    states: tuple[str, ...] = ("v",)  # state labels, in the order forward takes and returns them

    @property
    def spiking(self) -> bool:
        return self.kind.facts.spikes

    def init(self) -> tuple[float, ...]:
        """The value every element of each state starts at."""
        return (0.0,) * len(self.states)

    def check_shape(self, x_t: torch.Tensor, name: str) -> None:
        """Every parameter broadcasts against x_t [N, *D] without growing it."""
        for pname, value in self.named_buffers():
            try:
                grown = torch.broadcast_shapes(value.shape, x_t.shape) != x_t.shape
            except RuntimeError:
                grown = True
            if grown:
                raise ExportError(
                    f"neuron layer {name!r}: parameter {pname} of shape {list(value.shape)} does not fit "
                    f"its input of shape {list(x_t.shape[1:])} per sample"
                )

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> Step:
        raise NotImplementedError


def _heaviside(u: torch.Tensor) -> torch.Tensor:
    """snnTorch's spike: ``(u > 0).float()``, u = mem − threshold."""
    return (u > 0).to(torch.float32)


# ------------------------------------------------------------------------------- SpikingJelly, psn LIF


class SJLIFCell(Cell):
    """H = V + (X − (V − V_r))/τ (decay_input), V − (V − V_r)/τ + X (not), or V + X (IF: tau None);
    S = H >= V_th; hard reset V = V_r where S, soft V = H − V_th where S, none V = H. V starts at V_r
    (hard reset) or 0. ParametricLIFNode gives ``q`` = sigmoid(w) = 1/τ instead of τ: H multiplies by q
    where a LIF divides by τ, SpikingJelly's own float expression for it."""

    def __init__(
        self,
        kind: NeuronKind,
        tau: float | torch.Tensor | None,
        decay_input: bool,
        v_threshold: float | torch.Tensor,
        v_reset: float | None,  # None: soft reset (subtract V_th); charges against 0
        reset: ResetMode,
        q: float | torch.Tensor | None = None,  # ParametricLIFNode's 1/τ (then tau is None)
    ) -> None:
        super().__init__()
        self.kind = kind
        self.decay_input = decay_input
        self.reset = reset
        self.v_r = 0.0 if v_reset is None else float(v_reset)
        self.has_tau = tau is not None
        self.has_q = q is not None
        if tau is not None:
            self.register_buffer("tau", param(tau))
        if q is not None:
            self.register_buffer("q", param(q))
        self.register_buffer("v_threshold", param(v_threshold))

    def init(self) -> tuple[float, ...]:
        return (self.v_r if self.reset is ResetMode.HARD else 0.0,)

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> Step:
        (v,) = states
        if self.has_q:
            h = v + (x - (v - self.v_r)) * self.q if self.decay_input else v - (v - self.v_r) * self.q + x
        elif not self.has_tau:
            h = v + x
        elif self.decay_input:
            h = v + (x - (v - self.v_r)) / self.tau
        else:
            h = v - (v - self.v_r) / self.tau + x
        fire = h >= self.v_threshold
        if self.reset is ResetMode.HARD:
            v_new = torch.where(fire, torch.full_like(h, self.v_r), h)
        elif self.reset is ResetMode.SOFT:
            v_new = torch.where(fire, h - self.v_threshold, h)
        else:
            v_new = h
        s = fire.to(torch.float32)
        return Step(s, s, h - self.v_threshold, (v_new,))


# ----------------------------------------------------------------------------------------- snnTorch


class SnnReset(Enum):
    """snnTorch's reset_mechanism."""

    SUBTRACT = "subtract"
    ZERO = "zero"
    NONE = "none"


class _SnnCell(Cell):
    """What snnTorch's Leaky and Synaptic share: threshold, reset, reset_delay, graded spikes, readout."""

    def __init__(
        self,
        threshold: torch.Tensor | float,
        reset: SnnReset,
        reset_delay: bool,
        graded: torch.Tensor | float,
        readout_mem: bool,
    ) -> None:
        super().__init__()
        self.reset = reset
        self.reset_delay = reset_delay
        self.readout_mem = readout_mem
        self.register_buffer("threshold", param(threshold))
        self.register_buffer("graded", param(graded))
        self.graded_one = bool((self.graded == 1).all())  # spk · 1 is spk: the graph skips the product

    def _fire(self, x_mem: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """snnTorch's fire and, without reset_delay, its immediate reset: (spikes, graded, margin, mem)."""
        margin = x_mem - self.threshold
        s = _heaviside(margin)
        spk = s if self.graded_one else s * self.graded
        mem = x_mem
        if not self.reset_delay:
            do_reset = (
                spk if self.graded_one else spk / self.graded
            ) - reset  # snnTorch: "avoid double reset"
            if self.reset is SnnReset.SUBTRACT:
                mem = mem - do_reset * self.threshold
            elif self.reset is SnnReset.ZERO:
                mem = mem - do_reset * mem
        return s, spk, margin, mem


class LeakyCell(_SnnCell):
    """snnTorch's Leaky (state mem): reset = Θ(mem − thr) of the state; subtract: mem = β·mem + x −
    reset·thr; zero: mem = β·((1 − reset)·mem) + x; none: mem = β·mem + x; spk = Θ(mem − thr)·graded,
    β clamped to [0, 1]."""

    kind = NeuronKind.LIF
    states = ("mem",)

    def __init__(self, beta: torch.Tensor | float, **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("beta", param(beta).clamp(0, 1))

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> Step:
        (mem,) = states
        reset = _heaviside(mem - self.threshold)
        if self.reset is SnnReset.SUBTRACT:
            mem = self.beta * mem + x - reset * self.threshold
        elif self.reset is SnnReset.ZERO:
            mem = self.beta * ((1 - reset) * mem) + x
        else:
            mem = self.beta * mem + x
        s, spk, margin, mem = self._fire(mem, reset)
        return Step(mem if self.readout_mem else spk, s, margin, (mem,))


class SynapticCell(_SnnCell):
    """snnTorch's Synaptic (states syn, mem): syn = α·syn + x, mem = β·mem + syn (the new syn);
    subtract: mem −= reset·thr; zero: mem −= mem·reset (syn is kept); none: no reset."""

    kind = NeuronKind.CUBA_LIF
    states = ("syn", "mem")

    def __init__(self, alpha: torch.Tensor | float, beta: torch.Tensor | float, **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("alpha", param(alpha).clamp(0, 1))
        self.register_buffer("beta", param(beta).clamp(0, 1))

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> Step:
        syn, mem = states
        reset = _heaviside(mem - self.threshold)
        syn = self.alpha * syn + x
        mem = self.beta * mem + syn
        if self.reset is SnnReset.SUBTRACT:
            mem = mem - reset * self.threshold
        elif self.reset is SnnReset.ZERO:
            mem = mem - mem * reset
        s, spk, margin, mem = self._fire(mem, reset)
        return Step(mem if self.readout_mem else spk, s, margin, (syn, mem))


# ---------------------------------------------------------------------------------------------- NIR


class NIRCell(Cell):
    """NIR's neurons by forward Euler at dt; every state starts at 0:

    - synaptic current (CubaLIF, CubaLI) first: ``i ← i + (dt/τ_syn)·(−i + w_in·x)``, then the membrane
      reads ``I = i`` (else ``I = x``);
    - membrane: ``v ← v + (dt/τ)·((v_leak − v) + r·I)`` (LIF, LI, CubaLIF, CubaLI) or ``v ← v + r·I``
      (IF, I);
    - spiking kinds: ``s = v > v_threshold``, then ``v ← v_reset`` where s; the output is s (else v).
    """

    def __init__(
        self,
        kind: NeuronKind,
        dt: float,
        r: np.ndarray,
        tau: np.ndarray | None = None,
        v_leak: np.ndarray | None = None,
        v_threshold: np.ndarray | None = None,
        v_reset: np.ndarray | None = None,
        tau_syn: np.ndarray | None = None,
        w_in: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.leaky = tau is not None
        self.synaptic = tau_syn is not None
        self.states = ("i", "v") if self.synaptic else ("v",)
        self.register_buffer("r", param(r))
        if self.leaky:
            self.register_buffer("k", param(dt / np.asarray(tau, dtype=np.float64)))  # dt/τ
            self.register_buffer("v_leak", param(v_leak))
        if self.spiking:
            self.register_buffer("v_threshold", param(v_threshold))
            self.register_buffer("v_reset", param(v_reset))
        if self.synaptic:
            self.register_buffer("k_syn", param(dt / np.asarray(tau_syn, dtype=np.float64)))  # dt/τ_syn
            self.register_buffer("w_in", param(w_in))

    def forward(self, x: torch.Tensor, *states: torch.Tensor) -> Step:
        if self.synaptic:
            i, v = states
            i = i + self.k_syn * (self.w_in * x - i)
            current = i
        else:
            (v,) = states
            current = x
        v = v + (self.k * ((self.v_leak - v) + self.r * current) if self.leaky else self.r * current)
        new = (i, v) if self.synaptic else (v,)
        if not self.spiking:
            return Step(v, None, None, new)
        fire = v > self.v_threshold
        v = torch.where(fire, self.v_reset, v)
        s = fire.to(torch.float32)
        return Step(s, s, new[-1] - self.v_threshold, (*new[:-1], v))
