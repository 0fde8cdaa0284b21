"""PSN-family neurons and the LIF baseline (Fang et al., NeurIPS 2023).

Every neuron takes time-major input ``[T, N, *]`` and returns spikes of the same shape. Each also has a
pure ``step(x_t, state) -> (s_t, new_state)`` that mutates nothing, and ``initial_state(x_t)`` for a
new sequence; running ``step`` over T steps equals ``forward`` (for PSN the spikes of all T steps come
out of the last step, since every H[t] reads every input).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

import torch
from torch import nn

from psn.surrogate import heaviside, parallel_spike
from psn_runtime.manifest import NeuronKind  # the one definition (the manifest's contract)


class ResetMode(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


class StepOutOfRange(IndexError):
    """A fixed-length neuron was stepped past its last timestep."""


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)  # [T, N*D]


class PSNState(NamedTuple):
    t: int
    inputs: tuple[torch.Tensor, ...]  # the inputs seen so far, each [N, *]


def _order(name: str, value: int) -> int:
    """A neuron's order (T or k), at least 1."""
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class _Parallel(nn.Module):
    """A neuron whose T steps are one product: H = A X + b (A [T, T] and b [T] from :meth:`matrix`),
    S = Θ(H) with the arctan surrogate's ``alpha``."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def matrix(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [T, T], b [T]) for a sequence of T steps."""
        raise NotImplementedError

    def membrane(self, x: torch.Tensor) -> torch.Tensor:
        """H for x of shape [T, N, *]."""
        a, b = self.matrix(x.shape[0])
        return torch.addmm(b.unsqueeze(1), a, _flat(x)).view(x.shape)  # [T, N*D] -> [T, N, *]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.matrix(x.shape[0])
        return parallel_spike(_flat(x), a, b, self.alpha).view(x.shape)


