"""bench/runtime/suite.py runs end to end on the tiny test models (a smoke test: no assertion on speed)."""

from __future__ import annotations

import json

from bench.runtime import suite as bench_runtime
from tests.fixtures import exported_models


def test_runtime_bench_quick(tmp_path, capsys):
    argv = ["--quick", "--quiet", "--budget", "0.05", "--providers", "CPUExecutionProvider"]
    assert bench_runtime.main([*argv, "--models-dir", str(exported_models()), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Runtime.classify" in out and "speed-up from batching" in out
    result = json.loads((tmp_path / "bench-runtime.json").read_text())
    assert [(r["batch"]) for r in result["classify"]] == [1, 64]
    assert all(r["raw_us_per_seq"] > 0 and r["runtime_us_per_seq"] > 0 for r in result["classify"])
    steps = {(r["streams"], r["batching"]): r for r in result["steps"]}
    assert set(steps) == {(n, b) for n in (1, 16, 256) for b in (True, False)}
    assert all(r["steps"] > 0 and r["steps_per_s"] > 0 for r in steps.values())
    assert [s["streams"] for s in result["batching_speedup"]] == [1, 16, 256]
    assert result["environment"]["models"]
