"""The model's raw ONNX Runtime cost: ``session.run`` alone, on sessions made the way the runtime makes them
(``psn_runtime.registry.load_model``: same options and providers), inputs random in [0, 1), the step
graph's new states fed back as the next ones. What the service cannot go below however thin the stack.

``measure`` gives, per model directory (microseconds, median per call, ``bench.common.time_interleaved``):
``full_b1_us`` (one classify request's graph), ``step_b1_us`` (one stream's step) and ``step_b64_us`` /
``step_b64_per_step_us`` (64 batched streams). ``measure_pinned`` runs it in a fresh process pinned to a
core (the server's): ``python -m bench.raw MODEL_DIR [MODEL_DIR] --seconds 1`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchError, time_interleaved

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


def full_call(model: Any, batch: int, seed: int = 0) -> Callable[[], object]:
    """One ``session.run`` of the full graph on a random [batch, T, *shape] input."""
    from psn_runtime.manifest import INPUT_NAME

    m = model.manifest
    x = np.random.default_rng(seed).random((batch, m.T, *m.input_shape), dtype=np.float32)  # [B, T, *shape]
    return lambda: model.full.run(None, {INPUT_NAME: x})


def step_call(model: Any, batch: int, seed: int = 0) -> Callable[[], object]:
    """One ``session.run`` of the step graph on [batch, *shape], the new states fed back each call."""
    from psn_runtime.manifest import INPUT_NAME

    m = model.manifest
    x = np.random.default_rng(seed).random((batch, *m.input_shape), dtype=np.float32)  # [B, *shape]
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
    root = str(Path(__file__).resolve().parents[1])
    cmd = [sys.executable, "-m", "bench.raw", *map(str, dirs), "--seconds", str(seconds)]
    if providers:
        cmd += ["--providers", ",".join(providers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120 + 10 * seconds * len(dirs),
        preexec_fn=None if core is None else (lambda: os.sched_setaffinity(0, {core})),
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"raw ORT measurement failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(line[len(MARKER) :])


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
