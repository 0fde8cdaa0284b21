"""Networks in the multi-step convention ``x [T, N, *shape] -> per-step logits [T, N, classes]``.

These are the paper's kinds of network, built from this project's neurons and ordinary PyTorch layers
the way a user would build their own (and the way SpikingJelly does: time-local layers see ``[T*N, ...]``
through :class:`TimeLocal`, like ``layer.SeqToANNContainer``; neurons see ``[T, N, ...]``):

- :func:`mnist2d_sliding_psn`: the trained model that ships in ``models/mnist2d-sliding-psn``: MNIST
  digits as static images repeated over T = 4 (the paper's direct encoding), per step ``[1, 28, 28]``,
  Conv2d-BN-neuron blocks, pooling and a classifier; sliding PSN (k = 2), so it streams.
- :func:`scifar_psn`: sequential CIFAR (one image column per step, ``[3, 32]``, T = 32), Conv1d over
  the column's 32 pixels, PSN (full-only).
- :func:`cifar_vgg_psn`: a small VGG-style net on static ``[3, 32, 32]`` images, T = 4, PSN.
- :func:`dvs_sliding_lif`: event frames ``[2, 64, 64]``, T = 10, sliding PSN and LIF mixed; streams.

Each of these four takes no arguments and returns the module, so that
``psn export --module psn/zoo.py:scifar_psn ...`` can build it. The widths of the last three are small
(they are examples and test subjects, with random weights); the builders take the widths as arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from psn.neurons import LIF, PSN, MaskedPSN, NeuronKind, SlidingPSN, make_neuron

NEURON_TYPES = (PSN, MaskedPSN, SlidingPSN, LIF)
MNIST_LABELS = [str(i) for i in range(10)]


class TimeLocal(nn.Module):
    """Applies layers to every timestep alone: ``[T, N, *] -> [T*N, *] -> layers -> [T, N, *out]``."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x.flatten(0, 1))  # [T*N, *]
        return y.view(x.shape[0], x.shape[1], *y.shape[1:])  # [T, N, *out]


class SpikingNet(nn.Module):
    """A stack of time-local blocks and neurons; ``forward(x [T, N, *shape]) -> logits [T, N, classes]``."""

    def __init__(self, layers: list[nn.Module], T: int, input_shape: tuple[int, ...], labels: list[str]):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.T = T
        self.input_shape = tuple(input_shape)
        self.labels = list(labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"expected x [T, N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}"
            )
        return self.layers(x)

    def neurons(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, NEURON_TYPES)]

    def set_lambda(self, lam: float) -> None:
        for m in self.neurons():
            if isinstance(m, MaskedPSN):
                m.set_lambda(lam)

    def streams(self) -> bool:
        """True when every neuron is causal (masked PSN, sliding PSN, LIF): the net runs step by step."""
        return not any(type(m) is PSN for m in self.neurons())

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """One timestep x_t [N, *shape] -> (logits [N, classes], new states); ``states=None`` starts a
        sequence. Pure (the given states are not modified); for causal neurons only."""
        if not self.streams():
            raise ValueError("this network holds a PSN, which reads all T steps at once: it does not stream")
        h = x_t.unsqueeze(0)  # [1, N, *]: time-local layers see one step
        given = iter(states) if states is not None else None
        new_states = []
        for layer in self.layers:
            if isinstance(layer, NEURON_TYPES):
                state = next(given) if given is not None else layer.initial_state(h[0])
                s, state = layer.step(h[0], state)
                new_states.append(state)
                h = s.unsqueeze(0)
            else:
                h = layer(h)
        return h[0], new_states


def _conv2d_block(c_in: int, c_out: int, neuron: nn.Module, pool: bool) -> list[nn.Module]:
    block: list[nn.Module] = [
        TimeLocal(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)),
        neuron,
    ]
    if pool:
        block.append(TimeLocal(nn.MaxPool2d(2)))  # halves H and W
    return block


def mnist2d_net(
    kind: NeuronKind = NeuronKind.SLIDING_PSN,
    T: int = 4,
    k: int | None = 2,
    channels: int = 16,
    hidden: int = 128,
) -> SpikingNet:
    """Per step [1, 28, 28]: {Conv2d-BN-neuron-MaxPool} x 3 (c, 2c, 2c channels; 28 -> 14 -> 7 -> 3
    pixels), Linear-BN-neuron, Linear -> 10."""

    def neuron() -> nn.Module:
        return make_neuron(kind, T, k)

    layers = [
        *_conv2d_block(1, channels, neuron(), pool=True),  # [c, 14, 14]
        *_conv2d_block(channels, 2 * channels, neuron(), pool=True),  # [2c, 7, 7]
        *_conv2d_block(2 * channels, 2 * channels, neuron(), pool=True),  # [2c, 3, 3]
        TimeLocal(nn.Flatten(), nn.Linear(2 * channels * 9, hidden, bias=False), nn.BatchNorm1d(hidden)),
        neuron(),
        TimeLocal(nn.Linear(hidden, 10)),
    ]
    return SpikingNet(layers, T, (1, 28, 28), MNIST_LABELS)


