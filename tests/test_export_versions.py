"""``--out models/NAME/V`` writes version V of model NAME (Triton's numbered layout), which the runtime serves
beside the other versions without a warning."""

from __future__ import annotations

import shutil

import pytest

from exporters import export_model
from psn_runtime import ModelStatus
from psn_runtime.layout import place_of
from tests.fixtures import K, exported_models, make_runtime, tiny_model


def test_place_of_reads_name_and_version(tmp_path):
    assert place_of(tmp_path / "models" / "lif" / "2") == ("lif", "2")
    assert place_of(tmp_path / "models" / "lif") == ("lif", None)
    assert place_of(tmp_path / "models" / "lif" / "02") == ("02", None)  # not a version number


@pytest.mark.slow
def test_export_into_a_numbered_folder_writes_that_version(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported_models() / "sliding_psn", models / "sliding_psn" / "1")
    manifest = export_model(
        tiny_model("sliding_psn", K, seed=7),
        models / "sliding_psn" / "3",
        name="sliding_psn",
        dataset="random",
        test_accuracy=0.0,
        command="tests/test_export_versions.py",
    )
    assert (manifest.name, manifest.version) == ("sliding_psn", "3")
    info = make_runtime(models).model("sliding_psn")
    assert info.version == "3" and [(v.version, v.status) for v in info.versions] == [
        ("1", ModelStatus.READY),
        ("3", ModelStatus.READY),
    ]
    assert info.warnings == []
