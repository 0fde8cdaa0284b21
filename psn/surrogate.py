"""Heaviside step with the arctan surrogate gradient (as SpikingJelly's ``surrogate.ATan``)."""

from __future__ import annotations

import math

import torch


class ATanHeaviside(torch.autograd.Function):
    """Forward: Θ(x) = 1 for x >= 0 else 0. Backward: α / (2 (1 + (π α x / 2)²))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = alpha / (2.0 * (1.0 + (math.pi / 2.0 * alpha * x) ** 2))
        return grad_out * grad, None


def heaviside(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Spike function: exact Heaviside forward, arctan surrogate backward."""
    return ATanHeaviside.apply(x, alpha)
