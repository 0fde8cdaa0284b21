"""The paper-style networks of psn/zoo.py (random weights, small widths, the paper's shapes) export with
``exporters.export_module`` / ``psn export --module``, pass the export checks, and serve: the runtime's
classify equals PyTorch, and the event-frame net's streamed steps equal its full graph step for step."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from exporters import cli as export_cli
from exporters import export_module
from psn import zoo
from psn.data import load_mnist_images
from psn_runtime.manifest import Manifest
from tests.fixtures import make_runtime, running_means

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)

# name: (per-step shape, T, neuron kinds in order, streams)
PAPER = {
    "scifar_psn": ((3, 32), 32, ["psn"] * 5, False),
    "cifar_vgg_psn": ((3, 32, 32), 4, ["psn"] * 3, False),
    "dvs_sliding_lif": ((2, 64, 64), 10, ["sliding_psn", "lif", "sliding_psn", "lif"], True),
}


def _net(name: str) -> tuple[zoo.SpikingNet, np.ndarray]:
    """The network with BatchNorm statistics from one random batch, and 3 test sequences [3, T, *shape]."""
    shape, T, _, _ = PAPER[name]
    torch.manual_seed(0)
    net = zoo.calibrate_batchnorm(getattr(zoo, name)(), torch.rand(T, 8, *shape))
    x = np.random.default_rng(1).random((3, T, *shape), dtype=np.float32)
    return net, x


def _torch_logits(net: zoo.SpikingNet, x: np.ndarray) -> np.ndarray:
    """Per-step logits [B, T, C] of the PyTorch module for x [B, T, *shape]."""
    with torch.no_grad():
        return net(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three paper-style networks exported (with every check) into one models directory."""
    root = tmp_path_factory.mktemp("zoo-models")
    for name, (shape, T, _, _) in PAPER.items():
        net, _ = _net(name)
        export_module(net, root / name, input_shape=shape, T=T, name=name, labels=net.labels)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_nets_export_with_their_shapes_and_kinds(models: Path, name: str) -> None:
    shape, T, kinds, streams = PAPER[name]
    manifest = Manifest.load(models / name)
    assert tuple(manifest.input_shape) == shape and manifest.T == T
    assert [str(k) for k in manifest.neurons] == kinds
    assert manifest.streams is streams
    assert (models / name / "step.onnx").is_file() is streams


@pytest.mark.parametrize("name", PAPER)
def test_paper_nets_classify_like_pytorch(models: Path, name: str) -> None:
    net, x = _net(name)
    expected = _torch_logits(net, x).mean(1)  # [B, C]: the decision is the mean over T
    runtime = make_runtime(models)
    try:
        result = runtime.classify(name, x)
        one = runtime.classify(name, x[1])  # a single sequence [T, *shape]
    finally:
        asyncio.run(runtime.close())
    np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one.logits[0], expected[1], rtol=1e-4, atol=1e-4)
    assert result.labels == [str(i) for i in expected.argmax(1)]
    assert len(set(np.round(expected[:, 0], 4))) > 1  # the sequences get different answers


def test_event_net_streams_step_for_step_like_its_full_graph(models: Path) -> None:
    net, x = _net("dvs_sliding_lif")
    means = running_means(_torch_logits(net, x))[0]  # [T, C]: what a stream reports after each step

    async def stream() -> list:
        runtime = make_runtime(models)
        try:
            sid = await runtime.open_stream("dvs_sliding_lif")
            steps = [await runtime.step(sid, frame) for frame in x[0]]  # frame [2, 64, 64]
            steps.append(await runtime.step(sid, x[0, 0]))  # sliding PSN + LIF: runs past T
            return steps
        finally:
            await runtime.close()

    steps = asyncio.run(stream())
    for t, step in enumerate(steps[:-1]):
        assert (step.t, step.ready) == (t, True)
        np.testing.assert_allclose(step.logits, means[t], rtol=1e-4, atol=1e-4)
    assert steps[-1].t == len(means) and steps[-1].ready


@pytest.mark.slow
def test_psn_export_module_cli_builds_a_zoo_function(tmp_path: Path, models: Path) -> None:
    """``psn export --module psn/zoo.py:cifar_vgg_psn --weights W ...`` == the Python API on the same net."""
    net, x = _net("cifar_vgg_psn")
    weights = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    out = tmp_path / "vgg"
    argv = [
        "--module",
        "psn/zoo.py:cifar_vgg_psn",
        "--weights",
        str(weights),
        "--input-shape",
        "4,3,32,32",
        "--name",
        "vgg",
        "--out",
        str(out),
        "--labels",
        ",".join("abcdefghij"),
    ]
    assert export_cli.main(argv) == 0
    manifest = Manifest.load(out)
    assert manifest.labels == list("abcdefghij") and manifest.name == "vgg"
    runtime = make_runtime(tmp_path)
    try:
        got = runtime.classify("vgg", x).logits
    finally:
        asyncio.run(runtime.close())
    np.testing.assert_allclose(got, _torch_logits(net, x).mean(1), rtol=1e-4, atol=1e-4)


