"""The tables of the ``runtime`` suite (kept apart from the measuring code in bench/runtime/suite.py)."""

from __future__ import annotations

from typing import Any

from bench import common


def tables(result: dict[str, Any]) -> str:
    out = [
        common.format_table(
            [
                "model",
                "batch",
                "raw ORT us/seq",
                "Runtime.classify us/seq",
                "ratio (goal <= 1.2)",
                "ratio of minima",
                "runtime-only us/call",
            ],
            [
                [
                    r["model"],
                    r["batch"],
                    r["raw_us_per_seq"],
                    r["runtime_us_per_seq"],
                    r["ratio"],
                    r["ratio_of_minima"],
                    r["runtime_only_us_per_call"],
                ]
                for r in result["classify"]
            ],
            title="classify: raw session.run vs Runtime.classify (same session, paired blocks), per sequence",
        )
    ]
    step_rows = []
    for r in result["steps"]:
        step_rows.append(
            [
                r["model"],
                r["streams"],
                "on" if r["batching"] else "off",
                r["us_per_step"],
                r["steps_per_s"],
                r["latency_p50_us"],
                r["latency_p99_us"],
            ]
        )
    out.append(
        common.format_table(
            ["model", "streams", "batching", "us/step", "steps/s", "latency p50 us", "p99 us"],
            step_rows,
            title="stream steps: closed-loop clients, one step in flight per stream",
        )
    )
    out.append(
        common.format_table(
            ["model", "streams", "speed-up from batching (goal >= 3 at 256)"],
            [[s["model"], s["streams"], s["speedup"]] for s in result["batching_speedup"]],
            title="steps/s with batching / without",
        )
    )
    out.append(
        common.format_table(
            ["model", "raw step.onnx us/step, batch 1", "raw us/step at max_batch"],
            [[r["model"], r["batch1_us"], r["max_batch_us"]] for r in result["raw_step"]],
            title=f"reference: raw session.run of step.onnx (max_batch = {result['config']['max_batch']})",
        )
    )
    return "\n\n".join(out)
