"""Small untrained-but-randomized networks for the export and runtime tests (test-only: not shipped).

A fresh model is a poor parity test: BatchNorm's running statistics are 0/1 and most neurons never fire,
so the logits are the last layer's bias whatever the graph does. ``tiny_model`` randomizes the
BatchNorm statistics and affine parameters and the neuron biases so that every layer fires on a good
share of steps for standard-normal inputs, and sets a masked PSN's λ to 1.
"""

from __future__ import annotations

import torch
from torch import nn

from psn.network import Arch, NetConfig, SeqClassifier
from psn.neurons import PSN, NeuronKind, SlidingPSN


def randomize(model: SeqClassifier, seed: int = 0) -> SeqClassifier:
    g = torch.Generator().manual_seed(seed)
    lif = model.cfg.kind is NeuronKind.LIF
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(1.0, 2.0, generator=g) if lif else m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.8 if lif else 0.0, 0.5, generator=g)
            elif isinstance(m, PSN):  # PSN and masked PSN: B per step
                m.bias.uniform_(-0.5, 0.5, generator=g)
            elif isinstance(m, SlidingPSN):
                m.weight.copy_(torch.randn(m.k, generator=g))
                m.bias.uniform_(-0.3, 0.3, generator=g)
    model.set_lambda(1.0)
    return model.eval()


def tiny_model(
    kind: NeuronKind | str,
    T: int,
    k: int | None = None,
    arch: Arch | str = Arch.CONV,
    *,
    features: int = 8,
    classes: int = 5,
    seed: int = 0,
) -> SeqClassifier:
    """A 2-block network (channels=4, hidden=16), randomized as described above, in eval mode."""
    torch.manual_seed(seed)  # torch's own init of the weights, reproducible
    cfg = NetConfig(
        T=T, features=features, classes=classes, kind=kind, k=k, arch=arch, channels=4, depth=2, hidden=16
    )
    return randomize(SeqClassifier(cfg), seed)


# ------------------------------------------------------------------ networks beyond SeqClassifier


class PerStep(nn.Sequential):
    """Time-local layers applied to every step: [T, N, *] -> flatten(0, 1) -> layers -> [T, N, *]
    (as SpikingJelly's SeqToANNContainer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def make_neuron(kind: str, T: int, k: int = 2, source: str = "psn") -> nn.Module:
    """A neuron of ``kind`` (psn, masked_psn, sliding_psn, lif, lif_soft, if, plif) from this project's
    psn.neurons (source "psn") or SpikingJelly (source "sj"), multi-step, masked PSN at λ = 1."""
    from psn import neurons as P

    if source == "psn":
        if kind == "psn":
            return P.PSN(T)
        if kind == "masked_psn":
            m = P.MaskedPSN(T, k)
            m.set_lambda(1.0)
            return m
        if kind == "sliding_psn":
            return P.SlidingPSN(k)
        if kind in ("lif", "lif_soft"):
            return P.LIF(tau=2.0, v_threshold=0.5, reset="soft" if kind == "lif_soft" else "hard")
        raise ValueError(f"psn.neurons has no {kind}")
    from spikingjelly.activation_based import neuron

    if kind == "psn":
        return neuron.PSN(T=T)
    if kind == "masked_psn":
        m = neuron.MaskedPSN(k=k, T=T, step_mode="m")
        m.lambda_ = 1.0
        return m
    if kind == "sliding_psn":
        return neuron.SlidingPSN(k=k, step_mode="m")
    if kind == "lif":
        return neuron.LIFNode(tau=2.0, v_threshold=0.5, step_mode="m")
    if kind == "lif_soft":  # soft reset, input not decayed
        return neuron.LIFNode(tau=3.0, decay_input=False, v_threshold=0.5, v_reset=None, step_mode="m")
    if kind == "if":
        return neuron.IFNode(v_threshold=0.5, v_reset=-0.1, step_mode="m")
    if kind == "plif":  # ParametricLIFNode, its learned 1/τ = sigmoid(w): soft reset, no input decay
        m = neuron.ParametricLIFNode(
            init_tau=3.0, decay_input=False, v_threshold=0.5, v_reset=None, step_mode="m"
        )
        m.w.data.fill_(-0.4)  # τ = 1 + e^0.4, not the init value
        return m
    raise ValueError(f"no neuron kind {kind}")


def tiny_net(kinds: tuple[str, str], rank: int, T: int, source: str = "psn", seed: int = 0) -> nn.Module:
    """A two-neuron-layer network on a per-step input of ``rank`` dims (1: [6] Linear + BatchNorm1d;
    2: [2, 8] Conv1d + BatchNorm1d + AvgPool1d; 3: [2, 6, 6] Conv2d + BatchNorm2d + MaxPool2d), then
    Flatten, Linear, the second neuron, Linear to 3 classes. Randomized so that the neurons fire."""
    torch.manual_seed(seed)
    if rank == 1:
        front = [nn.Linear(6, 12), nn.BatchNorm1d(12)]
        after = [nn.Dropout(0.5), nn.Flatten()]
        width = 12
    elif rank == 2:
        front = [nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4)]
        after = [nn.AvgPool1d(2), nn.Flatten()]
        width = 4 * 4
    elif rank == 3:
        front = [nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)]
        after = [nn.MaxPool2d(2), nn.Flatten()]
        width = 4 * 3 * 3
    else:
        raise ValueError(f"rank {rank}")
    net = nn.Sequential(
        PerStep(*front),
        make_neuron(kinds[0], T, 2, source),
        PerStep(*after, nn.Linear(width, 10), nn.ReLU()),
        make_neuron(kinds[1], T, 3, source),
        PerStep(nn.Linear(10, 3)),
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = net[2][-2]  # the Linear in front of the second neuron: inputs of order 1
        hidden.weight.mul_(2.0)
        hidden.bias.uniform_(0.0, 1.0, generator=g)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.bias.normal_(0.5, 0.3, generator=g)
            elif hasattr(m, "bias") and getattr(m, "T", None) is not None and m.bias.numel() == m.T:
                m.bias.uniform_(-0.5, 0.3, generator=g)  # PSN / masked PSN thresholds
            elif (
                hasattr(m, "k")
                and isinstance(getattr(m, "weight", None), torch.Tensor)
                and m.weight.ndim == 1
            ):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))  # sliding PSN
                m.bias.uniform_(-0.3, 0.3, generator=g)
    return net.eval()


INPUT_SHAPES = {1: (6,), 2: (2, 8), 3: (2, 6, 6)}
