"""The network and the IF neurons of the ``memory`` suite (multi-step: every tensor is [T, N, ...])."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from psn.neurons import PSN
from psn.surrogate import heaviside

V_TH = 1.0
ALPHA = 2.0


class TimeDistributed(nn.Module):
    """Applies a per-step module to [T, N, ...] by folding time into the batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x.flatten(0, 1))  # [T*N, ...]
        return y.unflatten(0, x.shape[:2])  # [T, N, ...]


class IFNeuron(nn.Module):
    """IF, hard reset, autograd over each step (SpikingJelly's default torch backend does the same):
    H[t] = V[t-1] + X[t], S[t] = Θ(H[t] − V_th), V[t] = H[t] (1 − S[t])."""

    def forward(self, x: Tensor) -> Tensor:
        v = torch.zeros_like(x[0])
        spikes = []
        for t in range(x.shape[0]):
            h = v + x[t]
            s = heaviside(h - V_TH, ALPHA)
            v = h * (1.0 - s)
            spikes.append(s)
        return torch.stack(spikes)  # [T, N, ...]


class _IFMultiStep(torch.autograd.Function):
    """IF over all steps in one function with hand-written BPTT; keeps only H [T, ...] for the backward
    (the layout of SpikingJelly's CUDA kernels, which save h_seq)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        h = torch.empty_like(x)
        spikes = torch.empty_like(x)
        v = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            torch.add(v, x[t], out=h[t])
            fired = h[t] >= V_TH
            spikes[t] = fired
            v = h[t].masked_fill(fired, 0.0)
        ctx.save_for_backward(h)
        return spikes

    @staticmethod
    def backward(ctx, grad_s: Tensor):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        grad_x = torch.empty_like(h)
        grad_v = torch.zeros_like(h[0])
        k = torch.pi / 2.0 * ALPHA
        for t in range(h.shape[0] - 1, -1, -1):
            u = h[t] - V_TH
            sg = (ALPHA / 2.0) / (1.0 + (k * u) ** 2)
            grad_h = (grad_s[t] - grad_v * h[t]) * sg + grad_v * (u < 0)
            grad_x[t] = grad_h
            grad_v = grad_h
        return grad_x


class IFFused(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _IFMultiStep.apply(x)


def make_neuron(kind: str, T: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "if":
        return IFNeuron()
    if kind == "if_fused":
        return IFFused()
    if kind == "psn":
        return PSN(T, ALPHA)
    raise ValueError(f"unknown neuron kind {kind!r}")


def build_network(
    kind: str, T: int, channels: tuple[int, int], side: int, classes: int = 10
) -> nn.Sequential:
    """VGG-style: [conv-BN-neuron] ×2 (c1), max-pool, [conv-BN-neuron] ×2 (c2), max-pool, linear."""
    if side % 4:
        raise ValueError(f"the input side must be a multiple of 4, got {side}")
    c1, c2 = channels
    layers: list[nn.Module] = []
    c_in = 3
    for c_out, pool in ((c1, False), (c1, True), (c2, False), (c2, True)):
        layers += [
            TimeDistributed(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
            TimeDistributed(nn.BatchNorm2d(c_out)),
            make_neuron(kind, T),
        ]
        if pool:
            layers.append(TimeDistributed(nn.MaxPool2d(2)))
        c_in = c_out
    layers += [TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(c2 * (side // 4) ** 2, classes))]
    return nn.Sequential(*layers)


def hidden_state_numel(channels: tuple[int, int], side: int) -> int:
    """Neurons per sample per step: one hidden state of the whole network is this many floats."""
    c1, c2 = channels
    return 2 * c1 * side**2 + 2 * c2 * (side // 2) ** 2
