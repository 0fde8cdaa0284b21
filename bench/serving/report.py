"""What the serving suite leaves behind: the tables on stdout, the limit and the goals, the JSON of raw
numbers, the PNG plots.

Classify rows: {target (service|echo), format (json|v2-binary), batch, connections, rps, p50_ms, p99_ms,
server_cpu_us_per_request, ...}. Stream rows: {target, batching (on|off|-), frames, streams, steps_per_s,
p50_ms, p99_ms, server_cpu_us_per_step, ...}.

The limit: the stack's floor (the echo app, measured in the same run) and the model's raw ONNX Runtime cost
(``bench.raw``, same core) bound what the service can reach: a request or step costs at least the echo's
share of a core plus the model's run, so

    limit rate = 1 / (1 / echo rate + raw cost)          (requests or steps per second, one core)
    limit round trip = echo round trip + raw cost        (one stream, one step in flight)

and ``fraction = service / limit`` for rates, ``limit / service`` for round trips (1.0 = at the limit).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.common import Goal, goals_table, table, write_json

CLASSIFY_CONNECTIONS = 32
LIMIT_STREAMS = 64
GOAL_FRACTION = 0.7  # of the limit: classify and 64 streams, JSON and binary
GOAL_RTT_OVER_ECHO = 2.0  # a lone stream's step round trip against the echo's
GOAL_BATCHING_GAIN = 3.0  # steps/s with batching on / off at 256 streams
GOAL_TAIL_LEVEL, GOAL_TAIL_RATIO = 0.75, 3.0  # open loop at 75 % of saturation: classify p99 <= 3x its p50
KIND_COLORS = {"psn": "tab:red", "masked_psn": "tab:blue", "sliding_psn": "tab:green", "lif": "tab:gray"}


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _int(value: float | None) -> int | None:
    return None if value is None else round(value)


def _beside(rows: list[dict], keys: tuple[str, ...], **sides: dict[str, Any]) -> list[dict[str, Any]]:
    """One merged row per configuration (values of ``keys``): each side's row under its prefix."""
    out = []
    for config in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        match = dict(zip(keys, config, strict=True))
        merged = {
            f"{name}.{k}": v
            for name, where in sides.items()
            for k, v in (find(rows, **match, **where) or {}).items()
        }
        out.append(match | merged)
    return sorted(out, key=lambda r: tuple(r[k] for k in keys))


# ------------------------------------------------------------------------------------------------ limit


def limit_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: classify at 32 connections, batch 1 (JSON bodies and V2 binary tensors), 64 streams (JSON and
    binary frames), one stream's step round trip p50 (JSON and binary frames)."""
    raw = {r["kind"]: r for r in results.get("raw", {}).get("models", [])}
    crows, classify = results.get("classify", {}).get("rows", []), results.get("classify", {})
    srows, streaming = results.get("streaming", {}).get("rows", []), results.get("streaming", {})
    full_us = raw.get(classify.get("kind"), {}).get("full_b1_us")
    step = raw.get(streaming.get("kind"), {})
    specs = [
        (
            f"classify, {CLASSIFY_CONNECTIONS} conns, batch 1, {name}",
            "req/s",
            "rps",
            full_us,
            dict(target="service", format=fmt, batch=1, connections=CLASSIFY_CONNECTIONS),
            find(crows, target="echo", format=fmt, batch=1, connections=CLASSIFY_CONNECTIONS),
        )
        for fmt, name in (("json", "JSON"), ("v2-binary", "V2 binary"))
    ]
    specs += [
        (
            f"{LIMIT_STREAMS} streams, {f} frames",
            "steps/s",
            "steps_per_s",
            step.get("step_b64_per_step_us"),
            dict(target="service", batching="on", frames=f, streams=LIMIT_STREAMS),
            find(srows, target="echo", frames=f, streams=LIMIT_STREAMS),
        )
        for f in ("json", "binary")
    ]
    specs += [
        (
            f"one stream, step round trip p50, {f} frames",
            "ms",
            "p50_ms",
            step.get("step_b1_us"),
            dict(target="service", batching="on", frames=f, streams=1),
            find(srows, target="echo", frames=f, streams=1),
        )
        for f in ("json", "binary")
    ]
    out = []
    for figure, unit, key, raw_us, match, echo in specs:
        service = find(crows if unit == "req/s" else srows, **match)
        if service is None:
            continue
        s, e = service[key], None if echo is None else echo[key]
        raw_ms = None if raw_us is None else raw_us / 1e3
        if unit == "ms":
            limit = None if e is None or raw_ms is None else e + raw_ms
            fraction, over_echo = _ratio(limit, s), _ratio(s, e)
        else:
            limit = None if not e or raw_ms is None else 1.0 / (1.0 / e + raw_ms / 1e3)
            fraction, over_echo = _ratio(s, limit), _ratio(e, s)
        out.append(
            {
                "figure": figure,
                "unit": unit,
                "service": s,
                "echo": e,
                "raw_ms": raw_ms,
                "limit": limit,
                "fraction": fraction,
                "service_p99_ms": service.get("p99_ms"),
                "echo_p99_ms": None if echo is None else echo.get("p99_ms"),
                "over_echo": over_echo,
            }
        )
    return out


