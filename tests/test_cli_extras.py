"""Every ``psn`` command on a serving-only install (no torch, no onnx, no matplotlib...): ``--help`` works,
and a command that needs an extra says which in one line and exits 2, never with a traceback.

The serving-only install is simulated in-process: the extras' packages are hidden (``sys.modules[name] =
None`` makes ``import name`` fail as a missing package would), and this project's modules that import them
are dropped so that they are imported again under that condition."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from psn import cli, extras

HIDDEN = ("torch", "onnx", "onnxscript", "mlxtend", "mnist1d", "matplotlib", "safetensors", "tqdm")
KEEP = ("psn", "psn.cli", "psn.extras")


@pytest.fixture
def serving_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(sys.modules):
        top = name.split(".")[0]
        if top in HIDDEN or (top in ("psn", "exporters", "bench") and name not in KEEP):
            monkeypatch.delitem(sys.modules, name)
    for name in HIDDEN:
        monkeypatch.setitem(sys.modules, name, None)
    yield


def run(argv: list[str]) -> int:
    """``psn ARGV``'s exit status (argparse's --help exits through SystemExit, as in the real command)."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["train-zoo", "--help"],
        ["examples", "--help"],
        ["export", "--help"],
        ["serve", "--help"],
        ["bench", "--help"],
        *(["bench", suite, "--help"] for suite in ("neurons", "memory", "runtime", "serving", "transcript")),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_works_without_the_extras(
    serving_only: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: psn"), out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["train", "--dataset", "smnist", "--kind", "psn", "--out", "OUT"], "torch", "train"),
        (["train-zoo", "--net", "mnist2d_sliding_psn", "--out", "OUT"], "torch", "train"),
        (["export", "ckpt", "--out", "OUT"], "onnx", "train"),
        (["bench", "neurons"], "torch", "bench,train"),
        (["bench", "memory"], "torch", "bench,train"),
        (["bench", "all", "--quick"], "torch", "bench,train"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_command_that_needs_an_extra_says_which_in_one_line(
    serving_only: None,
    argv: list[str],
    missing: str,
    extra: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run([part.replace("OUT", str(tmp_path / "out")) for part in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"psn {argv[0]}") and f"needs {missing}" in lines[0], lines[0]
    assert f"pip install -e '.[{extra}]'" in lines[0], lines[0]


def test_the_message_names_each_package_and_its_extra() -> None:
    line = extras.missing_message("psn bench all", ["torch", "py-spy", "torch"], ("bench",))
    assert line.startswith("psn bench all: needs py-spy, torch, from the bench and train extras: ")
    assert "pip install -e '.[bench,train]'" in line
    assert "--no-deps spikingjelly==2.0.0" in extras.missing_message("psn export", "spikingjelly")


def test_serve_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 1024)", "(default: 8388608 (8 MiB))"):
        assert shown in out, shown
    assert out.count("(default: ") >= 20
