"""Load a user network for ``psn export --module``: FUNCTION from ``FILE.py`` or ``package.module``
builds it (no arguments), then its weights are loaded from ``.safetensors`` or from a ``.pt`` state_dict
with ``torch.load(weights_only=True)`` (no pickled code runs)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from exporters.errors import ExportError


def _import(spec: str):
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise ExportError(f"--module {spec!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise ExportError(f"--module {spec!r}: no file {target}")
        name = f"psn_export_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))  # its sibling modules import as they would from a script
        try:
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ExportError(f"--module {spec!r}: importing {target} failed: {exc!r}") from exc
        finally:
            sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ExportError(f"--module {spec!r}: cannot import {target}: {exc!r}") from exc
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ExportError(f"--module {spec!r}: {target} has no function {func}")
    return fn


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ExportError(f"--weights {str(path)!r}: not a safetensors file: {exc}") from exc
    if path.suffix not in (".pt", ".pth"):
        raise ExportError(f"--weights {str(path)!r}: expected a .safetensors or .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled code, anything for a corrupt file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"--weights {str(path)!r}: cannot be loaded with weights_only=True (a state_dict of tensors "
            f"only; pickled code is refused): {first}"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ExportError(f"--weights {str(path)!r}: expected a state_dict (names -> tensors)")
    return state


def load_network(spec: str, weights: Path | None) -> nn.Module:
    fn = _import(spec)
    try:
        net = fn()
    except Exception as exc:
        raise ExportError(f"--module {spec!r}: calling it failed: {exc!r}") from exc
    if not isinstance(net, nn.Module):
        raise ExportError(f"--module {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            net.load_state_dict(load_weights(weights))
        except RuntimeError as exc:
            raise ExportError(f"--weights {str(weights)!r} do not fit the network: {exc}") from exc
    return net.eval()
