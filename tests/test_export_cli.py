"""``psn export --module``: a SpikingJelly network built from its own multi-step layers, exported by the
command line from a Python file + weights and served by psn_runtime (classify and every streamed step
against SpikingJelly's forward); weights_only loading; bad usage; the refusals (time-mixing layers,
non-causal or unsupported neurons, wrong output shape)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from exporters import ExportError, export_module
from exporters import cli as export_cli
from exporters.loading import load_weights
from exporters.prepare import reset_states
from psn_runtime import Runtime, RuntimeConfig
from psn_runtime.manifest import Manifest
from tests.nets import PerStep, make_neuron

pytest.importorskip("spikingjelly.activation_based.neuron")
from safetensors.torch import save_file

# a per-step shape no other test uses: [3, 5, 7], T = 5; SpikingJelly's own multi-step layers
NET_PY = """
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron


def build():
    return nn.Sequential(
        layer.Conv2d(3, 4, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(4, step_mode="m"),
        neuron.SlidingPSN(k=3, step_mode="m"),
        layer.MaxPool2d(2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(4 * 2 * 3, 12, step_mode="m"),
        neuron.LIFNode(tau=2.0, v_threshold=0.4, v_reset=None, step_mode="m"),
        layer.SeqToANNContainer(nn.Linear(12, 4)),
    )
"""
SHAPE, T = (3, 5, 7), 5


def _write_net(tmp_path: Path) -> tuple[nn.Module, Path]:
    (tmp_path / "mynet.py").write_text(textwrap.dedent(NET_PY))
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet_for_weights", tmp_path / "mynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # statistics and thresholds that make both neuron layers fire
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.bias.normal_(0.4, 0.3, generator=g)
    return net.eval(), tmp_path / "mynet.py"


def _sj_forward(net: nn.Module, x: np.ndarray) -> np.ndarray:
    """SpikingJelly's own forward (reset_net before and after): x [N, T, *] -> [N, T, C]."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    with torch.no_grad():
        y = net(torch.from_numpy(x).transpose(0, 1).contiguous())
    functional.reset_net(net)
    return y.transpose(0, 1).numpy()


@pytest.mark.slow
def test_spikingjelly_round_trip_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    net, path = _write_net(tmp_path)
    weights = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    out = tmp_path / "models" / "gestures"
    argv = [
        "--module",
        f"{path}:build",
        "--weights",
        str(weights),
        "--input-shape",
        "5,3,5,7",
        "--name",
        "gestures",
        "--out",
        str(out),
        "--labels",
        "up,down,left,right",
    ]
    assert export_cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "step_vs_full" in printed and "gestures (sliding_psn, T=5, k=3, input [3, 5, 7]" in printed
    manifest = Manifest.load(out)
    assert [k.value for k in manifest.neurons] == ["sliding_psn", "lif"]
    assert manifest.streams and manifest.variable_length and manifest.input_shape == SHAPE
    assert manifest.labels == ["up", "down", "left", "right"]
    assert manifest.command.startswith("psn export --module ") and "--input-shape 5,3,5,7" in manifest.command
    assert manifest.test_accuracy is None

    x = np.random.default_rng(3).standard_normal((4, T, *SHAPE)).astype(np.float32)
    ref = _sj_forward(net, x)  # [4, T, C]
    assert np.abs(ref - ref.mean(1, keepdims=True)).max() > 1e-3

    async def serve() -> None:
        runtime = Runtime(RuntimeConfig(models_dir=out.parent, providers=["CPUExecutionProvider"]))
        await runtime.start()
        try:
            got = runtime.classify("gestures", x)
            np.testing.assert_allclose(got.logits, ref.mean(1), rtol=1e-4, atol=1e-4)
            short = runtime.classify("gestures", x[:, :3])  # variable length: any T' <= T
            np.testing.assert_allclose(short.logits, _sj_forward(net, x[:, :3]).mean(1), rtol=1e-4, atol=1e-4)
            for i in range(2):  # two streams, every step against SpikingJelly
                sid = await runtime.open_stream("gestures")
                for t in range(T):
                    r = await runtime.step(sid, x[i, t])
                    np.testing.assert_allclose(r.logits, ref[i, : t + 1].mean(0), rtol=1e-4, atol=1e-4)
                runtime.close_stream(sid)
        finally:
            await runtime.close()

    asyncio.run(serve())


@pytest.mark.slow
def test_pt_weights_and_package_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pt state_dict loads with weights_only=True; ``package.module:FUNCTION`` imports from sys.path."""
    net, _ = _write_net(tmp_path)
    pkg = tmp_path / "pkgroot" / "nets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gesture.py").write_text(textwrap.dedent(NET_PY))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "m"
    argv = [
        "--module",
        "nets.gesture:build",
        "--weights",
        str(tmp_path / "net.pt"),
        "--input-shape",
        "5,3,5,7",
        "--name",
        "g",
        "--out",
        str(out),
        "--quiet",
    ]
    assert export_cli.main(argv) == 0
    assert Manifest.load(out).input_shape == SHAPE


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_only_refuses_pickled_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ExportError, match="weights_only=True"):
        load_weights(tmp_path / "evil.pt")
    _, path = _write_net(tmp_path)
    argv = [
        "--module",
        f"{path}:build",
        "--weights",
        str(tmp_path / "evil.pt"),
        "--input-shape",
        "5,3,5,7",
        "--name",
        "g",
        "--out",
        str(tmp_path / "out"),
    ]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "pickled code is refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "give a CHECKPOINT directory or --module"),
        (["--module", "x.py:build", "--input-shape", "5,3", "--name", "n"], "--module needs --weights"),
        (["--module", "x.py:build", "--weights", "w.pt", "--name", "n"], "--module needs --input-shape"),
        (["--module", "x.py:build", "--weights", "w.pt", "--input-shape", "5,3"], "--module needs --name"),
        (["--module", "x.py:b", "--weights", "w.pt", "--input-shape", "5", "--name", "n"], "expected T,D1"),
        (["--module", "x.py:b", "--weights", "w.pt", "--input-shape", "5,a", "--name", "n"], "integers"),
        (["ckpt", "--labels", "a,b"], "--labels only go with --module"),
        (["ckpt", "--module", "x.py:b"], "not both"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_usage_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    assert export_cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("psn export: error:")
    assert not (tmp_path / "out").exists()


def test_bad_module_and_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path = _write_net(tmp_path)
    save_file({"nope": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    base = ["--input-shape", "5,3,5,7", "--name", "g", "--out", str(tmp_path / "out")]
    for module, weights, message in [
        (f"{path}:nothere", tmp_path / "w.safetensors", "has no function nothere"),
        (str(tmp_path / "missing.py") + ":build", tmp_path / "w.safetensors", "no file"),
        (f"{path}:build", tmp_path / "w.safetensors", "do not fit the network"),
        (f"{path}:build", tmp_path / "w.bin", "no such file"),
    ]:
        assert export_cli.main(["--module", module, "--weights", str(weights), *base]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- refusals


class _RNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, N, 8]
        return self.rnn(x)[0]


class _ConvOverTime(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, N, 8] -> conv over T
        return self.conv(x.permute(1, 2, 0)).permute(2, 0, 1)


class _CumSum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(0)


def _net(middle: nn.Module, kind: str = "lif", source: str = "psn") -> nn.Module:
    return nn.Sequential(
        PerStep(nn.Linear(4, 8)), make_neuron(kind, 4, 2, source), middle, PerStep(nn.Linear(8, 3))
    ).eval()


@pytest.mark.parametrize(
    "middle,message",
    [
        (_RNN(), r"layer '2\.rnn' \(GRU\) mixes time steps"),
        (_ConvOverTime(), r"layer '2\.conv' \(Conv1d\) mixes time steps"),
        (_CumSum(), r"layer '2' \(_CumSum\) mixes time steps"),
    ],
)
def test_time_mixing_layers_are_refused(tmp_path: Path, middle: nn.Module, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        export_module(_net(middle), tmp_path / "m", input_shape=(4,), T=4, name="m")
    assert not (tmp_path / "m").exists()


def test_refused_neurons_and_outputs(tmp_path: Path) -> None:
    from spikingjelly.activation_based import neuron

    def refuse(net: nn.Module, message: str) -> None:
        with pytest.raises(ExportError, match=message):
            export_module(net, tmp_path / "m", input_shape=(4,), T=4, name="m")
        assert not (tmp_path / "m").exists()

    masked = _net(nn.Identity(), "masked_psn", "sj")
    masked[1].lambda_ = 0.5
    refuse(masked, r"λ = 0\.5 is not causal")
    single = _net(nn.Identity(), "lif", "sj")
    single[1].step_mode = "s"
    refuse(single, r"step_mode='s'")
    qif = nn.Sequential(PerStep(nn.Linear(4, 3)), neuron.QIFNode(step_mode="m"))
    refuse(qif, r"'1' \(QIFNode\): not a supported neuron")
    refuse(nn.Sequential(PerStep(nn.Linear(4, 3))), "no neuron layer")
    pooled = nn.Sequential(_net(nn.Identity()), _Mean())
    refuse(pooled, r"per-step logits \[T, N, C\]")


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(0)


@pytest.mark.slow
def test_module_is_not_modified(tmp_path: Path) -> None:
    net = _net(nn.Identity(), "sliding_psn", "sj").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_module(net, tmp_path / "m", input_shape=(4,), T=4, name="m")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    reset_states(net)
    assert type(net[1]).forward is not None and "forward" not in vars(net[1])  # no patched forward left