def mnist2d_sliding_psn() -> SpikingNet:
    """The bundled, trained MNIST-2D model (models/mnist2d-sliding-psn): T = 4, sliding PSN k = 2."""
    return mnist2d_net(NeuronKind.SLIDING_PSN, T=4, k=2)


def scifar_net(channels: int = 16, hidden: int = 64, T: int = 32, classes: int = 10) -> SpikingNet:
    """Sequential CIFAR (the paper's net, narrower): per step one column [3, 32]; Conv1d over the column.

    {Conv1d-BN-PSN} x 2, AvgPool1d, {Conv1d-BN-PSN} x 2, AvgPool1d, Linear-PSN, Linear. The paper uses
    128 channels.
    """
    layers: list[nn.Module] = []
    c_in, length = 3, 32
    for _stage in range(2):
        for _ in range(2):
            layers += [
                TimeLocal(nn.Conv1d(c_in, channels, 3, padding=1, bias=False), nn.BatchNorm1d(channels)),
                PSN(T),
            ]
            c_in = channels
        layers.append(TimeLocal(nn.AvgPool1d(2)))
        length //= 2
    layers += [
        TimeLocal(nn.Flatten(), nn.Linear(channels * length, hidden, bias=False), nn.BatchNorm1d(hidden)),
        PSN(T),
        TimeLocal(nn.Linear(hidden, classes)),
    ]
    return SpikingNet(layers, T, (3, 32), [str(i) for i in range(classes)])


def scifar_psn() -> SpikingNet:
    """Sequential-CIFAR-style PSN network: x [32, N, 3, 32] -> logits [32, N, 10] (random weights)."""
    return scifar_net()


def cifar_vgg_net(widths: tuple[int, ...] = (16, 32, 32), T: int = 4, classes: int = 10) -> SpikingNet:
    """A small VGG-style 2-D conv net on static [3, 32, 32] images repeated over T, PSN neurons.

    {Conv2d-BN-PSN, MaxPool} per width (32 -> 16 -> 8 -> 4 pixels), then Flatten and a Linear classifier.
    The paper's static CIFAR-10 net uses 256 channels.
    """
    layers: list[nn.Module] = []
    c_in, side = 3, 32
    for c in widths:
        layers += _conv2d_block(c_in, c, PSN(T), pool=True)
        c_in, side = c, side // 2
    layers.append(TimeLocal(nn.Flatten(), nn.Linear(c_in * side * side, classes)))
    return SpikingNet(layers, T, (3, 32, 32), [str(i) for i in range(classes)])


def cifar_vgg_psn() -> SpikingNet:
    """Static-image VGG-style PSN network: x [4, N, 3, 32, 32] -> logits [4, N, 10] (random weights)."""
    return cifar_vgg_net()


def dvs_net(channels: int = 8, T: int = 10, k: int = 2, classes: int = 11) -> SpikingNet:
    """Event frames [2, 64, 64] (DVS128-Gesture-like, 11 classes): sliding PSN (k = 2, as the paper's
    CIFAR10-DVS net) and LIF mixed; every neuron is causal, so the network streams.

    {Conv2d-BN-sliding PSN, MaxPool}, {Conv2d-BN-LIF, MaxPool}, {Conv2d-BN-sliding PSN, MaxPool},
    Flatten, Linear-BN-LIF, Linear.
    """
    neurons = [SlidingPSN(k), LIF(), SlidingPSN(k)]
    layers: list[nn.Module] = []
    c_in, side = 2, 64
    for neuron in neurons:
        layers += _conv2d_block(c_in, channels, neuron, pool=True)
        c_in, side = channels, side // 2
    hidden = 4 * channels
    layers += [
        TimeLocal(nn.Flatten(), nn.Linear(c_in * side * side, hidden, bias=False), nn.BatchNorm1d(hidden)),
        LIF(),
        TimeLocal(nn.Linear(hidden, classes)),
    ]
    return SpikingNet(layers, T, (2, 64, 64), [str(i) for i in range(classes)])


def dvs_sliding_lif() -> SpikingNet:
    """Event-frame network (sliding PSN + LIF): x [10, N, 2, 64, 64] -> logits [10, N, 11]; streams."""
    return dvs_net()


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics from one batch x [T, N, *shape] (so that a randomly
    initialised network spikes at sensible rates instead of all or nothing); returns the model in eval."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()
