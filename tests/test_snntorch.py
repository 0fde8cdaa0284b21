"""snnTorch networks (nn.Sequential + snn.Leaky / snn.Synaptic with init_hidden=True, single-step) export
with snnTorch's exact semantics: snnTorch's own step loop == full.onnx == a loop over step.onnx, over
reset mechanisms, reset_delay, scalar / per-neuron β, graded spikes and both readouts; the tutorial CNN
exports through ``psn export --module`` and serves like snnTorch; what cannot be exported is named."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

snn = pytest.importorskip("snntorch")

from exporters import ExportError, export_module  # noqa: E402
from exporters import cli as export_cli  # noqa: E402
from exporters.sources.snntorch import from_snntorch  # noqa: E402
from psn_runtime.manifest import Manifest  # noqa: E402
from tests.fixtures import make_runtime, running_means  # noqa: E402
from tests.sources_reference import onnx_step_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T_EXPORT, D = 8, 6

torch.set_num_threads(1)


def _leaky_net() -> nn.Sequential:
    """Every Leaky reset mechanism with reset_delay on and off, scalar and per-neuron β and threshold."""
    torch.manual_seed(0)
    vec = torch.rand(D) * 0.5 + 0.4
    return nn.Sequential(
        nn.Linear(4, D),
        snn.Leaky(beta=0.8, threshold=0.5, init_hidden=True),  # subtract, delayed
        nn.Linear(D, D),
        snn.Leaky(beta=vec, threshold=vec, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        nn.Linear(D, D),
        snn.Leaky(beta=0.7, init_hidden=True, reset_mechanism="subtract", reset_delay=False, learn_beta=True),
        nn.Linear(D, D),
        snn.Leaky(beta=vec, threshold=0.3, init_hidden=True, reset_mechanism="zero", learn_threshold=True),
        nn.Linear(D, 5),
        snn.Leaky(beta=0.9, threshold=0.4, init_hidden=True, reset_mechanism="none", output=True),
    )


def _synaptic_net() -> nn.Sequential:
    """Synaptic with every reset mechanism, per-neuron α / β, graded spikes; read out by its membrane."""
    torch.manual_seed(1)
    vec = torch.rand(D) * 0.5 + 0.4
    return nn.Sequential(
        nn.Linear(4, D),
        snn.Synaptic(alpha=0.6, beta=vec, threshold=0.6, init_hidden=True),
        nn.Linear(D, D),
        snn.Leaky(beta=0.8, threshold=0.5, init_hidden=True, graded_spikes_factor=torch.rand(D) + 0.5),
        nn.Linear(D, D),
        snn.Synaptic(alpha=vec, beta=0.7, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        nn.Linear(D, 5),
        snn.Synaptic(alpha=0.5, beta=vec[:5], init_hidden=True, reset_mechanism="none", output=True),
    )


def _firing(build):
    """Linear weights × 2.5 and biases in [0, 0.5]: every layer fires on a good share of steps."""

    def make() -> nn.Sequential:
        seq = build()
        with torch.no_grad():
            for m in seq:
                if isinstance(m, nn.Linear):
                    m.weight.mul_(2.5)
                    m.bias.uniform_(0.0, 0.5)
        return seq.eval()

    return make


NETS = {"leaky": (_firing(_leaky_net), "spikes"), "synaptic": (_firing(_synaptic_net), "mem")}


def snntorch_loop(seq: nn.Sequential, x: torch.Tensor, readout: str) -> np.ndarray:
    """snnTorch's own convention: reset, then seq(x[t]) once per step; x [T, N, *] -> [N, T, C]."""
    from snntorch import utils

    utils.reset(seq)
    outs = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            y = seq(x[t])
            outs.append(y[-1] if readout == "mem" else (y[0] if isinstance(y, tuple) else y))
    utils.reset(seq)
    return torch.stack(outs, 1).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("snntorch")
    for name, (build, readout) in NETS.items():
        seq = build().eval()
        export_module(from_snntorch(seq, readout), root / name, input_shape=(4,), T=T_EXPORT, name=name)
    return {name: root / name for name in NETS}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("T,batch", [(T_EXPORT, 3), (3, 1), (T_EXPORT, 16)])
def test_snntorch_loop_equals_full_and_step_onnx(
    exported: dict[str, Path], name: str, T: int, batch: int
) -> None:
    build, readout = NETS[name]
    seq = build().eval()
    x = (torch.randn(T, batch, 4, generator=torch.Generator().manual_seed(T * batch)) * 1.5).float()
    ref = snntorch_loop(seq, x, readout)  # [N, T, C]
    full, stepped = onnx_step_logits(exported[name], x.transpose(0, 1).contiguous().numpy())
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
    if readout == "spikes":
        assert 0 < ref.mean() < 1  # the last layer fires, not always
    else:
        assert len(np.unique(np.round(ref, 3))) > 10  # a membrane, not a constant


