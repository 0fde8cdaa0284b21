"""The zoo of paper-style networks (psn/zoo.py) and ``psn train-zoo``: shapes, neurons on images, the step
loop of the streaming nets against their full forward, the static-image MNIST data, a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from psn import zoo, zoo_train
from psn.cli_args import EXIT_USAGE
from psn.data import load_dataset, load_mnist_images
from psn.neurons import LIF, PSN, MaskedPSN, SlidingPSN

torch.set_num_threads(1)

# builder, per-step shape, T, classes, streams
NETS = {
    "mnist2d_sliding_psn": ((1, 28, 28), 4, 10, True),
    "scifar_psn": ((3, 32), 32, 10, False),
    "cifar_vgg_psn": ((3, 32, 32), 4, 10, False),
    "dvs_sliding_lif": ((2, 64, 64), 10, 11, True),
}


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _built(name: str, n: int = 3) -> tuple[zoo.SpikingNet, torch.Tensor]:
    """The network with BatchNorm statistics taken from a random batch, and that batch x [T, N, *shape]."""
    torch.manual_seed(0)
    shape, T, _, _ = NETS[name]
    model = getattr(zoo, name)()
    x = _rand(T, n, *shape, seed=1)
    return zoo.calibrate_batchnorm(model, x), x


@pytest.mark.parametrize("name", NETS)
def test_builders_take_no_arguments_and_keep_the_paper_shapes(name: str) -> None:
    shape, T, classes, streams = NETS[name]
    model, x = _built(name)
    assert model.T == T and model.input_shape == shape and len(model.labels) == classes
    assert model.streams() is streams
    logits = model(x)
    assert logits.shape == (T, 3, classes)
    spikes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: spikes.append(out)) for m in model.neurons()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert 0.0 < float(spikes[0].mean()) < 1.0  # the first layer spikes, neither never nor always
    with pytest.raises(ValueError, match="expected x"):
        model(torch.zeros(T, 2, 5))


def test_zoo_neuron_kinds() -> None:
    kinds = {name: {type(m) for m in getattr(zoo, name)().neurons()} for name in NETS}
    assert kinds["mnist2d_sliding_psn"] == {SlidingPSN}
    assert kinds["scifar_psn"] == kinds["cifar_vgg_psn"] == {PSN}
    assert kinds["dvs_sliding_lif"] == {SlidingPSN, LIF}
    assert all(m.k == 2 for m in zoo.mnist2d_sliding_psn().neurons())


@pytest.mark.parametrize("neuron", [PSN(5), MaskedPSN(5, 2), SlidingPSN(3), LIF()], ids=type)
def test_neurons_act_on_images_as_on_flat_features(neuron: torch.nn.Module) -> None:
    if isinstance(neuron, MaskedPSN):
        neuron.set_lambda(1.0)
    x = 4 * torch.randn(5, 2, 3, 4, 4, generator=torch.Generator().manual_seed(2))  # [T, N, C, H, W]
    with torch.no_grad():
        out = neuron(x)
    assert out.shape == x.shape and 0 < float(out.mean()) < 1
    torch.testing.assert_close(out, neuron(x.reshape(5, 2, -1)).reshape(x.shape), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mnist2d_sliding_psn", "dvs_sliding_lif"])
def test_step_loop_equals_forward(name: str) -> None:
    model, x = _built(name)
    with torch.no_grad():
        full = model(x)
    states = None
    for t in range(x.shape[0]):
        logits, states = model.step(x[t], states)
        torch.testing.assert_close(logits, full[t], rtol=1e-5, atol=1e-5)


def test_psn_nets_do_not_step() -> None:
    model, x = _built("scifar_psn")
    with pytest.raises(ValueError, match="does not stream"):
        model.step(x[0])


def test_mnist_images_share_the_smnist_split() -> None:
    images = load_mnist_images()
    seq = load_dataset("smnist")
    assert images.x_train.shape == (4000, 1, 28, 28) and images.x_test.shape == (1000, 1, 28, 28)
    np.testing.assert_array_equal(images.x_test[:, 0].transpose(0, 2, 1), seq.x_test)  # columns = steps
    np.testing.assert_array_equal(images.y_train, seq.y_train)
    assert np.bincount(images.y_test).tolist() == [100] * 10


def test_random_translate_moves_whole_images() -> None:
    x = torch.zeros(4, 1, 6, 6)
    x[:, :, 2, 3] = 1.0
    out = zoo_train.random_translate(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), torch.ones(4))
    moved = [tuple(torch.nonzero(o[0])[0].tolist()) for o in out]
    assert all(abs(r - 2) <= 2 and abs(c - 3) <= 2 for r, c in moved) and len(set(moved)) > 1


def test_train_zoo_tiny_run_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    argv = ["--net", "mnist2d_sliding_psn", "--epochs", "1", "--limit", "128", "--quiet", "--out", str(out)]
    assert zoo_train.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["command"] == "psn train-zoo " + " ".join(argv)
    assert metrics["train_samples"] == 128 and metrics["test_samples"] == 1000
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config == {
        "module": "psn.zoo:mnist2d_sliding_psn",
        "T": 4,
        "input_shape": [1, 28, 28],
        "labels": [str(i) for i in range(10)],
    }
    model = zoo.mnist2d_sliding_psn()
    model.load_state_dict(load_file(str(out / "weights.safetensors")))  # strict: every key matches
    model.eval()
    x = zoo_train.repeat_over_time(torch.from_numpy(load_mnist_images().x_test[:50]), 4)
    acc = float(
        (model(x).mean(0).argmax(1) == torch.from_numpy(load_mnist_images().y_test[:50])).float().mean()
    )
    assert abs(acc - metrics["test_accuracy"]) < 0.2  # same model, a subset of the same test set


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--net", "resnet"], "unknown --net"),
        (["--net", "mnist2d_sliding_psn", "--epochs", "0"], "--epochs must be >= 1"),
        (["--net", "mnist2d_sliding_psn", "--lr", "0"], "--lr must be > 0"),
        (["--net", "mnist2d_sliding_psn", "--translate", "-1"], "--translate must be >= 0"),
    ],
)
def test_train_zoo_usage_errors(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert zoo_train.main([*argv, "--out", str(tmp_path / "x")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("psn train-zoo: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_psn_examples_writes_static_digits_repeated_over_the_models_t(tmp_path: Path) -> None:
    from psn.examples import write_examples

    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "manifest.json").write_text(json.dumps({"dataset": "mnist2d", "T": 3}))
    assert write_examples(tmp_path, "psn examples") == [tmp_path / "digits" / "examples.json"]
    doc = json.loads((tmp_path / "digits" / "examples.json").read_text())
    images = load_mnist_images()
    assert doc["dataset"] == "mnist2d" and [e["label"] for e in doc["examples"]] == [
        str(c) for c in range(10)
    ]
    for entry in doc["examples"]:
        inputs = np.asarray(entry["inputs"], dtype=np.float32)  # [T, 1, 28, 28]
        assert inputs.shape == (3, 1, 28, 28) and images.y_test[entry["index"]] == int(entry["label"])
        for t in range(3):
            np.testing.assert_array_equal(inputs[t], images.x_test[entry["index"]])
