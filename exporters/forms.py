"""Export forms of the neurons: what ``torch.onnx.export`` traces in place of a neuron's own forward.

A form is built from a neuron module (this project's psn.neurons, SpikingJelly's, or a module that
gives its own through ``export_form(name)``: exporters/sources/ for snnTorch and NIR) with its exact
math and weights, and runs in one of two modes:

- full: x [T, N, *] -> out [T, N, *], one time-major sequence, with a graph whose size does not
  depend on T (PSN / masked PSN: one MatMul with W [T, T]; sliding PSN: the Toeplitz band sliced to the
  input length inside the graph; a state-space neuron (LIF, IF, CubaLIF, LI...: a cell of
  exporters/cells.py, ``step(x_t, *states) -> (out, new states)`` with per-neuron parameters): one ONNX
  Scan over time whose body is that step);
- step: x [1, N, *] -> out [1, N, *], one timestep, reading ``state`` (a tuple, set by the step wrapper)
  and leaving the new states in ``new_state``: the last k-1 inputs [N, k-1, *] (masked and sliding PSN,
  the masked PSN also reads the step index t [N] int64 from ``t``) or the cell's states [N, *] each.

``out`` is what the next layer reads: the spikes, or a membrane (a non-spiking LI, a snnTorch network
read out by its membrane); ``spikes`` holds the 0/1 spikes the checks compare (None: no spikes).
PSN spikes are ``H >= θ`` written as ``W X >= −B`` (for IEEE floats ``fl(a + b) >= 0`` exactly when
``a >= −b``), as Θ(W X + B) in PyTorch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from exporters.cells import Cell, SJLIFCell, Step
from exporters.errors import ExportError
from exporters.onnx_rewrite import CELL_OP, DOMAIN
from psn import neurons as P
from psn_runtime.manifest import NeuronKind


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

    @property
    def spiking(self) -> bool:
        return self.kind.facts.spikes


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
        self.state: tuple[torch.Tensor, ...] | None = None  # step mode: this layer's states in ([N, ...])
        self.t: torch.Tensor | None = None  # step mode: the step index [N] int64 (masked PSN)
        self.new_state: tuple[torch.Tensor, ...] | None = None  # step mode: the states out
        self.spikes: torch.Tensor | None = None  # the last 0/1 spikes, for the checks' spike outputs
        self.exporting = False  # set while torch.onnx.export traces the network

    @property
    def spiking(self) -> bool:
        return self.info.spiking

    def initial_states(self, x_t: torch.Tensor) -> list[tuple[str, torch.Tensor, float]]:
        """Per state: a label, an example value for a step input x_t [N, *] and its init value."""
        raise NotImplementedError

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """H − θ for a full input x [T, N, *] (a spike where >= 0); the checks' tie tolerance reads it."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is Mode.IDENTITY:
            return x
        return self.full(x) if self.mode is Mode.FULL else self.step(x)

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
        self.spikes = _spike(h, self.neg_b).view_as(x)
        return self.spikes

    def initial_states(self, x_t: torch.Tensor) -> list[tuple[str, torch.Tensor, float]]:
        return _window_state(self, x_t)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.info.k is None:
            raise ExportError(f"{self.name}: a PSN has no step form (every H[t] reads all T inputs)")
        window = _window(self, x)  # [N, k, D]
        row = self.band[self.t]  # [N, 1, k]
        h = torch.matmul(row, window)  # [N, 1, k] x [N, k, D] -> [N, 1, D]
        self.spikes = _spike(h, self.neg_b_t[self.t]).view_as(x)  # [1, N, *]
        return self.spikes


def _window_state(form: Form, x_t: torch.Tensor) -> list[tuple[str, torch.Tensor, float]]:
    """The ring buffer of the last k-1 inputs [N, k-1, *], all 0 at the start."""
    return [("inputs", x_t.new_zeros((x_t.shape[0], form.info.k - 1, *x_t.shape[1:])), 0.0)]


