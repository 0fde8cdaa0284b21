"""The fused PSN-family layer (H recomputed in backward) gives the same spikes and gradients as the
plain autograd composition Θ(W X + B) with the arctan surrogate."""

import pytest
import torch

from psn.neurons import PSN, MaskedPSN, SlidingPSN, sliding_toeplitz
from psn.surrogate import heaviside


def _reference(neuron, x):
    if isinstance(neuron, SlidingPSN):
        w, b = sliding_toeplitz(neuron.weight, x.shape[0]), neuron.bias.expand(x.shape[0])
    else:
        w, b = neuron.effective_weight(), neuron.bias
    h = torch.addmm(b.unsqueeze(1), w, x.reshape(x.shape[0], -1)).view(x.shape)
    return heaviside(h, neuron.alpha)


@pytest.mark.parametrize("T,k", [(4, 2), (9, 3), (16, 16)])
@pytest.mark.parametrize("kind", ["psn", "masked", "sliding"])
def test_fused_matches_reference_forward_and_grads(kind, T, k):
    torch.manual_seed(T * 10 + k)
    neuron = {"psn": lambda: PSN(T), "masked": lambda: MaskedPSN(T, k), "sliding": lambda: SlidingPSN(k)}[
        kind
    ]()
    if kind == "masked":
        neuron.set_lambda(0.5)
    x = (torch.randn(T, 5, 3) * 2).requires_grad_()
    grad = torch.randn(T, 5, 3)

    s = neuron(x)
    gx, *gp = torch.autograd.grad(s, [x, *neuron.parameters()], grad)
    s_ref = _reference(neuron, x)
    gx_ref, *gp_ref = torch.autograd.grad(s_ref, [x, *neuron.parameters()], grad)

    assert torch.equal(s, s_ref)
    assert 0 < s.sum() < s.numel()  # some spikes, not all
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(gp, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert a.abs().sum() > 0