def goals(results: dict[str, Any]) -> list[Goal]:
    out = []
    for r in results["limit"]:
        if r["unit"] == "ms":
            v = r["over_echo"]
            out.append(
                Goal(
                    r["figure"],
                    f"<= {GOAL_RTT_OVER_ECHO:g}x echo's p50",
                    "-" if v is None else f"{v:.2f}x echo ({r['service']:.3f} ms)",
                    None if v is None else v <= GOAL_RTT_OVER_ECHO,
                )
            )
        else:
            v = r["fraction"]
            out.append(
                Goal(
                    r["figure"],
                    f">= {GOAL_FRACTION:g}x limit",
                    "-" if v is None else f"{v:.2f}x, p99 {r['service_p99_ms']:.1f} ms",
                    None if v is None else v >= GOAL_FRACTION,
                )
            )
    srows = results.get("streaming", {}).get("rows", [])
    for frames in sorted({r["frames"] for r in srows}):
        on = find(srows, target="service", batching="on", frames=frames, streams=256)
        off = find(srows, target="service", batching="off", frames=frames, streams=256)
        gain = _ratio(on and on["steps_per_s"], off and off["steps_per_s"])
        out.append(
            Goal(
                f"256 streams, batching on / off ({frames} frames)",
                f">= {GOAL_BATCHING_GAIN:g}x",
                "-" if gain is None else f"{gain:.2f}x",
                None if gain is None else gain >= GOAL_BATCHING_GAIN,
            )
        )
    for r in results.get("sweep", {}).get("rows", []):
        if r["workload"] == "classify" and r["level"] == GOAL_TAIL_LEVEL:
            ratio = r["p99_ms"] / r["p50_ms"]
            out.append(
                Goal(
                    f"classify, open loop at {GOAL_TAIL_LEVEL:.0%} of saturation: p99 / p50",
                    f"<= {GOAL_TAIL_RATIO:g}",
                    f"{ratio:.2f} (p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms)",
                    ratio <= GOAL_TAIL_RATIO,
                )
            )
    return out


# ------------------------------------------------------------------------------------------------ tables


