"""The model's raw ONNX Runtime cost: ``session.run`` alone on sessions made as the runtime makes them, the
step graph's states fed back (``full_b1_us``, ``step_b1_us``, ``step_b64_us``, ``step_b64_per_step_us``).
``measure_pinned``: in a fresh process pinned to a core (``python -m bench.raw MODEL_DIR... --seconds 1``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import run_module, time_interleaved

STEP_BATCH = 64
MARKER = "PSN_RAW_JSON "


def load(directory: Path, providers: list[str] | None = None, threads: int | None = None) -> Any:
    """A psn_runtime LoadedModel (manifest, full and step sessions) for one model directory, no warm-up."""
    from psn_runtime import RuntimeConfig
    from psn_runtime.registry import load_model, read_manifest

    fields: dict[str, Any] = {"models_dir": Path(directory).parent, "warmup": False}
    if providers:
        fields["providers"] = providers
    if threads is not None:
        fields["intra_op_threads"] = threads
    return load_model(Path(directory), read_manifest(Path(directory)), RuntimeConfig(**fields))


def full_call(model: Any, batch: int) -> Callable[[], object]:
    """One ``session.run`` of the full graph on a random [batch, T, *shape] input."""
    from psn_runtime.manifest import INPUT_NAME

    m = model.manifest
    x = np.random.default_rng(0).random((batch, m.T, *m.input_shape), dtype=np.float32)  # [B, T, *shape]
    return lambda: model.full.run(None, {INPUT_NAME: x})


def step_call(model: Any, batch: int) -> Callable[[], object]:
    """One ``session.run`` of the step graph on [batch, *shape], the new states fed back each call."""
    from psn_runtime.manifest import INPUT_NAME

    m = model.manifest
    x = np.random.default_rng(0).random((batch, *m.input_shape), dtype=np.float32)  # [B, *shape]
    states = {s.input: np.full((batch, *s.shape), s.init, dtype=s.dtype) for s in m.states}
    outputs = [o.name for o in model.step.get_outputs()]
    feed_back = {s.output: s.input for s in m.states}

    def step() -> None:
        for name, value in zip(outputs, model.step.run(outputs, {INPUT_NAME: x, **states}), strict=True):
            if name in feed_back:
                states[feed_back[name]] = value

    return step


def measure(directory: Path, seconds: float, providers: list[str] | None = None) -> dict[str, Any]:
    model = load(directory, providers)
    fns = {"full_b1": full_call(model, 1)}
    if model.step is not None:
        fns |= {"step_b1": step_call(model, 1), f"step_b{STEP_BATCH}": step_call(model, STEP_BATCH)}
    times = time_interleaved(fns, budget_s=seconds * len(fns), max_repeats=1000)
    out: dict[str, Any] = {
        "model": model.manifest.name,
        "kind": str(model.manifest.kind),
        "providers": model.providers,
    }
    for name, t in times.items():
        out[f"{name}_us"] = t.median_s * 1e6
        out[f"{name}_calls"] = t.repeats * t.inner
    if model.step is not None:
        out[f"step_b{STEP_BATCH}_per_step_us"] = out[f"step_b{STEP_BATCH}_us"] / STEP_BATCH
    return out


def measure_pinned(
    dirs: list[Path], seconds: float, core: int | None, providers: list[str] | None = None
) -> list[dict[str, Any]]:
    """``measure`` for each model directory in a fresh process pinned to ``core`` (the server's)."""
    args = [*map(str, dirs), "--seconds", str(seconds)] + (
        ["--providers", ",".join(providers)] if providers else []
    )
    return run_module("bench.raw", args, MARKER, 120 + 10 * seconds * len(dirs), core)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="model directories (with manifest.json)")
    p.add_argument("--seconds", type=float, default=1.0, help="counted seconds per graph and batch")
    p.add_argument("--providers", default=None, help="execution providers (default: the runtime's)")
    args = p.parse_args(argv)
    providers = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    print(MARKER + json.dumps([measure(d, args.seconds, providers) for d in args.dirs]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
