"""Prepare a user network for export: a deep copy in eval mode whose neurons run their export forms
(exporters/forms.py), found in execution order, and the checks that the network fits the contract:
``x [T, N, *input_shape] -> per-step logits [T, N, C]`` with every non-neuron layer time-local."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from exporters.errors import ExportError
from exporters.forms import Form, Mode, form_of


@dataclass
class Prepared:
    """The export copy of a network and its neuron layers' forms, in the order a forward calls them."""

    net: nn.Module
    forms: list[Form]
    input_shape: tuple[int, ...]
    T: int
    classes: int

    def set_mode(self, mode: Mode) -> None:
        for f in self.forms:
            f.mode = mode

    @property
    def spiking(self) -> list[Form]:
        """The neuron layers whose spikes the checks compare (an LI's membrane is not a spike)."""
        return [f for f in self.forms if f.spiking]

    @property
    def spiking_layers(self) -> int:
        return len(self.spiking)


def reset_states(module: nn.Module) -> None:
    """SpikingJelly's ``functional.reset_net``: clear every stateful module before a new sequence."""
    if "spikingjelly.activation_based.base" not in sys.modules:
        return
    from spikingjelly.activation_based import base

    for m in module.modules():
        if isinstance(m, base.MemoryModule):
            m.reset()


def _patch(module: nn.Module, form: Form) -> None:
    # object.__setattr__: an nn.Module attribute would otherwise be registered as a submodule
    object.__setattr__(module, "forward", form)


