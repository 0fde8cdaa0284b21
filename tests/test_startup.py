"""``psn serve``'s start-up: the onnxruntime build decides the default providers, one warning per cause
(not per model), a model directory given as --models-dir says what to pass, and the last line names the
page, the API docs and the models ready."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from psn_runtime import available_providers
from server import cli
from server.app import build_app, runtime_config
from server.settings import BUNDLED_MODELS_DIR, Settings
from tests.fixtures import copy_models

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("models"), ("psn", "sliding_psn"))


def started(settings: Settings) -> Iterator[FastAPI]:
    app = build_app(settings)
    with TestClient(app):  # runs the lifespan: loads every model
        yield app


def test_default_providers_are_those_this_build_has() -> None:
    config = runtime_config(Settings())
    assert config.providers == [p for p in (CUDA, CPU) if p in available_providers()]


def test_providers_asked_for_by_name_are_kept() -> None:
    assert runtime_config(Settings(providers=f"{CUDA},{CPU}")).providers == [CUDA, CPU]


def test_one_warning_per_cause_naming_the_models(models: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CUDA asked for by name: on a host without a GPU (or a CPU build) every model falls back to the CPU,
    and the log says so once, not once per model."""
    caplog.set_level(logging.INFO)
    for _ in started(Settings(models_dir=models, providers=f"{CUDA},{CPU}")):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if CUDA in available_providers() and not any("driver" in w for w in warnings):
        pytest.skip("CUDA works on this host: nothing falls back")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("2 models (") and CUDA in warnings[0], warnings


def test_ready_line_names_the_page_the_docs_and_the_models(models: Path) -> None:
    for app in started(Settings(models_dir=models)):
        line = cli.ready_line(app, "0.0.0.0", 8123)
    assert line.startswith("ready: the page http://127.0.0.1:8123/, API docs http://127.0.0.1:8123/docs; ")
    names = sorted(p.name for p in models.iterdir() if (p / "manifest.json").is_file())
    assert line.endswith(f"2 of 2 models ready: {', '.join(names)}"), line


def test_ready_line_without_docs_when_there_is_a_key(models: Path) -> None:
    for app in started(Settings(models_dir=models, api_key="k" * 16)):
        line = cli.ready_line(app, "::", 8123)
    assert line.startswith("ready: the page http://[::1]:8123/; 2 of 2 models ready"), line
    assert "/docs" not in line


def test_a_model_directory_as_models_dir_says_what_to_pass() -> None:
    one = BUNDLED_MODELS_DIR / "smnist-psn"
    with pytest.raises(ValidationError, match=f"one model directory .*--models-dir {BUNDLED_MODELS_DIR}"):
        Settings(models_dir=one)


def test_serve_with_a_model_directory_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--models-dir", str(BUNDLED_MODELS_DIR / "smnist-psn")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("psn serve: --models-dir: "), err
