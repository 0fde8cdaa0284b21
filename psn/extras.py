"""Which optional extra (``train``, ``bench``, ``dev``) a missing package comes from, in one line.

A ``psn`` command that needs a package the serving install lacks (torch, onnx, matplotlib...) ends with
:func:`missing_message` on stderr and exit status 2, never a traceback. The extras are read from the
installed package's metadata (pyproject.toml's optional dependencies), so they never drift from it.
Standard library only: it runs where nothing but the serving dependencies is installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import metadata

DISTRIBUTION = "psn-serve"
OWN_PACKAGES = frozenset({"psn", "exporters", "psn_runtime", "server", "bench"})
# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"yaml": "pyyaml", "py_spy": "py-spy", "spikingjelly": "spikingjelly"}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*).*?extra\s*==\s*['\"]([\w-]+)['\"]")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def extras_by_distribution() -> dict[str, tuple[str, ...]]:
    """Distribution name (normalized) -> the extras that list it, from the installed metadata."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return {}
    found: dict[str, list[str]] = {}
    for line in requirements:
        match = _REQUIREMENT.match(line)
        if match:
            found.setdefault(_normalize(match[1]), []).append(match[2])
    return {name: tuple(extras) for name, extras in found.items()}


def missing_package(exc: ModuleNotFoundError) -> str | None:
    """The top-level package that ``exc`` says is missing, unless it is one of this project's own."""
    top = (exc.name or "").split(".")[0]
    return top if top and top not in OWN_PACKAGES else None


def missing_message(prog: str, packages: str | Iterable[str], extras: tuple[str, ...] = ()) -> str:
    """``psn bench neurons: needs torch, from the train extra: pip install -e '.[bench,train]' ...``."""
    names = sorted({packages} if isinstance(packages, str) else set(packages))
    dists = [_normalize(_DISTRIBUTIONS.get(name, name)) for name in names]
    if dists == ["spikingjelly"]:
        install = "pip install --no-deps spikingjelly==2.0.0"
        return f"{prog}: needs spikingjelly: {install} (make test's venv has it)"
    table = extras_by_distribution()
    owners = sorted({extra for dist in dists for extra in table.get(dist, ())})
    wanted = sorted({*extras, *owners}) or ["train", "bench"]
    plural = "s" if len(owners) > 1 else ""
    where = f"the {' and '.join(owners)} extra{plural}" if owners else "an optional extra"
    install = f"pip install -e '.[{','.join(wanted)}]'"
    return f"{prog}: needs {', '.join(names)}, from {where}: {install} (make test's venv has it)"