class PSN(_Parallel):
    """Parallel spiking neuron of order T: H = W X + B, S = Θ(H)."""

    def __init__(self, T: int, alpha: float = 2.0) -> None:
        super().__init__(alpha)
        self.T = _order("T", T)
        self.weight = nn.Parameter(torch.empty(T, T))
        self.bias = nn.Parameter(torch.full((T,), -1.0))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def matrix(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if T != self.T:
            raise ValueError(f"{type(self).__name__} expects T={self.T} steps, got {T}")
        return self.effective_weight(), self.bias

    def initial_state(self, x_t: torch.Tensor) -> PSNState:
        return PSNState(0, ())

    def step(self, x_t: torch.Tensor, state: PSNState) -> tuple[torch.Tensor | None, PSNState]:
        """Buffers inputs; returns None until step T-1, then the spikes of all T steps [T, N, *]."""
        if state.t >= self.T:
            raise StepOutOfRange(f"PSN of order T={self.T} cannot take step {state.t}")
        inputs = (*state.inputs, x_t)
        new_state = PSNState(state.t + 1, inputs)
        if new_state.t < self.T:
            return None, new_state
        return self.forward(torch.stack(inputs)), new_state


def masked_psn_mask(T: int, k: int, lam: float | torch.Tensor = 1.0) -> torch.Tensor:
    """M_k(λ) = λ M_k + (1 − λ) J, with M_k[i][j] = 1 iff j <= i <= j + k − 1."""
    i = torch.arange(T).unsqueeze(1)
    j = torch.arange(T).unsqueeze(0)
    m = ((j <= i) & (i <= j + k - 1)).float()
    return lam * m + (1.0 - lam) * torch.ones(T, T)


def lambda_schedule(epoch: int, epochs: int) -> float:
    """The paper's progressive masking: λ = min(1, 8 · epoch / (epochs − 1))."""
    if epochs <= 1:
        return 1.0
    return min(1.0, 8.0 * epoch / (epochs - 1))


class MaskedState(NamedTuple):
    t: torch.Tensor  # [N] int64, the index of the next step
    buffer: torch.Tensor  # [k-1, N, *] the last k-1 inputs, oldest first


class MaskedPSN(PSN):
    """Masked PSN of order k: H = (W ⊙ M_k(λ)) X + B. Causal (streams) only at λ = 1."""

    def __init__(self, T: int, k: int, alpha: float = 2.0) -> None:
        super().__init__(T, alpha)
        if not 1 <= k <= T:
            raise ValueError(f"k must be in [1, T={T}], got {k}")
        self.k = k
        self.register_buffer("lam", torch.tensor(0.0))
        self.register_buffer("mask_k", masked_psn_mask(T, k, 1.0), persistent=False)

    def set_lambda(self, lam: float) -> None:
        self.lam.fill_(float(lam))

    def effective_weight(self) -> torch.Tensor:
        mask = self.lam * self.mask_k + (1.0 - self.lam)
        return self.weight * mask

    def band(self) -> torch.Tensor:
        """[T, k]: band[t, i] = W[t, t-k+1+i] (0 where t-k+1+i < 0), the weights one step reads."""
        t = torch.arange(self.T).unsqueeze(1)
        j = t - self.k + 1 + torch.arange(self.k).unsqueeze(0)  # [T, k]
        w = self.weight.gather(1, j.clamp(min=0))
        return torch.where(j >= 0, w, torch.zeros_like(w))

    def initial_state(self, x_t: torch.Tensor) -> MaskedState:  # type: ignore[override]
        n = x_t.shape[0]
        return MaskedState(torch.zeros(n, dtype=torch.long), x_t.new_zeros((self.k - 1, *x_t.shape)))

    def step(self, x_t: torch.Tensor, state: MaskedState) -> tuple[torch.Tensor, MaskedState]:  # type: ignore[override]
        if float(self.lam) != 1.0:
            raise ValueError(f"masked PSN streams only at λ = 1 (non-causal at λ = {float(self.lam)})")
        if int(state.t.max()) >= self.T:
            raise StepOutOfRange(f"masked PSN of T={self.T} cannot take step {int(state.t.max())}")
        window = torch.cat([state.buffer, x_t.unsqueeze(0)])  # [k, N, *]
        w = self.band()[state.t]  # [N, k]
        flat = window.reshape(self.k, x_t.shape[0], -1)  # [k, N, D]
        h = torch.einsum("nk,knd->nd", w, flat) + self.bias[state.t].unsqueeze(1)  # [N, D]
        s = heaviside(h.view(x_t.shape), self.alpha)
        return s, MaskedState(state.t + 1, window[1:])


def sliding_toeplitz(weight: torch.Tensor, T: int) -> torch.Tensor:
    """Banded Toeplitz A[i][j] = W_{k-1-i+j} for i+1-k <= j <= i, else 0; built with tensor ops."""
    k = weight.shape[0]
    i = torch.arange(T, device=weight.device).unsqueeze(1)
    j = torch.arange(T, device=weight.device).unsqueeze(0)
    idx = k - 1 - i + j  # [T, T]
    valid = (idx >= 0) & (idx < k)
    return torch.where(valid, weight[idx.clamp(0, k - 1)], weight.new_zeros(()))


class SlidingPSN(_Parallel):
    """Sliding PSN of order k: H[t] = Σ_i W_i X[t−k+1+i] + b; weights shared over time, any length."""

    def __init__(self, k: int, alpha: float = 2.0) -> None:
        super().__init__(alpha)
        self.k = _order("k", k)
        self.weight = nn.Parameter(torch.pow(2.0, torch.arange(k, dtype=torch.float32) - k + 1))
        self.bias = nn.Parameter(torch.tensor(-1.0))

    def matrix(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sliding_toeplitz(self.weight, T), self.bias.expand(T)  # [T, T], [T]

    def initial_state(self, x_t: torch.Tensor) -> torch.Tensor:
        return x_t.new_zeros((self.k - 1, *x_t.shape))  # [k-1, N, *]

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.cat([state, x_t.unsqueeze(0)])  # [k, N, *]
        h = torch.tensordot(self.weight, window, dims=1) + self.bias
        return heaviside(h, self.alpha), window[1:]


class LIF(nn.Module):
    """LIF baseline (SpikingJelly's LIFNode, decay_input): H = V + (X − V)/τ, S = Θ(H − V_th)."""

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        reset: ResetMode = ResetMode.HARD,
        alpha: float = 2.0,
    ) -> None:
        super().__init__()
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1, got {tau}")
        self.tau = tau
        self.v_threshold = v_threshold
        self.reset = ResetMode(reset)
        self.alpha = alpha

    def initial_state(self, x_t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)

    def step(self, x_t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = v + (x_t - v) / self.tau
        s = heaviside(h - self.v_threshold, self.alpha)
        if self.reset is ResetMode.HARD:
            v_new = h * (1.0 - s)
        elif self.reset is ResetMode.SOFT:
            v_new = h - s * self.v_threshold
        else:
            v_new = h
        return s, v_new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.initial_state(x[0])
        out = []
        for t in range(x.shape[0]):
            s, v = self.step(x[t], v)
            out.append(s)
        return torch.stack(out)


def make_neuron(kind: NeuronKind, T: int, k: int | None = None, **lif_kwargs) -> nn.Module:
    kind = NeuronKind(kind)
    if kind is NeuronKind.PSN:
        return PSN(T)
    if kind.facts.order and k is None:
        raise ValueError(f"{kind} needs an order k")
    if kind is NeuronKind.MASKED_PSN:
        return MaskedPSN(T, k)
    if kind is NeuronKind.SLIDING_PSN:
        return SlidingPSN(k)
    if kind is NeuronKind.LIF:
        return LIF(**lif_kwargs)
    raise ValueError(f"psn.neurons has no {kind} neuron (IF networks come from SpikingJelly)")
