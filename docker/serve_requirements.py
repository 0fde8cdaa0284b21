"""Print the serving requirements of pyproject.toml for one image variant, one requirement a line.

The package's own dependency list picks ONNX Runtime by a platform marker (onnxruntime-gpu on Linux
x86_64), which an image cannot override: the CPU image wants plain ``onnxruntime`` on x86_64 too, and the
GPU image wants ``onnxruntime-gpu[cuda,cudnn]`` (CUDA and cuDNN from PyPI). So the Dockerfile installs
what this prints, then the package itself with ``--no-deps``. The list is read from pyproject.toml at
build time, so it never drifts from it; only the ONNX Runtime line is replaced, keeping its version range.

    python3 docker/serve_requirements.py --variant cpu pyproject.toml > requirements.txt

Standard library only (tomllib, Python 3.11+): it runs on the image's bare Python before any install.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ORT_NAMES = ("onnxruntime", "onnxruntime-gpu")
VARIANT_ORT = {"gpu": "onnxruntime-gpu[cuda,cudnn]", "cpu": "onnxruntime"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def serve_requirements(pyproject: Path, variant: str) -> list[str]:
    """The base dependencies of ``pyproject`` with ONNX Runtime pinned to the variant's distribution."""
    if variant not in VARIANT_ORT:
        raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANT_ORT)}")
    data = tomllib.loads(pyproject.read_text())
    requirements: list[str] = []
    ort_specifier: str | None = None
    for line in data["project"]["dependencies"]:
        match = _NAME.match(line)
        if match is None:
            raise ValueError(f"cannot parse the requirement {line!r} in {pyproject}")
        name, _extras, specifier, _marker = match.groups()
        if _normalize(name) in ORT_NAMES:
            specifier = specifier.strip()
            if ort_specifier is not None and specifier != ort_specifier:
                raise ValueError(
                    f"onnxruntime version ranges differ in {pyproject}: {ort_specifier} vs {specifier}"
                )
            ort_specifier = specifier
            continue
        requirements.append(line.strip())
    if ort_specifier is None:
        raise ValueError(f"{pyproject} lists no onnxruntime dependency")
    requirements.append(VARIANT_ORT[variant] + ort_specifier)
    return requirements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANT_ORT), required=True)
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    try:
        lines = serve_requirements(args.pyproject, args.variant)
    except (OSError, KeyError, ValueError) as exc:
        print(f"serve_requirements: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
