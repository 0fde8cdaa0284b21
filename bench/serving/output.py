"""What the serving suite leaves behind: tables on stdout, the JSON of raw numbers, the PNG plots."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from bench.common import write_json
from bench.serving.limit import limit_goals, limit_rate, limit_rows, limit_table
from bench.serving.report import (
    GOAL_P99_32_MS,
    GOAL_RPS_32,
    GOAL_STEPS_256,
    classify_table,
    first_output_table,
    goals,
    goals_table,
    profile_text,
    rtt_table,
    streams_table,
    threads_table,
)


def clean(value: Any, digits: int = 4) -> Any:
    """JSON-safe: NaN/inf -> None, floats rounded, tuples -> lists, recursively."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v, digits) for v in value]
    return value


def report(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Print the tables, write out_dir/stem.json and the plots; returns the files written."""
    classify = results.get("classify", {}).get("rows", [])
    streams = results.get("streaming", {}).get("rows", [])
    first = results.get("first_output")
    blocks = []
    limits = limit_rows(results)
    results["limit"] = [r.to_json() for r in limits]
    rounds = results.get("plan", {}).get("rounds", 1)
    if rounds > 1:
        blocks.append(f"every load point ran {rounds} times, interleaved; the tables show its fastest round")
    if classify:
        c = results["classify"]
        blocks.append(classify_table(classify) + f"\n(model {c['model']}, body bytes {c['body_bytes']})")
    if streams:
        s = results["streaming"]
        blocks.append(rtt_table(streams) + f"\n(model {s['model']}, kind {s['kind']})")
        blocks.append(streams_table(streams))
    if classify or streams:
        blocks.append(threads_table(classify, streams))
    if first:
        blocks.append(
            first_output_table(first["kinds"], first["period_ms"]) + f"\n(inputs: {first['inputs']})"
        )
    if limits:
        raw = results.get("raw", {}).get("models", [])
        blocks.append(limit_table(limits) + f"\n(raw ORT per model: {_raw_note(raw)})")
    if results.get("workers"):
        from bench.serving.scaling import workers_table

        blocks.append(workers_table(results["workers"]))
    goal_items = [*limit_goals(limits), *goals(classify, streams)]
    results["goals"] = [g.to_json() for g in goal_items]
    blocks.append(goals_table(goal_items))
    if results.get("profile"):
        blocks.append(profile_text(results["profile"]))
    env = results["environment"]
    blocks.append(
        f"{env['pinning']}; load average {env['loadavg_start']} at start, {env.get('loadavg_end')} at end; "
        f"{env.get('wall_s')} s"
    )
    print("\n\n".join(blocks), flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.json"]
    write_json(written[0], clean(results))
    try:
        written += _plots(results, out_dir, stem)
    except ModuleNotFoundError as exc:  # matplotlib is a training/dev extra
        print(f"psn bench serving: no plots ({exc})", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return written


def _raw_note(models: list[dict[str, Any]]) -> str:
    parts = []
    for m in models:
        text = f"{m['model']}: full b1 {m['full_b1_us']:.1f} us"
        if "step_b64_per_step_us" in m:
            text += (
                f", step b1 {m['step_b1_us']:.1f} us, step b64 {m['step_b64_us']:.1f} us "
                f"({m['step_b64_per_step_us']:.2f} us/step)"
            )
        parts.append(text)
    return "; ".join(parts)


def _classify_limits(results: dict[str, Any]) -> dict[int, float]:
    """Per connection count, the limit of JSON batch-1 classify: 1 / (1/echo rate + full graph cost)."""
    c = results.get("classify", {})
    raw = {m["kind"]: m for m in results.get("raw", {}).get("models", [])}
    full_us = raw.get(c.get("kind"), {}).get("full_b1_us")
    full_s = None if full_us is None else full_us / 1e6
    out = {}
    for r in c.get("rows", []):
        if r["target"] == "echo" and r.get("format") == "json" and r["batch"] == 1:
            lim = limit_rate(r["rps"], full_s)
            if lim is not None:
                out[r["connections"]] = lim
    return out


def _plots(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    from bench.serving.limit import limit_plot
    from bench.serving.plots import classify_plot, first_output_plot, streams_plot

    env = results["environment"]
    where = f"server on 1 core ({env['cpu']}), load avg {env['loadavg_start']}"
    written = []
    limits = [r for r in results.get("limit", [])]
    if limits:
        from bench.serving.limit import LimitRow

        path = out_dir / f"{stem}-limit.png"
        limit_plot([LimitRow(**r) for r in limits], f"service, echo and limit, same run, {where}", path)
        written.append(path)
    if results.get("classify", {}).get("rows"):
        c = results["classify"]
        path = out_dir / f"{stem}-classify.png"
        classify_plot(
            c["rows"], GOAL_RPS_32, GOAL_P99_32_MS, f"POST classify ({c['model']}) vs echo, {where}", path,
            limit_rps=_classify_limits(results),
        )  # fmt: skip
        written.append(path)
    if results.get("streaming", {}).get("rows"):
        s = results["streaming"]
        path = out_dir / f"{stem}-streams.png"
        streams_plot(s["rows"], GOAL_STEPS_256, f"WebSocket steps ({s['model']}), {where}", path)
        written.append(path)
    if results.get("first_output"):
        f = results["first_output"]
        path = out_dir / f"{stem}-latency.png"
        title = (
            "first output: a PSN answers after all T steps, masked and sliding PSNs and LIF after each step"
            f"\n{where}"
        )
        first_output_plot(f["kinds"], f["period_ms"], title, path)
        written.append(path)
    return written
