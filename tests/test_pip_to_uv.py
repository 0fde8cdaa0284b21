"""docker/pip_to_uv.py: pip's package sources handed to ``uv pip install`` as pip itself would take them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _uv_args(tmp_path: Path, env: dict[str, str]) -> list[str]:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nextra-index-url = file:///x/simple file:///y/simple\nfind-links = /from-file\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "pip_to_uv.py"), sys.executable],
        env=base | {"PIP_CONFIG_FILE": str(conf)} | env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def _values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_files_give_the_indexes_and_a_pip_variable_wins_over_them(tmp_path: Path) -> None:
    args = _uv_args(tmp_path, {})
    assert args[:2] == ["--index-strategy", "unsafe-best-match"]  # pip's best version over every index
    assert _values(args, "--extra-index-url") == ["file:///x/simple", "file:///y/simple"]
    assert _values(args, "--find-links") == ["/from-file"]

    args = _uv_args(tmp_path, {"PIP_FIND_LINKS": "/env-a /env-b", "PIP_NO_INDEX": "1"})
    assert _values(args, "--find-links") == ["/env-a", "/env-b"]
    assert _values(args, "--extra-index-url") == ["file:///x/simple", "file:///y/simple"]
    assert "--no-index" in args