def run(net: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    reset_states(net)
    try:
        with torch.no_grad():
            y = net(x)
    except ExportError:
        raise
    except Exception as exc:  # any error of the user's network on a well-formed input
        raise ExportError(f"the network fails on {what} of shape {list(x.shape)}: {exc}") from exc
    finally:
        reset_states(net)
    if not isinstance(y, torch.Tensor):
        raise ExportError(f"the network must return one tensor [T, N, C], got {type(y).__name__}")
    return y


def _fold_batchnorm(net: nn.Module) -> None:
    """Fold eval-mode BatchNorm into the Linear / Conv right before it inside plain nn.Sequential
    containers (PyTorch's exporter folds Conv+BN itself, not Linear+BN)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    pairs = (
        (nn.Linear, nn.BatchNorm1d, fuse_linear_bn_eval),
        (nn.Conv1d, nn.BatchNorm1d, fuse_conv_bn_eval),
        (nn.Conv2d, nn.BatchNorm2d, fuse_conv_bn_eval),
    )
    for seq in net.modules():
        if type(seq) is not nn.Sequential:
            continue
        mods = list(seq)
        for i in range(len(mods) - 1):
            a, b = mods[i], mods[i + 1]
            for lin, bn, fuse in pairs:
                if type(a) is lin and type(b) is bn and b.track_running_stats and b.running_mean is not None:
                    if lin is nn.Linear and a.out_features != b.num_features:
                        continue
                    seq[i] = fuse(a, b)
                    seq[i + 1] = nn.Identity()
                    mods[i + 1] = seq[i + 1]


class _PoolAsMatMul(nn.Module):
    """AvgPool1d (kernel = stride, no padding) on a fixed length L as a MatMul with the [L, L // k]
    pooling matrix: ONNX Runtime's CPU AveragePool is slow on short rows."""

    def __init__(self, length: int, k: int) -> None:
        super().__init__()
        out = length // k
        i = torch.arange(length).unsqueeze(1)  # [L, 1]
        j = torch.arange(out).unsqueeze(0)  # [1, L // k]
        self.register_buffer("pool", ((i // k == j) & (i < out * k)).float() / k)  # [L, L // k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.pool)  # [B, C, L] x [L, L // k] -> [B, C, L // k]


def _plain_avgpool1d(m: nn.Module) -> bool:
    if type(m) is not nn.AvgPool1d or m.ceil_mode:
        return False
    k, stride, pad = m.kernel_size[0], (m.stride or m.kernel_size)[0], m.padding[0]
    return k == stride and pad == 0


def _replace(net: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in net.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def prepare(module: nn.Module, input_shape: tuple[int, ...], T: int) -> Prepared:
    """A deep copy of ``module`` ready to trace, with its forms in execution order; raises ExportError
    for a network that has no neuron, calls a neuron twice, or does not return [T, N, C]."""
    if T < 1 or not input_shape or any(d < 1 for d in input_shape):
        raise ExportError(f"bad input shape: T={T}, per-step shape {list(input_shape)}")
    net = copy.deepcopy(module).eval()
    forms: dict[str, Form] = {}
    for name, m in net.named_modules():
        if any(name.startswith(f"{outer}.") for outer in forms):
            continue  # inside a neuron layer that has its form (the snnTorch neuron in its wrapper)
        form = form_of(name or type(m).__name__, m, T)
        if form is not None:
            forms[name] = form
            _patch(m, form)
    if not forms:
        raise ExportError("the network has no neuron layer the exporter knows (see docs/export.md)")
    _fold_batchnorm(net)
    order: list[Form] = []
    hooks = [f.register_forward_hook(lambda mod, inp, out: order.append(mod)) for f in forms.values()]
    pools: dict[nn.Module, set[int]] = {}
    for m in net.modules():
        if _plain_avgpool1d(m):
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, inp: pools.setdefault(mod, set()).add(inp[0].shape[-1])
                )
            )
    try:
        x = torch.randn(T, 2, *input_shape)
        y = run(net, x, "an input")
    finally:
        for h in hooks:
            h.remove()
    for pool, lengths in pools.items():
        if len(lengths) == 1:  # one input length (a module used once, or always on the same length)
            _replace(net, pool, _PoolAsMatMul(lengths.pop(), pool.kernel_size[0]))
    if y.ndim != 3 or tuple(y.shape[:2]) != (T, 2):
        raise ExportError(
            f"the network must map x [T, N, *shape] to per-step logits [T, N, C]; for x {list(x.shape)} "
            f"it returned {list(y.shape)}"
        )
    for f in forms.values():
        calls = sum(o is f for o in order)
        if calls != 1:
            raise ExportError(f"neuron layer {f.name!r} is called {calls} times per forward; expected once")
    return Prepared(net, order, tuple(input_shape), T, int(y.shape[2]))


# ------------------------------------------------------------------------------------- time locality


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


@contextmanager
def _recording(net: nn.Module, into: list) -> Iterator[None]:
    """Record (module name, output tensors) of every module call, in the order calls finish."""
    names = {m: n for n, m in net.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: into.append((names[mod], mod, _tensors(out))))
        for m in names
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _same(full: torch.Tensor, parts: list[torch.Tensor]) -> bool:
    try:
        joined = torch.cat(parts, 0)  # time-major: [T*N, ...] and [T, N, ...] both join on axis 0
    except RuntimeError:
        return False
    if joined.shape != full.shape:
        return False
    scale = max(1.0, float(full.abs().max())) if full.numel() else 1.0
    return bool(torch.allclose(joined.float(), full.float(), rtol=1e-4, atol=1e-5 * scale))


def check_time_local(p: Prepared, seed: int = 0) -> None:
    """Every layer must be time-local: with the neurons replaced by the identity, each module's output
    for the whole sequence equals its outputs for the steps one at a time. Raises ExportError naming
    the first module (in the order calls finish, so the innermost one) for which it does not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p.T, 3, *p.input_shape, generator=g)
    p.set_mode(Mode.IDENTITY)
    try:
        full: list = []
        with _recording(p.net, full):
            run(p.net, x, "the whole sequence")
        steps: list[list] = []
        for t in range(p.T):
            rec: list = []
            with _recording(p.net, rec):
                run(p.net, x[t : t + 1], "one step")
            steps.append(rec)
    finally:
        p.set_mode(Mode.FULL)
    form_names = {f.name for f in p.forms}
    for i, (name, mod, outs) in enumerate(full):
        if name in form_names:
            continue
        per_step = [rec[i] if i < len(rec) else None for rec in steps]
        ok = all(s is not None and s[0] == name and len(s[2]) == len(outs) for s in per_step) and all(
            _same(o, [s[2][j] for s in per_step]) for j, o in enumerate(outs)
        )
        if not ok:
            where = f"layer {name!r}" if name else "the network's own forward"
            raise ExportError(
                f"{where} ({type(mod).__name__}) mixes time steps: its output for the whole sequence "
                "differs from its outputs for one step at a time. Every layer but the neurons must be "
                "time-local (no RNN, no convolution or pooling over the T axis, no sum over time)"
            )
