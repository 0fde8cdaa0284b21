"""psn_runtime registry: loading model directories, providers, and refusing broken ones with a reason."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pydantic
import pytest

from psn_runtime import ModelStatus, RuntimeConfig, available_providers
from psn_runtime.errors import ModelLoadError, ModelNotReady, UnknownModel
from tests.fixtures import KINDS, STREAMING, copy_models, exported_models, make_runtime, sequences


def _edit_manifest(model_dir, **changes) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_loads_every_kind_and_reports_providers():
    rt = make_runtime(exported_models())
    assert rt.loaded
    infos = {i.name: i for i in rt.models()}
    assert sorted(infos) == sorted(KINDS)
    for name, info in infos.items():
        assert info.status is ModelStatus.READY, info.error
        assert info.error is None
        assert info.manifest is not None and info.manifest.kind == name
        expected_graphs = {"full.onnx", "step.onnx"} if name in STREAMING else {"full.onnx"}
        assert set(info.providers) == expected_graphs
        for got in info.providers.values():
            assert got == ["CPUExecutionProvider"]
        assert info.warnings == []
    assert rt.model("psn").manifest.streams is False
    assert rt.model("masked_psn").manifest.max_steps == 8


def test_cuda_fallback_is_reported():
    """onnxruntime-gpu on a host without a GPU (or its libraries) silently runs on CPU: we say so."""
    rt = make_runtime(exported_models(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    info = rt.model("lif")
    assert info.status is ModelStatus.READY
    for graph, got in info.providers.items():
        assert (
            got
            == ort.InferenceSession(
                str(info.directory / graph), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
            ).get_providers()
        )
    if "CUDAExecutionProvider" not in info.providers["full.onnx"]:
        assert any("CUDAExecutionProvider" in w for w in info.warnings), info.warnings
    assert set(available_providers()) == set(ort.get_available_providers())


def test_nested_and_stray_folders_are_ignored(tmp_path):
    models = copy_models(tmp_path / "models", ("psn", "lif"))
    (models / "notes").mkdir()
    (models / "notes" / "readme.txt").write_text("not a model")
    shutil.copytree(models / "lif", models / "psn" / "checkpoint")  # nested: never scanned
    (models / "stray.json").write_text("{}")
    rt = make_runtime(models)
    assert [i.name for i in rt.models()] == ["lif", "psn"]
    assert all(i.status is ModelStatus.READY for i in rt.models())


def test_broken_models_fail_with_reason_and_others_load(tmp_path):
    kinds = ("psn", "masked_psn", "sliding_psn", "lif")
    models = copy_models(tmp_path / "models", kinds)
    # sha256 mismatch: one byte of step.onnx flipped
    step = models / "sliding_psn" / "step.onnx"
    data = bytearray(step.read_bytes())
    data[len(data) // 2] ^= 0xFF
    step.write_bytes(bytes(data))
    # corrupt ONNX whose sha256 matches the manifest (so only ORT can refuse it)
    shutil.copytree(models / "psn", models / "corrupt")
    (models / "corrupt" / "full.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    import hashlib

    _edit_manifest(
        models / "corrupt",
        name="corrupt",
        sha256={"full.onnx": hashlib.sha256((models / "corrupt" / "full.onnx").read_bytes()).hexdigest()},
    )
    # bad manifest JSON
    shutil.copytree(models / "psn", models / "badjson")
    (models / "badjson" / "manifest.json").write_text("{not json")
    # missing step graph
    shutil.copytree(models / "lif", models / "nostep")
    _edit_manifest(models / "nostep", name="nostep")
    (models / "nostep" / "step.onnx").unlink()
    # graph I/O not matching the manifest: 6 features claimed, the graphs take 5
    shutil.copytree(models / "lif", models / "wrongf")
    _edit_manifest(models / "wrongf", name="wrongf", input_shape=[6], features=6)
    # a state name the step graph does not have
    shutil.copytree(models / "masked_psn", models / "wrongstate")
    manifest = json.loads((models / "wrongstate" / "manifest.json").read_text())
    manifest["states"][0]["input"] = "no_such_input"
    _edit_manifest(models / "wrongstate", name="wrongstate", states=manifest["states"])

    rt = make_runtime(models)
    infos = {i.name: i for i in rt.models()}
    assert infos["psn"].status is ModelStatus.READY
    assert infos["masked_psn"].status is ModelStatus.READY
    assert infos["lif"].status is ModelStatus.READY
    failed = {n: i.error for n, i in infos.items() if i.status is ModelStatus.FAILED}
    assert set(failed) == {"sliding_psn", "corrupt", "badjson", "nostep", "wrongf", "wrongstate"}
    assert "sha256 mismatch for step.onnx" in failed["sliding_psn"]
    assert "onnxruntime cannot load full.onnx" in failed["corrupt"]
    assert failed["badjson"].startswith("bad manifest:")
    assert infos["badjson"].manifest is None
    assert "missing file step.onnx" in failed["nostep"]
    assert "should be 6 per the manifest" in failed["wrongf"]
    assert "lacks input ['no_such_input']" in failed["wrongstate"]
    assert infos["sliding_psn"].manifest is not None and infos["sliding_psn"].providers == {}

    with pytest.raises(ModelNotReady, match="sha256 mismatch"):
        rt.classify("sliding_psn", sequences(1))
    with pytest.raises(UnknownModel):
        rt.model("nope")
    assert rt.classify("psn", sequences(2)).logits.shape == (2, 3)


def test_duplicate_model_name_fails_the_second(tmp_path):
    models = copy_models(tmp_path / "models", ("lif",))
    shutil.copytree(models / "lif", models / "lif_copy")
    rt = make_runtime(models)
    infos = {i.name: i for i in rt.models()}
    assert infos["lif"].status is ModelStatus.READY
    assert infos["lif_copy"].status is ModelStatus.FAILED
    assert "duplicate model name 'lif'" in infos["lif_copy"].error


def test_fixed_batch_axis_is_refused(tmp_path):
    import onnx

    models = copy_models(tmp_path / "models", ("psn",))
    path = models / "psn" / "full.onnx"
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch fixed to 1
    onnx.save(proto, str(path))
    import hashlib

    _edit_manifest(models / "psn", sha256={"full.onnx": hashlib.sha256(path.read_bytes()).hexdigest()})
    rt = make_runtime(models)
    assert rt.model("psn").status is ModelStatus.FAILED
    assert "fixed batch axis" in rt.model("psn").error


def test_missing_models_dir_and_config_validation(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        make_runtime(tmp_path / "nowhere")
    for bad in (
        {"providers": ["NoSuchExecutionProvider"]},
        {"providers": []},
        {"max_batch": 0},
        {"max_wait_ms": -1},
        {"idle_timeout_s": 0},
        {"intra_op_threads": -1},
        {"max_queue": 0},
        {"no_such_option": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            RuntimeConfig(models_dir=tmp_path, **bad)
    cfg = RuntimeConfig(models_dir=tmp_path)
    assert cfg.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(pydantic.ValidationError):
        cfg.max_batch = 3  # frozen


def test_without_warmup_and_empty_dir(tmp_path):
    rt = make_runtime(exported_models(), warmup=False)
    assert all(i.status is ModelStatus.READY for i in rt.models())
    x = sequences(3)
    assert np.isfinite(rt.classify("masked_psn", x).logits).all()
    empty = make_runtime(tmp_path)
    assert empty.loaded and empty.models() == []


def test_runtime_imports_neither_torch_nor_fastapi():
    import subprocess
    import sys

    code = (
        "import sys, psn_runtime, psn_runtime.runtime, psn_runtime.streams; "
        "bad = [m for m in ('torch', 'fastapi', 'onnx', 'prometheus_client') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
