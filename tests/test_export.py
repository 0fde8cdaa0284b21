"""Exporter: graph structure (node counts independent of T), variable length, manifest, atomic writes,
refusals, and the ``psn export`` command line."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters import ExportCheckFailed, ExportError, build, export_checkpoint, export_model
from exporters import cli as export_cli
from exporters import export as export_mod
from exporters.build import build_full, build_step
from exporters.checks import session
from exporters.graph import OPSET, count_nodes
from exporters.prepare import prepare
from psn.checkpoint import save_checkpoint
from psn.network import SeqClassifier, count_parameters
from psn_runtime.manifest import Manifest
from tests.fixtures import exported_models
from tests.nets import tiny_model

KINDS = [("psn", None), ("masked_psn", 3), ("sliding_psn", 3), ("lif", None)]
META = {"name": "tiny", "dataset": "smnist", "test_accuracy": 0.5, "command": "psn train --dataset smnist"}


def _shift(outputs: tuple, by: float) -> tuple:
    """The full graph's (logits, step_logits, *spikes) with both logits moved by ``by``."""
    logits, step_logits, *spikes = outputs
    return (logits + by, step_logits + by, *spikes)


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


# ------------------------------------------------------------------------------------------ structure


@functools.cache
def _full(kind: str, T: int, k: int | None, arch: str) -> tuple[SeqClassifier, onnx.ModelProto]:
    """A tiny SeqClassifier and its full graph as export_model builds it, once per module for each."""
    model = tiny_model(kind, T, k, arch)
    p = prepare(model, (model.cfg.features,), T)
    return model, build_full(p, kind in ("sliding_psn", "lif"))


def _step(kind: str, T: int, k: int | None, arch: str) -> build.StepGraph:
    model = tiny_model(kind, T, k, arch)
    return build_step(prepare(model, (model.cfg.features,), T))


@pytest.mark.slow
@pytest.mark.parametrize("kind,k", KINDS)
def test_node_count_does_not_grow_with_T(kind: str, k: int | None) -> None:
    """The full graph (the only one holding T-sized constants) has the same nodes at T = 6 and 28."""
    counts = []
    for T in (6, 28):
        model, full = _full(kind, T, k, "conv")
        counts.append(count_nodes(full.graph))
        ops = _ops(full)
        layers = len(model.neurons())
        assert "Loop" not in ops and "BatchNormalization" not in ops  # BatchNorm folded
        assert not any(o.domain for o in full.opset_import)  # no custom op left
        if kind == "lif":
            assert ops["Scan"] == layers
        else:  # one MatMul per neuron layer, nothing per step
            assert ops["MatMul"] >= layers and "Scan" not in ops
    assert counts[0] == counts[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind,k", [("sliding_psn", 3), ("lif", None)])
def test_variable_length_full_graph(kind: str, k: int | None) -> None:
    T = 28  # the graph of test_node_count_does_not_grow_with_T
    model, full = _full(kind, T, k, "conv")
    sess = session(full)
    rng = np.random.default_rng(0)
    for steps in (1, 3, 7, T):
        x = rng.standard_normal((3, steps, model.cfg.features)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x).transpose(0, 1)).transpose(0, 1).numpy()
        logits, step_logits = sess.run(None, {"x": x})
        assert step_logits.shape == (3, steps, model.cfg.classes)
        np.testing.assert_allclose(step_logits, ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logits, ref.mean(1), rtol=1e-4, atol=1e-4)
    if kind == "sliding_psn":  # the Toeplitz matrix is built for T: a longer input is refused
        with pytest.raises(Exception, match=r"MatMul|Slice|Reshape"):
            sess.run(None, {"x": np.zeros((1, T + 1, model.cfg.features), np.float32)})


