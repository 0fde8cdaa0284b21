"""Sequence classifier: time-local layers (Conv1d or Linear over the feature axis, BatchNorm, pooling),
each block followed by a neuron that mixes over time. Logits come out per step; the decision is their
mean over time.

The network is a flat ``nn.Sequential`` of time-local modules and neurons so that the exporter can walk
it layer by layer. Time-local modules see ``[T*N, ...]``; neurons see ``[T, N, ...]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import torch
from torch import nn

from psn.neurons import LIF, PSN, MaskedPSN, NeuronKind, ResetMode, SlidingPSN, make_neuron

NEURON_TYPES = (PSN, MaskedPSN, SlidingPSN, LIF)


class Arch(StrEnum):
    CONV = "conv"  # Conv1d over the feature axis of each timestep (the paper's sequential-CIFAR net)
    MLP = "mlp"  # Linear over the feature axis of each timestep


@dataclass
class NetConfig:
    T: int
    features: int
    classes: int
    kind: NeuronKind
    k: int | None = None
    arch: Arch = Arch.CONV
    channels: int = 32
    depth: int = 2
    hidden: int = 128
    lif_reset: ResetMode = ResetMode.HARD
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = NeuronKind(self.kind)
        self.arch = Arch(self.arch)
        self.lif_reset = ResetMode(self.lif_reset)
        if not self.labels:
            self.labels = [str(i) for i in range(self.classes)]
        if NeuronKind(self.kind).facts.order:
            if self.k is None:
                raise ValueError(f"{self.kind} needs k")
            if not 2 <= self.k <= self.T:
                raise ValueError(f"k must be in [2, T={self.T}], got {self.k}")
        elif self.kind is NeuronKind.PSN:
            self.k = None
        if self.depth < 1 or self.channels < 1 or self.hidden < 1:
            raise ValueError("depth, channels and hidden must be >= 1")
        if len(self.labels) != self.classes:
            raise ValueError(f"{len(self.labels)} labels for {self.classes} classes")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        return cls(**json.loads(text))

    @classmethod
    def load(cls, path: Path) -> NetConfig:
        return cls.from_json(Path(path).read_text())


class SeqClassifier(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []

        def neuron() -> nn.Module:
            return make_neuron(cfg.kind, cfg.T, cfg.k, reset=cfg.lif_reset)

        if cfg.arch is Arch.CONV:
            c_in, length = 1, cfg.features
            layers.append(nn.Unflatten(1, (1, cfg.features)))  # [TN, F] -> [TN, 1, F]
            for i in range(cfg.depth):
                layers += [
                    nn.Conv1d(c_in, cfg.channels, 3, padding=1, bias=False),
                    nn.BatchNorm1d(cfg.channels),
                    neuron(),
                ]
                c_in = cfg.channels
                if i >= cfg.depth - 2 and length >= 4:  # pool after the last two blocks
                    layers.append(nn.AvgPool1d(2))
                    length //= 2
            layers.append(nn.Flatten())  # [TN, C*L]
            width = cfg.channels * length
        else:
            width = cfg.features
            for _ in range(cfg.depth - 1):
                layers += [nn.Linear(width, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden), neuron()]
                width = cfg.hidden
        layers += [nn.Linear(width, cfg.hidden, bias=False), nn.BatchNorm1d(cfg.hidden), neuron()]
        layers.append(nn.Linear(cfg.hidden, cfg.classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, N, F] -> per-step logits [T, N, classes]."""
        T, N = x.shape[:2]
        h = x.reshape(T * N, -1)  # [TN, F]
        for layer in self.layers:
            if isinstance(layer, NEURON_TYPES):
                h = layer(h.reshape(T, N, *h.shape[1:])).reshape(T * N, *h.shape[1:])  # [T, N, *] -> [TN, *]
            else:
                h = layer(h)
        return h.reshape(T, N, -1)  # [T, N, classes]

    def neurons(self) -> list[nn.Module]:
        return [m for m in self.layers if isinstance(m, NEURON_TYPES)]

    def set_lambda(self, lam: float) -> None:
        for m in self.neurons():
            if isinstance(m, MaskedPSN):
                m.set_lambda(lam)

    def initial_state(self, x_t: torch.Tensor) -> list:
        """States of every neuron layer for a batch whose first step is x_t [N, F]."""
        states = []
        h = x_t
        with torch.no_grad():
            for layer in self.layers:
                if isinstance(layer, NEURON_TYPES):
                    states.append(layer.initial_state(h))
                else:
                    h = layer(h)
        return states

    def step(self, x_t: torch.Tensor, states: list) -> tuple[torch.Tensor | None, list]:
        """One timestep [N, F] -> (logits [N, classes] or None for PSN before step T-1, new states).

        Pure: the given states are not modified. For a PSN network the logits of all T steps come out
        of the last step, [T, N, classes].
        """
        h: torch.Tensor | None = x_t
        new_states = []
        it = iter(states)
        for idx, layer in enumerate(self.layers):
            if isinstance(layer, NEURON_TYPES):
                out, st = layer.step(h, next(it))
                new_states.append(st)
                if out is None:  # PSN: nothing until all T inputs are in
                    return None, new_states + list(it)
                if isinstance(layer, PSN) and not isinstance(layer, MaskedPSN):
                    # the PSN layer answered all T steps at once: finish the net over [T, N, *]
                    T, N = out.shape[:2]
                    rest = nn.Sequential(*list(self.layers)[idx + 1 :])
                    return self._finish(rest, out.reshape(T * N, *out.shape[2:]), T, N), new_states + list(it)
                h = out
            else:
                h = layer(h)
        return h, new_states

    @staticmethod
    def _finish(rest: nn.Sequential, h: torch.Tensor, T: int, N: int) -> torch.Tensor:
        for layer in rest:
            if isinstance(layer, NEURON_TYPES):
                h = layer(h.reshape(T, N, *h.shape[1:])).reshape(T * N, *h.shape[1:])
            else:
                h = layer(h)
        return h.reshape(T, N, -1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