def _window(form: Form, x: torch.Tensor) -> torch.Tensor:
    """Step mode ring buffer: window = [state, x_t] [N, k, D]; the new state is window[:, 1:].

    Shapes are read from tensors inside the graph (flatten, view_as), never from ``.shape`` in Python:
    the TorchScript tracer may bake a traced size into a constant."""
    x_t = x[0]  # [N, *]
    window = torch.cat([form.state[0], x_t.unsqueeze(1)], 1)  # [N, k, *]
    form.new_state = (window[:, 1:],)
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
        self.spikes = _spike(h, self.neg_b).view_as(x)
        return self.spikes

    def initial_states(self, x_t: torch.Tensor) -> list[tuple[str, torch.Tensor, float]]:
        return _window_state(self, x_t)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        window = _window(self, x)  # [N, k, D]
        h = torch.matmul(self.w_row, window)  # [1, k] x [N, k, D] -> [N, 1, D]
        self.spikes = _spike(h, self.neg_b).view_as(x)
        return self.spikes


class CellForm(Form):
    """A neuron given as a step function (exporters/cells.py): a Python loop over time eagerly; while
    exporting, one ``psn_serve::Cell`` node that exporters/onnx_rewrite.py replaces by an ONNX Scan over
    time whose body is the cell (the graph does not grow with T); the cell itself in step mode, with one
    state per ``cell.states``."""

    def __init__(self, name: str, cell: Cell) -> None:
        super().__init__(name)
        self.cell = cell
        self.info = NeuronInfo(cell.kind)
        self.step_shape: tuple[int, ...] | None = None  # per-sample step input shape, seen eagerly
        self.separate_spikes = False  # the output is not the spikes (a membrane, graded spikes)

    def _init(self, x_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.full_like(x_t, v) for v in self.cell.init())

    def initial_states(self, x_t: torch.Tensor) -> list[tuple[str, torch.Tensor, float]]:
        return [
            (label, torch.full_like(x_t, v), v)
            for label, v in zip(self.cell.states, self.cell.init(), strict=True)
        ]

    def _loop(self, x: torch.Tensor) -> list[Step]:
        self.cell.check_shape(x[0], self.name)
        self.step_shape = tuple(x.shape[2:])
        states, steps = self._init(x[0]), []
        for t in range(x.shape[0]):
            steps.append(self.cell(x[t], *states))
            states = steps[-1].states
        self.separate_spikes = steps[0].spikes is not None and steps[0].spikes is not steps[0].out
        return steps

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.margin for s in self._loop(x)])

    def full(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exporting:
            steps = self._loop(x)
            self.spikes = torch.stack([s.spikes for s in steps]) if self.spiking else None
            return torch.stack([s.out for s in steps])

        if self.step_shape is None:
            raise ExportError(f"{self.name}: run the network eagerly once before exporting it")
        op, attrs = f"{DOMAIN}::{CELL_OP}", {"layer": self.name}
        if self.separate_spikes:
            out, spikes = torch.onnx.ops.symbolic_multi_out(
                op, (x,), attrs, dtypes=[x.dtype] * 2, shapes=[x.shape] * 2, version=1
            )
        else:
            out = spikes = torch.onnx.ops.symbolic(op, (x,), attrs, dtype=x.dtype, shape=x.shape, version=1)
        self.spikes = spikes if self.spiking else None
        return out  # [T, N, *]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        st = self.cell(x[0], *self.state)
        self.new_state = st.states
        self.spikes = None if st.spikes is None else st.spikes.unsqueeze(0)
        return st.out.unsqueeze(0)


def lif_form(
    name: str, kind: NeuronKind, tau, decay_input: bool, v_threshold, v_reset, reset, q=None
) -> CellForm:
    """SpikingJelly's LIFNode / IFNode (tau None) / ParametricLIFNode (q = sigmoid(w)) and psn.neurons.LIF."""
    return CellForm(name, SJLIFCell(kind, tau, decay_input, v_threshold, v_reset, reset, q))


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
    export_form = getattr(m, "export_form", None)
    if callable(export_form):  # a module that knows its own form (exporters/sources/snntorch.py)
        return export_form(name)
    if isinstance(m, CellForm):  # a network built from the forms themselves (exporters/sources/nir.py)
        return CellForm(name, m.cell)
    if type(m).__module__.split(".")[0] == "snntorch":
        from exporters.sources.snntorch import refusal

        raise refusal(name, m) or _refuse(
            name,
            m,
            "a snnTorch neuron: export the network with exporters.sources.snntorch.from_snntorch "
            "(psn export --module does)",
        )
    psn = _psn_form(name, m, t_max, P, "lam")
    if psn is not None:
        return psn
    if isinstance(m, P.LIF):
        return lif_form(name, NeuronKind.LIF, m.tau, True, m.v_threshold, 0.0, m.reset)
    sj = _sj()
    if sj is None:
        return None
    neuron, base = sj
    lifs = (neuron.LIFNode, neuron.IFNode, neuron.ParametricLIFNode)
    stepping = (neuron.MaskedPSN, neuron.SlidingPSN, *lifs)
    if isinstance(m, stepping) and getattr(m, "step_mode", "m") != "m":
        raise _refuse(
            name,
            m,
            f"step_mode={m.step_mode!r}; the network must be multi-step ('m'): build it with "
            "step_mode='m' or call spikingjelly.activation_based.functional.set_step_mode(net, 'm')",
        )
    psn = _psn_form(name, m, t_max, neuron, "lambda_")
    if psn is not None:
        return psn
    if type(m) in lifs:
        if not getattr(m.surrogate_function, "spiking", True):
            raise _refuse(name, m, "its surrogate function is not spiking (spiking=False)")
        v_reset = None if m.v_reset is None else float(m.v_reset)
        reset = P.ResetMode.SOFT if v_reset is None else P.ResetMode.HARD
        if isinstance(m, neuron.ParametricLIFNode):  # a LIF whose 1/τ = sigmoid(w) was learned
            q = m.w.detach().float().sigmoid()
            return lif_form(name, NeuronKind.LIF, None, bool(m.decay_input), m.v_threshold, v_reset, reset, q)
        if isinstance(m, neuron.LIFNode):
            return lif_form(
                name, NeuronKind.LIF, float(m.tau), bool(m.decay_input), m.v_threshold, v_reset, reset
            )
        return lif_form(name, NeuronKind.IF, None, False, m.v_threshold, v_reset, reset)
    if isinstance(m, base.MemoryModule) and not _stateless_in_eval(m):
        raise _refuse(
            name,
            m,
            "not a supported neuron (supported: PSN, MaskedPSN at λ = 1, SlidingPSN, LIFNode, "
            "ParametricLIFNode, IFNode; this project's psn.neurons PSN, MaskedPSN, SlidingPSN, LIF)",
        )
    return None


def _psn_form(name: str, m: nn.Module, t_max: int, family: Any, lam: str) -> Form | None:
    """The form of a PSN, masked PSN (λ in attribute ``lam``) or sliding PSN of ``family`` (psn.neurons or
    SpikingJelly's neuron module: their parameters have the same names and shapes); None for another
    module."""
    if isinstance(m, family.MaskedPSN):  # before PSN: psn.neurons' MaskedPSN is one
        _masked_lambda_one(name, m, float(getattr(m, lam)))
        return MatrixForm(name, m.weight, m.bias, m.k)
    if isinstance(m, family.PSN):
        return MatrixForm(name, m.weight, m.bias, None)
    if isinstance(m, family.SlidingPSN):
        return SlidingForm(name, m.weight, m.bias, t_max)
    return None


def _stateless_in_eval(m: nn.Module) -> bool:
    """SpikingJelly modules that derive from MemoryModule but keep nothing across steps in eval mode:
    containers holding no memory of their own, and dropout (its mask is drawn only in training)."""
    from spikingjelly.activation_based import layer

    dropouts = tuple(getattr(layer, n) for n in ("Dropout", "Dropout2d") if hasattr(layer, n))
    if isinstance(m, dropouts):
        return True
    return not getattr(m, "_memories", {}) and any(True for _ in m.children())