def tables(results: dict[str, Any]) -> list[str]:
    crows = results.get("classify", {}).get("rows", [])
    srows = results.get("streaming", {}).get("rows", [])
    blocks = []
    if crows:
        c = results["classify"]
        sides = {"s": {"target": "service"}, "e": {"target": "echo"}, "f": {"target": "fastapi-echo"}}
        rows = _beside(crows, ("format", "batch", "connections"), **sides)
        for r in rows:
            r["svc/echo"] = _ratio(r["s.rps"], r.get("e.rps"))
        title = (
            "classify (wrk; body json: v1 JSON, v2-binary: V2 binary tensor) vs the raw ASGI echo "
            "(the floor) "
            "and the FastAPI echo with the same body (us/req: server CPU per request)"
        )
        columns = (
            "body=format | batch | conns=connections | req/s=s.rps:d | seq/s=s.seq_per_s:d | p50 "
            "ms=s.p50_ms | "
            "p90 ms=s.p90_ms | p99 ms=s.p99_ms | p99.9 ms=s.p999_ms | srv cpu=s.server_cpu_util | "
            "us/req=s.server_cpu_us_per_request:d | errors=s.errors | echo req/s=e.rps:d | echo "
            "p99=e.p99_ms | "
            "us/req=e.server_cpu_us_per_request:d | svc/echo | fastapi req/s=f.rps:d | "
            "us/req=f.server_cpu_us_per_request:d"
        )
        blocks.append(table(rows, columns, title) + f"\n(model {c['model']}, body bytes {c['body_bytes']})")
    if srows:
        s = results["streaming"]
        ones = [
            r
            | {"server": r["target"] if r["target"] != "service" else f"psn serve, batching {r['batching']}"}
            for r in sorted(srows, key=lambda r: (r["frames"], r["target"], r["batching"]))
            if r["streams"] == 1
        ]
        columns = (
            "server | frames | p50 ms=p50_ms | p90 ms=p90_ms | p99 ms=p99_ms | steps/s=steps_per_s:d | "
            "srv cpu=server_cpu_util | srv us/step=server_cpu_us_per_step:d | cli cpu=client_cpu_util | "
            "cli us/step=client_cpu_us_per_step:d"
        )
        title = "one stream: per-step WebSocket round trip"
        blocks.append(table(ones, columns, title) + f"\n(model {s['model']}, kind {s['kind']})")
        rows = _beside(
            srows,
            ("frames", "streams"),
            on={"target": "service", "batching": "on"},
            off={"target": "service", "batching": "off"},
            e={"target": "echo"},
            f={"target": "fastapi-echo"},
        )
        for r in rows:
            r["on/off"] = _ratio(r.get("on.steps_per_s"), r.get("off.steps_per_s"))
            r["on/echo"] = _ratio(r.get("on.steps_per_s"), r.get("e.steps_per_s"))
        columns = (
            "frames | streams | on steps/s=on.steps_per_s:d | p50 ms=on.p50_ms | p99 ms=on.p99_ms | "
            "srv cpu=on.server_cpu_util | us/step=on.server_cpu_us_per_step:d | batch=on.mean_batch | "
            "off steps/s=off.steps_per_s:d | p99 ms=off.p99_ms | "
            "us/step=off.server_cpu_us_per_step:d | on/off | "
            "echo steps/s=e.steps_per_s:d | us/step=e.server_cpu_us_per_step:d | on/echo | "
            "cli us/step=on.client_cpu_us_per_step:d | fastapi steps/s=f.steps_per_s:d"
        )
        title = (
            "streams: aggregate steps/s with step batching on and off, and the echo app "
            "(us/step: server CPU per step; batch: mean steps per ORT call)"
        )
        blocks.append(table(rows, columns, title))
    if crows or srows:
        rows = [
            r
            | {
                "server": f"classify {r['target'] if r['target'] != 'service' else 'psn serve'}",
                "cpu": r.get("server_cpu_us_per_request"),
                "load": f"{r['format']}, batch {r['batch']}, {r['connections']} conns",
            }
            for r in sorted(crows, key=lambda r: (r["target"], r["format"], r["batch"], r["connections"]))
        ]
        rows += [
            r
            | {
                "server": "streams "
                + (r["target"] if r["target"] != "service" else f"batching {r['batching']}"),
                "load": f"{r['frames']}, {r['streams']} streams",
                "cpu": r.get("server_cpu_us_per_step"),
            }
            for r in sorted(srows, key=lambda r: (r["target"], r["batching"], r["frames"], r["streams"]))
        ]
        columns = "server | load | cpu us=cpu:d | main thread us=main_thread_us:d | "
        columns += "other threads us=other_threads_us:d | switches"
        title = (
            "server CPU per request or step by thread, and context switches (all threads) per request or step"
        )
        blocks.append(table(rows, columns, title))
    if first := results.get("first_output"):
        columns = (
            "kind | model | T | first out ms=first_output_ms | after step=first_output_step | "
            "decision ms=decision_ms | "
            "settled ms=settled_ms | after last step ms=last_step_delay_ms | step rtt p50=step_rtt_p50_ms"
        )
        title = f"time to first output and to decision, one step every {first['period_ms']:g} ms "
        title += "(medians, ms from step 0)"
        blocks.append(table(first["kinds"], columns, title) + f"\n(inputs: {first['inputs']})")
    if sweep := results.get("sweep"):
        rows = [
            r
            | {
                "of": f"{r['level']:.0%}",
                "p99/p50": r["p99_ms"] / r["p50_ms"],
                "lag p99": r["send_lag_ms"]["p99"],
                **gc_columns(r),
            }
            for r in sweep["rows"]
        ]
        columns = (
            "workload | load=of | offered/s=offered_per_s:d | answered/s=achieved_per_s:d | p50 ms=p50_ms | "
            "p90 ms=p90_ms | p99 ms=p99_ms | p99.9 ms=p999_ms | max ms=max_ms | p99/p50 | errors | lost | "
            "srv cpu=server_cpu_util | gen cpu=client_cpu_util | gen lag p99 ms=lag p99 | conns=connections"
            " | GCs=gc_n | GC ms=gc_ms | gen2=gc_gen2 | max GC ms, so far=gc_max"
        )
        sat = sweep["saturation"]
        title = (
            f"open-loop sweep: constant offered rate, latency from each request's due time; saturation = "
            f"{sat['classify']:.0f} req/s ({sat['classify_from']}), {sat.get('streams') or 0:.0f} steps/s "
            f"({sat['streams_from']}); gen = the load generator's own CPU and lateness"
        )
        blocks.append(table(rows, columns, title))
    if results["limit"]:
        rows = [
            r
            | {
                k: r[k] and (round(r[k], 3) if r["unit"] == "ms" else round(r[k]))
                for k in ("service", "echo", "limit")
            }
            for r in results["limit"]
        ]
        columns = (
            "figure | unit | service | echo | raw ORT ms=raw_ms | limit | of limit=fraction | svc "
            "p99=service_p99_ms | "
            "echo p99=echo_p99_ms"
        )
        title = (
            "the service against its limit (limit = 1/(1/echo rate + raw ORT cost); for round trips "
            "echo + raw; "
            "'of limit' 1.0 = at it)"
        )
        blocks.append(
            table(rows, columns, title) + f"\n(raw ORT per model: {_raw_note(results['raw']['models'])})"
        )
    return blocks


