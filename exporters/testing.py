"""Small untrained-but-randomized models for export tests and benchmarks.

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
