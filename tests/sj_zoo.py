"""SpikingJelly 2.0's own model zoo (``spikingjelly.activation_based.model``) as a user brings it to
``psn export --module tests/sj_zoo.py:NAME``: each function builds one network in multi-step mode for a
CIFAR-sized input [3, 32, 32] (no arguments, as ``--module`` wants), and ``calibrate`` gives it random
weights whose batch-norm statistics make every neuron layer fire."""

from __future__ import annotations

import functools

import torch
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import parametric_lif_net, sew_resnet, spiking_resnet, spiking_vgg
from torch import nn

T = 4  # time steps of the fixed-length networks (PSN, masked PSN) and of the checks
SHAPE = (3, 32, 32)
CLASSES = 10


def _multi_step(net: nn.Module) -> nn.Module:
    functional.set_step_mode(net, "m")  # the zoo passes step_mode to some blocks only
    return net.eval()


def spiking_resnet18_if() -> nn.Module:
    return _multi_step(spiking_resnet.spiking_resnet18(spiking_neuron=neuron.IFNode, num_classes=CLASSES))


def sew_resnet18_add_lif() -> nn.Module:
    net = sew_resnet.sew_resnet18(spiking_neuron=neuron.LIFNode, cnf="ADD", num_classes=CLASSES)
    return _multi_step(net)


def sew_resnet18_add_sliding_psn() -> nn.Module:
    sliding = functools.partial(neuron.SlidingPSN, k=2)
    return _multi_step(sew_resnet.sew_resnet18(spiking_neuron=sliding, cnf="ADD", num_classes=CLASSES))


def spiking_vgg11_bn_psn() -> nn.Module:
    return _multi_step(spiking_vgg.spiking_vgg11_bn(spiking_neuron=functools.partial(neuron.PSN, T=T)))


def cifar10net_plif() -> nn.Module:
    return _multi_step(parametric_lif_net.CIFAR10Net(channels=8, spiking_neuron=neuron.ParametricLIFNode))


def cifar10net_lif_soft() -> nn.Module:
    net = parametric_lif_net.CIFAR10Net(channels=8, spiking_neuron=neuron.LIFNode, v_reset=None)
    return _multi_step(net)


def cifar10net_masked_psn() -> nn.Module:
    masked = functools.partial(neuron.MaskedPSN, k=2, T=T)
    net = _multi_step(parametric_lif_net.CIFAR10Net(channels=8, spiking_neuron=masked))
    for m in net.modules():
        if isinstance(m, neuron.MaskedPSN):
            m.lambda_ = 1.0  # the end of progressive masking: causal, streams
    return net


def calibrate(net: nn.Module, seed: int = 0, n: int = 16) -> nn.Module:
    """Random weights (the builders' own init, seeded by the caller) with every BatchNorm's statistics
    taken from one standard-normal batch x [T, n, 3, 32, 32] and its affine parameters drawn so that
    the neurons fire; then each Linear (in order) rescaled so that its outputs on x have mean ~0.5 and
    standard deviation ~1 per feature (a fully connected layer on sparse spikes would never reach the
    threshold). Returns the network in eval mode."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, n, *SHAPE, generator=g)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in net.modules():  # PSN thresholds (B = -1 at init fires rarely) and sliding weights
            if isinstance(m, neuron.PSN | neuron.MaskedPSN):
                m.bias.uniform_(-0.6, 0.2, generator=g)
            elif isinstance(m, neuron.SlidingPSN):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.uniform_(-0.3, 0.3, generator=g)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # one batch sets the statistics exactly
            m.weight.uniform_(0.8, 1.6, generator=g)
            m.bias.normal_(0.4, 0.4, generator=g)
        net.train()
        _forward(net, x)
        net.eval()
        seen: dict[nn.Module, torch.Tensor] = {}
        for linear in [m for m in net.modules() if isinstance(m, nn.Linear)]:
            hook = linear.register_forward_hook(lambda mod, _i, out: seen.__setitem__(mod, out))
            try:
                _forward(net, x)
            finally:
                hook.remove()
            out = seen[linear].flatten(0, -2)  # [T * n, F]
            scale = 1.0 / out.std(0).clamp(min=1e-3)  # [F]
            linear.weight.mul_(scale.unsqueeze(1))
            linear.bias.sub_(out.mean(0)).mul_(scale).add_(0.5)
    return net


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(net)
    try:
        return net(x)
    finally:
        functional.reset_net(net)