def gc_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The server's garbage collections during a load point (bench.serving.gctrace), when traced."""
    gc = row.get("gc")
    if not gc:
        return {}
    return {
        "gc_n": sum(g["count"] for g in gc.values()),
        "gc_ms": sum(g["sum_ms"] for g in gc.values()),
        "gc_gen2": gc["gen2"]["count"],
        "gc_max": max(g["max_ms_so_far"] for g in gc.values()),
    }


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


def profile_text(profiles: list[dict[str, Any]], top: int = 12) -> str:
    parts = []
    for p in profiles:
        if "error" in p:
            parts.append(f"profile {p['name']}: {p['error']}")
            continue
        rows = [{"f": f, "pct": pct} for f, pct in p["self_pct"][:top]]
        parts.append(
            table(rows, "function (self time)=f | %=pct", f"profile {p['name']} ({p['samples']} samples)")
        )
    return "\n\n".join(parts)


def report(results: dict[str, Any], out_dir: Path, stem: str, extra_blocks: list[str] = ()) -> list[Path]:
    """Print the tables, write out_dir/stem.json and the plots; returns the files written."""
    results["limit"] = limit_rows(results)
    blocks = []
    if (rounds := results.get("plan", {}).get("rounds", 1)) > 1:
        blocks.append(f"every load point ran {rounds} times, interleaved; the tables show its fastest round")
    blocks += tables(results) + list(extra_blocks)
    goal_items = goals(results)
    results["goals"] = [g.to_json() for g in goal_items]
    blocks.append(goals_table(goal_items, "goals (server on one core)"))
    if results.get("profile"):
        blocks.append(profile_text(results["profile"]))
    env = results["environment"]
    blocks.append(
        f"{env['pinning']}; load average {env['loadavg_start']} at start, {env.get('loadavg_end')} at "
        f"end; {env.get('wall_s')} s"
    )
    print("\n\n".join(blocks), flush=True)
    written = [out_dir / f"{stem}.json"]
    write_json(written[0], results, digits=4)
    try:
        from bench.serving.plots import plots

        written += plots(results, out_dir, stem)
    except ModuleNotFoundError as exc:  # matplotlib is a bench/train extra
        print(f"psn bench serving: no plots ({exc})", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return written
