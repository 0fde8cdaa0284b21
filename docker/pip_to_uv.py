"""Print the ``uv pip install`` options that carry this machine's pip settings over to uv.

``make test`` installs its venv with uv (parallel downloads, one resolve for every requirement) but the
machine's package sources are pip's to say: its config files and ``PIP_*`` variables (``pip config list``
shows both). This maps the ones that choose where packages come from:

    index-url -> --default-index     extra-index-url -> --extra-index-url     find-links -> --find-links
    constraint -> --constraints      no-index -> --no-index

and asks uv to pick the best version across every index, as pip does (uv's own default stops at the
first index that has a package). Usage: ``uv pip install $(python docker/pip_to_uv.py) ...``
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's option -> uv's (a list: one uv flag per value)
_MAPPED = {
    "index-url": "--default-index",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraints",
}


def pip_settings(python: str) -> dict[str, list[str]]:
    """pip's settings as ``pip config list`` prints them (``global.find-links='a b'``,
    ``:env:.find-links='a'``): each option's values, taken as pip takes them: a ``PIP_*`` variable over any
    file, and a file listed later over an earlier one."""
    out = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    files: dict[str, list[str]] = {}
    env: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            source, _, option = key.rpartition(".")
            (env if source == ":env:" else files)[option] = " ".join(shlex.split(value)).split()
    return files | env


def uv_args(settings: dict[str, list[str]]) -> list[str]:
    args = ["--index-strategy", "unsafe-best-match"]
    for option, flag in _MAPPED.items():
        for value in settings.get(option, []):
            args += [flag, value]
    if any(v.lower() in {"1", "true", "yes", "on"} for v in settings.get("no-index", [])):
        args.append("--no-index")
    return args


if __name__ == "__main__":
    print(shlex.join(uv_args(pip_settings(sys.argv[1] if len(sys.argv) > 1 else sys.executable))))