# -- the bundled, trained 2-D model -----------------------------------------------------------------------
MNIST2D = Path(__file__).resolve().parents[1] / "models" / "mnist2d-sliding-psn"


def test_bundled_mnist2d_model_serves_its_test_accuracy(tmp_path: Path) -> None:
    """models/mnist2d-sliding-psn: the runtime's answers on the 1,000 test digits (static images repeated
    over T = 4) give the accuracy in its manifest, and equal the checkpoint's PyTorch logits."""
    manifest = Manifest.load(MNIST2D)
    metrics = json.loads((MNIST2D / "checkpoint" / "metrics.json").read_text())
    assert (manifest.dataset, manifest.T, tuple(manifest.input_shape)) == ("mnist2d", 4, (1, 28, 28))
    assert manifest.streams and manifest.test_accuracy == metrics["test_accuracy"] > 0.97
    shutil.copytree(MNIST2D, tmp_path / MNIST2D.name, ignore=shutil.ignore_patterns("checkpoint"))
    data = load_mnist_images()
    x = np.repeat(data.x_test[:, None], manifest.T, axis=1)  # [1000, T, 1, 28, 28]
    runtime = make_runtime(tmp_path)
    try:
        logits = np.concatenate(
            [runtime.classify(MNIST2D.name, x[i : i + 250]).logits for i in range(0, 1000, 250)]
        )
    finally:
        asyncio.run(runtime.close())
    assert float((logits.argmax(1) == data.y_test).mean()) == pytest.approx(manifest.test_accuracy, abs=0.002)
    net = zoo.mnist2d_sliding_psn()
    net.load_state_dict(load_file(str(MNIST2D / "checkpoint" / "weights.safetensors")))
    np.testing.assert_allclose(logits[:100], _torch_logits(net.eval(), x[:100]).mean(1), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_bundled_mnist2d_model_reproduces_from_its_checkpoint(tmp_path: Path) -> None:
    """``psn export CHECKPOINT`` on a psn train-zoo checkpoint (config.json names psn.zoo's builder)
    writes the bundled graphs byte for byte, with the data set and accuracy from metrics.json."""
    out = tmp_path / MNIST2D.name
    assert export_cli.main([str(MNIST2D / "checkpoint"), "--out", str(out), "--quiet"]) == 0
    bundled, again = Manifest.load(MNIST2D), Manifest.load(out)
    assert again.sha256 == bundled.sha256 and again.states == bundled.states
    repo = str(Path(__file__).resolve().parents[1]).encode()
    assert repo not in (out / "full.onnx").read_bytes()  # no stack traces with this machine's paths
    assert again.model_dump(exclude={"command"}) == bundled.model_dump(exclude={"command"})
    train = json.loads((MNIST2D / "checkpoint" / "metrics.json").read_text())["command"]
    assert again.command == f"{train} && psn export {MNIST2D / 'checkpoint'} --out {out}"
    assert (
        bundled.command
        == f"{train} && psn export models/mnist2d-sliding-psn/checkpoint --out models/mnist2d-sliding-psn"
    )


# -- the README's SpikingJelly example ---------------------------------------------------------------------
@pytest.mark.slow
def test_readme_spikingjelly_example_exports_and_serves_like_spikingjelly(tmp_path: Path) -> None:
    """docs/examples/sj_quadrants.py:build (event frames [2, 32, 32], T = 8, sliding PSN + LIF) through
    ``psn export --module``: classify and every streamed step equal SpikingJelly's own forward."""
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    spec = importlib.util.spec_from_file_location("sj_quadrants", ROOT / "docs/examples/sj_quadrants.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    LABELS, build, events = example.LABELS, example.build, example.events

    torch.manual_seed(0)
    net = build()
    x, _ = events(3, torch.Generator().manual_seed(1))  # [T, 3, 2, 32, 32]
    weights = tmp_path / "sj.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    argv = [
        "--module",
        str(ROOT / "docs/examples/sj_quadrants.py") + ":build",
        "--weights",
        str(weights),
        "--input-shape",
        "8,2,32,32",
    ]
    argv += [
        "--name",
        "quadrants",
        "--out",
        str(tmp_path / "quadrants"),
        "--labels",
        ",".join(LABELS),
        "--quiet",
    ]
    assert export_cli.main(argv) == 0
    net.eval()
    with torch.no_grad():
        ref = net(x).transpose(0, 1).numpy()  # SpikingJelly's per-step logits [3, T, 4]
    functional.reset_net(net)
    xs = x.transpose(0, 1).numpy()  # [3, T, 2, 32, 32]

    async def serve() -> tuple[np.ndarray, list]:
        runtime = make_runtime(tmp_path)
        try:
            logits = runtime.classify("quadrants", xs).logits
            sid = await runtime.open_stream("quadrants")
            return logits, [await runtime.step(sid, frame) for frame in xs[0]]
        finally:
            await runtime.close()

    logits, steps = asyncio.run(serve())
    np.testing.assert_allclose(logits, ref.mean(1), rtol=1e-4, atol=1e-4)
    for t, step in enumerate(steps):
        np.testing.assert_allclose(step.logits, running_means(ref)[0, t], rtol=1e-4, atol=1e-4)
