"""SeqClassifier: shapes, config, and the invariant everything downstream leans on: the step loop over T
steps gives the same logits as the full forward, for every neuron kind and both architectures."""

from __future__ import annotations

import pytest
import torch

from psn.network import Arch, NetConfig, SeqClassifier, count_parameters
from psn.neurons import LIF, PSN, MaskedPSN, NeuronKind, SlidingPSN

torch.set_num_threads(1)

KINDS = [NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN, NeuronKind.LIF]


def _config(kind: NeuronKind, arch: Arch, T: int = 6, features: int = 8, depth: int = 2) -> NetConfig:
    k = 3 if kind in (NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN) else None
    return NetConfig(
        T=T, features=features, classes=4, kind=kind, k=k, arch=arch, channels=4, depth=depth, hidden=12
    )


def _model(cfg: NetConfig, seed: int = 0) -> SeqClassifier:
    """An eval-mode model with non-trivial BatchNorm statistics and thresholds low enough to spike."""
    torch.manual_seed(seed)
    model = SeqClassifier(cfg)
    g = torch.Generator().manual_seed(seed)
    drive = 1.0 if cfg.kind is NeuronKind.LIF else 0.0  # LIF needs V >= 1 to fire
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1.0 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(drive + 0.5 * torch.randn(m.num_features, generator=g))
            if isinstance(m, (PSN, SlidingPSN)):
                m.bias.fill_(-0.2)
    model.set_lambda(1.0)
    return model.eval()


def _spike_rates(model: SeqClassifier, x: torch.Tensor) -> list[float]:
    rates: list[float] = []
    hooks = [
        n.register_forward_hook(lambda _m, _i, o: rates.append(float(o.mean()))) for n in model.neurons()
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


@pytest.mark.parametrize("arch", [Arch.CONV, Arch.MLP])
@pytest.mark.parametrize("kind", KINDS)
def test_step_loop_equals_forward(kind: NeuronKind, arch: Arch) -> None:
    cfg = _config(kind, arch, depth=2 if arch is Arch.CONV else 3)
    model = _model(cfg)
    x = torch.rand(cfg.T, 3, cfg.features, generator=torch.Generator().manual_seed(1)) * 2  # [T, N, F]
    rates = _spike_rates(model, x)
    assert all(0.0 < r < 1.0 for r in rates), rates  # every layer spikes, but not always: a real check
    with torch.no_grad():
        full = model(x)  # [T, N, C]
        states = model.initial_state(x[0])
        outs = []
        for t in range(cfg.T):
            out, states = model.step(x[t], states)
            outs.append(out)
    assert full.shape == (cfg.T, 3, cfg.classes)
    if kind is NeuronKind.PSN:
        assert all(o is None for o in outs[:-1])
        stepped = outs[-1]  # all T steps' logits come out of the last step
    else:
        stepped = torch.stack(outs)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
    assert len(states) == len(model.neurons())


@pytest.mark.parametrize("kind", [NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN, NeuronKind.LIF])
def test_network_step_is_pure(kind: NeuronKind) -> None:
    cfg = _config(kind, Arch.CONV)
    model = _model(cfg)
    x = torch.rand(cfg.T, 2, cfg.features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        states = model.initial_state(x[0])
        _, states = model.step(x[0], states)
        snapshot = [tuple(t.clone() for t in s) if isinstance(s, tuple) else s.clone() for s in states]
        first, _ = model.step(x[1], states)
        again, _ = model.step(x[1], states)  # the same state gives the same answer: nothing was mutated
    assert torch.equal(first, again)
    for s, snap in zip(states, snapshot, strict=True):
        if isinstance(s, tuple):
            assert all(torch.equal(a, b) for a, b in zip(s, snap, strict=True))
        else:
            assert torch.equal(s, snap)


def test_sliding_and_lif_networks_run_past_T() -> None:
    """Weights shared over time: a sliding PSN or LIF network accepts sequences longer than T."""
    for kind in (NeuronKind.SLIDING_PSN, NeuronKind.LIF):
        model = _model(_config(kind, Arch.MLP))
        x = torch.rand(15, 2, 8, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            full = model(x)
            states = model.initial_state(x[0])
            for t in range(15):
                out, states = model.step(x[t], states)
        torch.testing.assert_close(out, full[-1], rtol=1e-5, atol=1e-5)


def test_layout_conv_smnist() -> None:
    cfg = NetConfig(T=28, features=28, classes=10, kind=NeuronKind.MASKED_PSN, k=8, channels=32, depth=2)
    model = SeqClassifier(cfg)
    types = [type(m).__name__ for m in model.layers]
    assert types == [
        "Unflatten",
        "Conv1d",
        "BatchNorm1d",
        "MaskedPSN",
        "AvgPool1d",
        "Conv1d",
        "BatchNorm1d",
        "MaskedPSN",
        "AvgPool1d",
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "MaskedPSN",
        "Linear",
    ]
    assert model.layers[10].in_features == 32 * 7  # 28 -> 14 -> 7 after two poolings
    expected = (
        1 * 32 * 3 + 32 * 32 * 3 + 32 * 7 * 128 + 128 * 10 + 10 + 2 * (2 * 32) + 2 * 128 + 3 * (28 * 28 + 28)
    )
    assert count_parameters(model) == expected
    assert model(torch.zeros(28, 2, 28)).shape == (28, 2, 10)


def test_layout_mlp() -> None:
    cfg = NetConfig(T=40, features=1, classes=10, kind=NeuronKind.LIF, arch=Arch.MLP, depth=3, hidden=16)
    types = [type(m).__name__ for m in SeqClassifier(cfg).layers]
    assert types == ["Linear", "BatchNorm1d", "LIF"] * 3 + ["Linear"]


def test_config_json_roundtrip_and_validation() -> None:
    cfg = _config(NeuronKind.SLIDING_PSN, Arch.MLP)
    back = NetConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.kind is NeuronKind.SLIDING_PSN and back.arch is Arch.MLP
    assert back.labels == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="k must be in"):
        NetConfig(T=6, features=2, classes=2, kind=NeuronKind.MASKED_PSN, k=7)
    with pytest.raises(ValueError, match="k must be in"):
        NetConfig(T=6, features=2, classes=2, kind=NeuronKind.SLIDING_PSN, k=1)
    with pytest.raises(ValueError, match="needs k"):
        NetConfig(T=6, features=2, classes=2, kind=NeuronKind.MASKED_PSN)
    assert NetConfig(T=6, features=2, classes=2, kind=NeuronKind.PSN, k=3).k is None


def test_set_lambda_reaches_every_masked_layer() -> None:
    model = SeqClassifier(_config(NeuronKind.MASKED_PSN, Arch.CONV))
    masked = [m for m in model.neurons() if isinstance(m, MaskedPSN)]
    assert len(masked) == 3 and all(float(m.lam) == 0.0 for m in masked)
    model.set_lambda(0.3)
    assert all(float(m.lam) == pytest.approx(0.3) for m in masked)
    assert "layers.3.lam" in model.state_dict()  # λ travels with the checkpoint


def test_lif_network_uses_configured_reset() -> None:
    cfg = NetConfig(T=4, features=3, classes=2, kind=NeuronKind.LIF, arch=Arch.MLP, lif_reset="soft")
    assert all(isinstance(m, LIF) and m.reset.value == "soft" for m in SeqClassifier(cfg).neurons())