def test_the_operator_registry_is_built_once_and_lent_only_during_an_export(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build._registry_once: torch.onnx's registry of torchlib functions is built once per process and opset
    (onnxscript re-parses ~1,000 functions' source for it on every export); each export gets its own copy,
    and the class's own method is back afterwards."""
    cls = importlib.import_module(build._REGISTRATION).ONNXRegistry
    built: list[dict] = []

    def counting(c, *args, **kwargs):
        built.append(kwargs)
        return torch_builds(*args, **kwargs)

    torch_builds = cls.from_torchlib
    monkeypatch.setattr(cls, "from_torchlib", classmethod(counting))
    monkeypatch.setattr(build, "_REGISTRIES", {})
    own = cls.__dict__["from_torchlib"]
    with build._registry_once():
        first, again = cls.from_torchlib(opset_version=OPSET), cls().from_torchlib(opset_version=OPSET)
    assert cls.__dict__["from_torchlib"] is own
    assert built == [{"opset_version": OPSET}]
    assert first is not again and first.functions is not again.functions  # copies: one export's own
    assert first.opset_version == again.opset_version == OPSET
    fresh = cls.from_torchlib(opset_version=OPSET)
    assert len(first.functions) > 400
    assert {t: [m.onnx_function for m in ms] for t, ms in first.functions.items()} == {
        t: [m.onnx_function for m in ms] for t, ms in fresh.functions.items()
    }


def test_fixed_length_full_graph_refuses_other_T() -> None:
    model, full = _full("psn", 6, None, "conv")
    sess = session(full)
    with pytest.raises(Exception, match=r"dimensions|Got invalid"):
        sess.run(None, {"x": np.zeros((2, 4, model.cfg.features), np.float32)})


@pytest.mark.slow
def test_graph_io() -> None:
    _, full = _full("masked_psn", 6, 3, "conv")
    step = _step("masked_psn", 6, 3, "conv")

    def io(values) -> dict:
        return {
            v.name: (
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert io(full.graph.input) == {"x": (f, ["N", 6, 8])}
    assert io(full.graph.output) == {"logits": (f, ["N", 5]), "step_logits": (f, ["N", 6, 5])}
    assert io(step.model.graph.input) == {
        "x": (f, ["N", 8]),
        "state_0": (f, ["N", 2, 4, 8]),
        "state_1": (f, ["N", 2, 4, 4]),
        "state_2": (f, ["N", 2, 16]),
        "t": (i64, ["N"]),
    }
    assert list(io(step.model.graph.output)) == [
        "logits",
        "state_0_out",
        "state_1_out",
        "state_2_out",
        "t_out",
    ]
    assert [(s.input, s.output, s.shape, s.dtype) for s in step.states] == [
        ("state_0", "state_0_out", (2, 4, 8), "float32"),
        ("state_1", "state_1_out", (2, 4, 4), "float32"),
        ("state_2", "state_2_out", (2, 16), "float32"),
        ("t", "t_out", (), "int64"),
    ]
    assert full.opset_import[0].version == OPSET
    lif_step = _step("lif", 6, None, "mlp")
    assert [(s.input, s.shape) for s in lif_step.states] == [("state_0", (16,)), ("state_1", (16,))]


def test_masked_psn_below_lambda_one_is_refused(tmp_path: Path) -> None:
    model = tiny_model("masked_psn", 6, 2, "mlp")
    model.set_lambda(0.5)
    with pytest.raises(ExportError, match=r"λ = 0\.5"):
        export_model(model, tmp_path / "m", **META)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ manifest


@pytest.mark.slow
@pytest.mark.parametrize("kind,k", KINDS)
def test_manifest(tmp_path: Path, kind: str, k: int | None) -> None:
    model = tiny_model(kind, 6, k, "mlp")
    out = tmp_path / "model"
    written = export_model(model, out, **META)
    manifest = Manifest.load(out)
    assert manifest == written
    streams = kind != "psn"
    files = {"full.onnx", "step.onnx"} if streams else {"full.onnx"}
    assert set(manifest.sha256) == files
    assert {p.name for p in out.iterdir()} == files | {"manifest.json"}
    for name, digest in manifest.sha256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert (manifest.name, manifest.kind.value, manifest.T, manifest.k) == ("tiny", kind, 6, k)
    assert [n.value for n in manifest.neurons] == [kind] * len(model.neurons())
    assert (manifest.features, manifest.labels) == (8, ["0", "1", "2", "3", "4"])
    assert manifest.streams is streams
    assert manifest.variable_length is (kind in ("sliding_psn", "lif"))
    assert manifest.max_steps == (6 if kind == "masked_psn" else None)
    assert (manifest.opset, manifest.dataset, manifest.test_accuracy) == (OPSET, "smnist", 0.5)
    assert manifest.parameters == count_parameters(model)
    assert manifest.command == META["command"]
    assert len(manifest.states) == (0 if not streams else 2 + (kind == "masked_psn"))
    if streams:  # the states declared in the manifest are exactly the step graph's extra inputs/outputs
        step = onnx.load(str(out / "step.onnx"))
        assert [i.name for i in step.graph.input][1:] == [s.input for s in manifest.states]
        assert [o.name for o in step.graph.output][1:] == [s.output for s in manifest.states]


def _checkpoint(tmp_path: Path, model: SeqClassifier, **metrics) -> Path:
    metrics = {"dataset": "smnist", "test_accuracy": 0.75, "command": "psn train --dataset smnist"} | metrics
    return save_checkpoint(model, tmp_path / "models" / "tiny-sliding" / "checkpoint", metrics)


@pytest.mark.slow
def test_export_checkpoint_into_its_model_dir(tmp_path: Path) -> None:
    model = tiny_model("sliding_psn", 6, 3, "conv")
    ckpt = _checkpoint(tmp_path, model)
    out = ckpt.parent
    (out / "step.onnx").write_bytes(b"stale")
    manifest = export_checkpoint(ckpt, out)
    assert manifest.name == "tiny-sliding"
    assert manifest.test_accuracy == 0.75
    assert manifest.command == f"psn train --dataset smnist && psn export {ckpt} --out {out}"
    assert {p.name for p in out.iterdir()} == {"checkpoint", "manifest.json", "full.onnx", "step.onnx"}
    assert {p.name for p in ckpt.iterdir()} == {"weights.safetensors", "config.json", "metrics.json"}
    assert hashlib.sha256((out / "step.onnx").read_bytes()).hexdigest() == manifest.sha256["step.onnx"]


@pytest.mark.slow
def test_failed_check_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = exported_models() / "lif"  # exported (once per session) before the patch below
    model = tiny_model("lif", 6, None, "mlp")
    out = tmp_path / "model"
    original = build._Full.forward  # the graph's logits drift from the module's
    monkeypatch.setattr(build._Full, "forward", lambda self, x: _shift(original(self, x), 0.01))
    with pytest.raises(ExportCheckFailed, match="'full_vs_torch' failed: logits differ") as exc:
        export_model(model, out, **META)
    assert exc.value.check == "full_vs_torch"
    assert not out.exists()

    # an existing model directory is left exactly as it was
    shutil.copytree(existing, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(build._Full, "forward", lambda self, x: _shift(original(self, x), 0.01))
    with pytest.raises(ExportCheckFailed):
        export_model(tiny_model("lif", 6, None, "mlp", seed=1), out, **META)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "field,value,reason",
    [("name", "no spaces", "should match pattern"), ("test_accuracy", 1.5, "less than or equal to 1")],
)
def test_bad_metadata_is_refused_before_any_graph_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: object, reason: str
) -> None:
    def built(*args):
        raise AssertionError("a graph was built")

    monkeypatch.setattr(export_mod, "build_full", built)
    with pytest.raises(ExportError, match=rf"invalid manifest: {field}={value!r}: .*{reason}"):
        export_model(tiny_model("psn", 4, None, "mlp"), tmp_path / "m", **(META | {field: value}))
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------------ CLI


@pytest.mark.slow
def test_cli_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path, tiny_model("masked_psn", 6, 3, "mlp"))
    out = tmp_path / "out"
    assert export_cli.main([str(ckpt), "--out", str(out), "--name", "renamed"]) == 0
    printed = capsys.readouterr().out
    assert "step_vs_full" in printed and "renamed (masked_psn, T=6, k=3" in printed
    manifest = Manifest.load(out)
    assert manifest.name == "renamed"
    assert manifest.command.endswith(f"psn export {ckpt} --out {out} --name renamed")


def test_cli_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = export_cli.main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = _checkpoint(tmp_path, tiny_model("psn", 6, None, "mlp"))
    original = build._Full.forward
    monkeypatch.setattr(build._Full, "forward", lambda self, x: _shift(original(self, x), 0.5))
    code = export_cli.main([str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "export check 'full_vs_torch' failed" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path, tiny_model("psn", 6, None, "mlp"))
    metrics = json.loads((ckpt / "metrics.json").read_text())
    del metrics["dataset"]
    (ckpt / "metrics.json").write_text(json.dumps(metrics))
    assert export_cli.main([str(ckpt), "--out", str(tmp_path / "out")]) == 2
    assert "has no 'dataset'" in capsys.readouterr().err
