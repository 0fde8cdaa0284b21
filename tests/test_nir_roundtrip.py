"""Round trips into NIR and back through ``psn export --nir``: snnTorch's ``export_to_nir`` and Norse's
``to_nir`` write graphs that serve like the source framework's own step loop, at the dt (and with the
neuron settings) docs/export.md names for each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")

from exporters import ExportError  # noqa: E402
from exporters import cli as export_cli  # noqa: E402
from exporters.sources import from_module  # noqa: E402
from tests.sources_reference import onnx_step_logits  # noqa: E402

T, N = 10, 8


def _import(graph, tmp_path: Path, dt: float, shape: tuple[int, ...]) -> Path:
    nir.write(tmp_path / "graph.nir", graph)
    out = tmp_path / "model"
    argv = [
        "--nir",
        str(tmp_path / "graph.nir"),
        "--dt",
        repr(dt),
        "--input-shape",
        ",".join(map(str, (T, *shape))),
    ]
    assert export_cli.main([*argv, "--name", "roundtrip", "--out", str(out), "--quiet"]) == 0
    return out


def _drive(seq: nn.Module) -> None:
    """Linear weights × 3, biases in [0.2, 0.6]: the neurons fire."""
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
                m.bias.uniform_(0.2, 0.6)


def test_snntorch_export_to_nir_serves_like_snntorch(tmp_path: Path) -> None:
    """snnTorch writes Leaky as LIF with τ = dt/(1 − β), r = τ/dt, v_reset = 0 (and Synaptic as CubaLIF
    with w_in = τ_syn/dt) at dt = 1e-4: imported at that dt, v ← v + (dt/τ)(−v + r·I) is β·v + I, so
    it matches snnTorch's zero reset without reset delay (up to float rounding)."""
    snn = pytest.importorskip("snntorch")
    export_nir = pytest.importorskip("snntorch.export_nir")
    from snntorch import utils

    torch.manual_seed(0)
    zero = {"init_hidden": True, "reset_mechanism": "zero", "reset_delay": False}
    seq = nn.Sequential(
        nn.Linear(4, 6),
        snn.Leaky(beta=torch.rand(6) * 0.5 + 0.4, threshold=torch.full((6,), 0.8), **zero),
        nn.Linear(6, 3),
        snn.Synaptic(
            alpha=torch.rand(3) * 0.5 + 0.3, beta=torch.rand(3) * 0.5 + 0.4, threshold=torch.ones(3), **zero
        ),
    ).eval()
    _drive(seq)
    graph = export_nir.export_to_nir(seq, torch.randn(1, 4), ignore_dims=[0])
    model = _import(graph, tmp_path, 1e-4, (4,))
    x = torch.rand(T, N, 4, generator=torch.Generator().manual_seed(1)) * 2
    utils.reset(seq)
    with torch.no_grad():
        ref = torch.stack([seq(x[t]) for t in range(T)], 1).numpy()  # [N, T, 3] spikes
    full, stepped = onnx_step_logits(model, x.transpose(0, 1).contiguous().numpy())
    np.testing.assert_array_equal(stepped, full)
    assert 0.1 < ref.mean() < 0.9
    assert np.mean(full != ref) <= 0.02  # a spike may flip where float rounding crosses the threshold


def test_norse_to_nir_serves_like_norse(tmp_path: Path) -> None:
    """Norse 1.1 writes LIFBoxCell as LIF and LIBoxCell as LI with τ = dt/τ_mem_inv (not 1/τ_mem_inv):
    its dynamics v ← v + dt·τ_mem_inv·(v_leak − v + I) come back at --dt = dt² (1e-6 for dt = 1e-3)."""
    norse = pytest.importorskip("norse.torch")
    from norse.torch.utils.export_nir import to_nir

    torch.manual_seed(0)
    # per-neuron parameters: nir.write cannot store the 0-d arrays Norse writes for scalar ones
    lif = norse.LIFBoxParameters(
        tau_mem_inv=torch.full((6,), 100.0), v_leak=torch.zeros(6), v_th=torch.ones(6), v_reset=torch.zeros(6)
    )
    li = norse.LIBoxParameters(tau_mem_inv=torch.full((3,), 100.0), v_leak=torch.zeros(3))
    cells = (nn.Linear(4, 6), norse.LIFBoxCell(lif), nn.Linear(6, 3), norse.LIBoxCell(li))
    seq = norse.SequentialState(*cells).eval()
    _drive(seq)
    graph = to_nir(seq, torch.randn(1, 4))  # dt = 1e-3
    model = _import(graph, tmp_path, 1e-6, (4,))
    x = torch.rand(T, N, 4, generator=torch.Generator().manual_seed(2)) * 2
    outs, state = [], None
    with torch.no_grad():
        for t in range(T):
            y, state = seq(x[t], state)
            outs.append(y)
    ref = torch.stack(outs, 1).numpy()  # [N, T, 3]: the LI's membrane
    full, stepped = onnx_step_logits(model, x.transpose(0, 1).contiguous().numpy())
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
    assert np.ptp(ref[:, -1], axis=0).max() > 1e-2  # the samples differ
    with pytest.raises(ExportError, match=r"the network \(SequentialState\) is a Norse module: .*--nir"):
        from_module(seq)  # psn export --module names the way in