def test_manifest_states_of_leaky_and_synaptic(exported: dict[str, Path]) -> None:
    leaky, synaptic = Manifest.load(exported["leaky"]), Manifest.load(exported["synaptic"])
    assert [str(k) for k in leaky.neurons] == ["lif"] * 5 and leaky.variable_length and leaky.streams
    assert [str(k) for k in synaptic.neurons] == ["cuba_lif", "lif", "cuba_lif", "cuba_lif"]
    assert [s.input for s in synaptic.states[:3]] == ["state_0_syn", "state_0_mem", "state_1"]
    assert all(s.init == 0.0 for s in synaptic.states)


def _load_example():
    spec = importlib.util.spec_from_file_location("snntorch_cnn", ROOT / "docs/examples/snntorch_cnn.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_snntorch_cnn_exports_with_the_cli_and_serves_like_snntorch(tmp_path: Path) -> None:
    """The tutorial CNN through ``psn export --module``: classify labels and logits, and every streamed
    step's label, equal snnTorch's own loop for every sample."""
    from safetensors.torch import save_file

    example = _load_example()
    torch.manual_seed(0)
    seq = example.build().eval()
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, str(weights))
    argv = ["--module", f"{ROOT / 'docs/examples/snntorch_cnn.py'}:build", "--weights", str(weights)]
    argv += [
        "--input-shape",
        "6,1,28,28",
        "--name",
        "cnn",
        "--out",
        str(tmp_path / "cnn"),
        "--readout",
        "mem",
    ]
    assert export_cli.main([*argv, "--labels", ",".join(example.LABELS), "--quiet"]) == 0
    x = torch.rand(6, 5, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2  # [T, N, 1, 28, 28]
    ref = snntorch_loop(seq, x, "mem")  # [N, T, 10]
    xs = x.transpose(0, 1).contiguous().numpy()

    async def serve() -> tuple[object, list]:
        runtime = make_runtime(tmp_path)
        try:
            result = runtime.classify("cnn", xs)
            streams = []
            for i in range(xs.shape[0]):
                sid = await runtime.open_stream("cnn")
                streams.append([await runtime.step(sid, frame) for frame in xs[i]])
                runtime.close_stream(sid)
            return result, streams
        finally:
            await runtime.close()

    result, streams = asyncio.run(serve())
    expected = ref.mean(1)
    assert result.labels == [example.LABELS[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-4)
    assert len(set(result.labels)) > 1  # the samples get different answers
    means = running_means(ref)
    for i, steps in enumerate(streams):
        assert [s.label for s in steps] == [example.LABELS[j] for j in means[i].argmax(1)]
        np.testing.assert_allclose(np.stack([s.logits for s in steps]), means[i], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ refused


def _seq(neuron: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), neuron)


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: snn.RLeaky(beta=0.9, linear_features=3, init_hidden=True),
            r"'1' \(snn.RLeaky\): a recurrent",
        ),
        (lambda: snn.RSynaptic(alpha=0.9, beta=0.9, linear_features=3, init_hidden=True), "snn.RSynaptic"),
        (lambda: snn.Alpha(alpha=0.9, beta=0.8, init_hidden=True), r"snn.Alpha\): an alpha neuron"),
        (lambda: snn.Lapicque(beta=0.9, init_hidden=True), r"snn.Lapicque\): Lapicque"),
        (lambda: snn.SLSTM(3, 3, init_hidden=True), r"snn.SLSTM\): a spiking LSTM"),
        (lambda: snn.Leaky(beta=0.9), "init_hidden=False"),
        (lambda: snn.Leaky(beta=0.9, init_hidden=True, inhibition=True), "inhibition"),
    ],
)
def test_unsupported_snntorch_layers_are_refused_by_name(make, match: str) -> None:
    with pytest.raises(ExportError, match=match):
        from_snntorch(_seq(make()))


def test_other_snntorch_refusals_say_why() -> None:
    class Net(nn.Module):  # snnTorch's explicit-state convention: forward(x, mem)
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.lif = nn.Linear(4, 3), snn.Leaky(beta=0.9)

    with pytest.raises(ExportError, match=r"must be an nn.Sequential.*got Net"):
        from_snntorch(Net())
    middle = nn.Sequential(
        nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True), nn.Linear(3, 2)
    )
    with pytest.raises(ExportError, match="output=True returns"):
        from_snntorch(middle)
    ends_linear = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True), nn.Linear(3, 2))
    with pytest.raises(ExportError, match=r"--readout mem .* is a Linear"):
        from_snntorch(ends_linear, "mem")
    # handed to export_module as it is: the snnTorch neuron is named, with the way to export it
    with pytest.raises(ExportError, match=r"'1' \(Leaky\): a snnTorch neuron.*from_snntorch"):
        export_module(ends_linear, "unused", input_shape=(4,), T=4, name="x")


def test_cli_usage_errors_for_readout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_cli.main(["ckpt", "--out", str(tmp_path), "--readout", "mem"]) == 2
    assert "--readout only goes with --module" in capsys.readouterr().err
