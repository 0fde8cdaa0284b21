"""The model's raw ONNX Runtime cost, measured on the server's core in the same run as the load: what the
service cannot go below however thin the stack around it.

- full graph, batch 1: one ``session.run`` on a [1, T, *shape] sequence (the cost of one classify request);
- step graph, batch 64: one ``session.run`` on [64, *shape] plus the 64 streams' states, divided by 64 (the
  cost of one step when 64 streams are batched);
- step graph, batch 1: one step of one stream (what a lone stream's round trip adds to the echo's).

Sessions are made the way the runtime makes them (``psn_runtime.registry.load_model``, same options and
providers), inputs are random in [0, 1), the step graph's outputs are fed back as the next states. Each
figure (microseconds) is the median of the calls made in ``--seconds`` after a warm-up.

Run pinned: ``taskset -c 0 python -m bench.serving.raw MODEL_DIR [MODEL_DIR] --seconds 1`` prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchError

STEP_BATCH = 64
MARKER = "PSN_RAW_JSON "


def _median_call_s(run, seconds: float, warmup: int = 20) -> tuple[float, int]:
    """Median wall time of one ``run()`` over ``seconds`` (at least 30 calls), and the number of calls."""
    for _ in range(warmup):
        run()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 30:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def measure(directory: Path, seconds: float, providers: list[str] | None) -> dict[str, Any]:
    from psn_runtime import RuntimeConfig
    from psn_runtime.manifest import INPUT_NAME
    from psn_runtime.registry import load_model, read_manifest

    manifest = read_manifest(directory)
    fields: dict[str, Any] = {"models_dir": directory.parent, "warmup": False}
    if providers:
        fields["providers"] = providers
    model = load_model(directory, manifest, RuntimeConfig(**fields))
    rng = np.random.default_rng(0)
    shape = tuple(manifest.input_shape)
    x_full = rng.random((1, manifest.T, *shape), dtype=np.float32)  # [1, T, *shape]
    full_s, full_n = _median_call_s(lambda: model.full.run(None, {INPUT_NAME: x_full}), seconds)
    out: dict[str, Any] = {
        "model": manifest.name,
        "kind": str(manifest.kind),
        "providers": model.providers,
        "full_b1_us": full_s * 1e6,
        "full_b1_calls": full_n,
    }
    if model.step is None:
        return out
    for batch in (1, STEP_BATCH):
        x = rng.random((batch, *shape), dtype=np.float32)  # [B, *shape]
        states = {s.input: np.full((batch, *s.shape), s.init, dtype=s.dtype) for s in manifest.states}
        outputs = [o.name for o in model.step.get_outputs()]
        feed_back = {s.output: s.input for s in manifest.states}

        def step(x=x, states=states, outputs=outputs, feed_back=feed_back) -> None:
            got = model.step.run(outputs, {INPUT_NAME: x, **states})
            for name, value in zip(outputs, got, strict=True):
                if name in feed_back:
                    states[feed_back[name]] = value

        call_s, calls = _median_call_s(step, seconds)
        out[f"step_b{batch}_us"] = call_s * 1e6
        out[f"step_b{batch}_per_step_us"] = call_s * 1e6 / batch
        out[f"step_b{batch}_calls"] = calls
    return out


def measure_pinned(
    dirs: list[Path], seconds: float, core: int | None, providers: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run ``measure`` for each model directory in a fresh process pinned to ``core`` (the server's)."""
    root = str(Path(__file__).resolve().parents[2])
    cmd = [sys.executable, "-m", "bench.serving.raw", *map(str, dirs), "--seconds", str(seconds)]
    if providers:
        cmd += ["--providers", ",".join(providers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    pre = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=root, timeout=120 + 10 * seconds * len(dirs),
        preexec_fn=pre, check=False,
    )  # fmt: skip
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"raw ORT measurement failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(line[len(MARKER) :])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving.raw", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="model directories (with manifest.json)")
    p.add_argument("--seconds", type=float, default=1.0, help="counted seconds per graph and batch")
    p.add_argument("--providers", default=None, help="execution providers (default: the runtime's)")
    args = p.parse_args(argv)
    providers = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    results = [measure(d, args.seconds, providers) for d in args.dirs]
    print(MARKER + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
