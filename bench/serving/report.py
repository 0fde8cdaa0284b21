"""What the serving suite leaves behind: the tables, the limit and the goals on stdout, the JSON, the plots.
The limit (docs/benchmarks.md): 1 / (1 / echo rate + raw ORT cost) for rates, echo + raw for round trips."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Goal, find, goal, goals_table, table, write_outputs

CLASSIFY_CONNECTIONS = 32
LIMIT_STREAMS = 64
GOAL_FRACTION = 0.7  # of the limit: classify and 64 streams, JSON and binary
GOAL_RTT_OVER_ECHO = 2.0  # a lone stream's step round trip against the echo's
GOAL_BATCHING_GAIN = 3.0  # steps/s with batching on / off at 256 streams
GOAL_TAIL_LEVEL, GOAL_TAIL_RATIO = 0.75, 3.0  # open loop at 75 % of saturation: classify p99 <= 3x its p50
UNITS = {"rps": "req/s", "steps_per_s": "steps/s", "p50_ms": "ms"}  # of the limit rows
KIND_COLORS = {"psn": "tab:red", "masked_psn": "tab:blue", "sliding_psn": "tab:green", "lif": "tab:gray"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _beside(rows: list[dict], keys: tuple[str, ...], **sides: dict[str, Any]) -> list[dict[str, Any]]:
    """One merged row per configuration (values of ``keys``): each side's row under its prefix."""
    out = []
    for config in dict.fromkeys(tuple(r[k] for k in keys) for r in rows):
        match = dict(zip(keys, config, strict=True))
        sided = {n: find(rows, **match, **where) or {} for n, where in sides.items()}
        out.append(match | {f"{n}.{k}": v for n, row in sided.items() for k, v in row.items()})
    return sorted(out, key=lambda r: tuple(r[k] for k in keys))


def limit_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Classify at 32 connections, batch 1 (JSON, V2 binary), 64 streams and one stream's round trip p50
    (JSON and binary frames), each against its echo and its limit."""
    raw = {r["kind"]: r for r in results.get("raw", {}).get("models", [])}
    classify, streaming = results.get("classify", {}), results.get("streaming", {})
    crows, srows = classify.get("rows", []), streaming.get("rows", [])
    full_us, step = raw.get(classify.get("kind"), {}).get("full_b1_us"), raw.get(streaming.get("kind"), {})
    c, n = CLASSIFY_CONNECTIONS, LIMIT_STREAMS
    specs = []
    for fmt, name in (("json", "JSON"), ("v2-binary", "V2 binary")):
        match = {"format": fmt, "batch": 1, "connections": c}
        specs.append((f"classify, {c} conns, batch 1, {name}", "rps", full_us, match))
    b64, b1 = step.get("step_b64_per_step_us"), step.get("step_b1_us")
    specs += [(f"{n} streams, {f} frames", "steps_per_s", b64, {"frames": f}) for f in ("json", "binary")]
    specs += [
        (f"one stream, step round trip p50, {f} frames", "p50_ms", b1, {"frames": f})
        for f in ("json", "binary")
    ]
    out = []
    for figure, key, raw_us, match in specs:
        unit = UNITS[key]
        if unit != "req/s":
            match |= {"streams": 1 if unit == "ms" else n}
        rows, on = (crows, {}) if unit == "req/s" else (srows, {"batching": "on"})
        if (service := find(rows, target="service", **on, **match)) is None:
            continue
        echo = find(rows, target="echo", **match)
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
            v, bound, target = r["over_echo"], GOAL_RTT_OVER_ECHO, f"<= {GOAL_RTT_OVER_ECHO:g}x echo's p50"
            measured = None if v is None else f"{v:.2f}x echo ({r['service']:.3f} ms)"
        else:
            v, bound, target = r["fraction"], GOAL_FRACTION, f">= {GOAL_FRACTION:g}x limit"
            measured = None if v is None else f"{v:.2f}x, p99 {r['service_p99_ms']:.1f} ms"
        out.append(goal(r["figure"], v, bound, at_most=r["unit"] == "ms", target=target, measured=measured))
    srows = results.get("streaming", {}).get("rows", [])
    for frames in sorted({r["frames"] for r in srows}):
        on, off = (find(srows, batching=b, frames=frames, streams=256) for b in ("on", "off"))
        gain = _ratio(on and on["steps_per_s"], off and off["steps_per_s"])
        out.append(goal(f"256 streams, batching on / off ({frames} frames)", gain, GOAL_BATCHING_GAIN))
    for r in results.get("sweep", {}).get("rows", []):
        if r["workload"] == "classify" and r["level"] == GOAL_TAIL_LEVEL:
            name = f"classify, open loop at {GOAL_TAIL_LEVEL:.0%} of saturation: p99 / p50"
            ratio, target = r["p99_ms"] / r["p50_ms"], f"<= {GOAL_TAIL_RATIO:g}"
            measured = f"{ratio:.2f} (p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms)"
            out.append(goal(name, ratio, GOAL_TAIL_RATIO, at_most=True, target=target, measured=measured))
    return out


def _server(r: dict[str, Any]) -> str:
    if r["target"] != "service":
        return r["target"]
    return "psn serve" + (f", batching {r['batching']}" if "batching" in r else "")


CLASSIFY_COLUMNS = (
    "body=format | batch | conns=connections | req/s=s.rps:d | seq/s=s.seq_per_s:d | p50 ms=s.p50_ms | "
    "p90 ms=s.p90_ms | p99 ms=s.p99_ms | p99.9 ms=s.p999_ms | srv cpu=s.server_cpu_util | "
    "us/req=s.server_cpu_us_per_request:d | errors=s.errors | echo req/s=e.rps:d | echo p99=e.p99_ms | "
    "us/req=e.server_cpu_us_per_request:d | svc/echo | fastapi req/s=f.rps:d | "
    "us/req=f.server_cpu_us_per_request:d"
)
ONE_STREAM_COLUMNS = (
    "server | frames | p50 ms=p50_ms | p90 ms=p90_ms | p99 ms=p99_ms | steps/s=steps_per_s:d | "
    "srv cpu=server_cpu_util | srv us/step=server_cpu_us_per_step:d | cli cpu=client_cpu_util | "
    "cli us/step=client_cpu_us_per_step:d"
)
STREAMS_COLUMNS = (
    "frames | streams | on steps/s=on.steps_per_s:d | p50 ms=on.p50_ms | p99 ms=on.p99_ms | "
    "srv cpu=on.server_cpu_util | us/step=on.server_cpu_us_per_step:d | batch=on.mean_batch | "
    "off steps/s=off.steps_per_s:d | p99 ms=off.p99_ms | us/step=off.server_cpu_us_per_step:d | "
    "on/off | echo steps/s=e.steps_per_s:d | us/step=e.server_cpu_us_per_step:d | on/echo | "
    "cli us/step=on.client_cpu_us_per_step:d | fastapi steps/s=f.steps_per_s:d"
)
CPU_COLUMNS = (
    "server | load | cpu us=cpu:d | main thread us=main_thread_us:d | other threads us=other_threads_us:d | "
    "switches"
)
FIRST_COLUMNS = (
    "kind | model | T | first out ms=first_output_ms | after step=first_output_step | "
    "decision ms=decision_ms | settled ms=settled_ms | after last step ms=last_step_delay_ms | "
    "step rtt p50=step_rtt_p50_ms"
)
SWEEP_COLUMNS = (
    "workload | load=of | offered/s=offered_per_s:d | answered/s=achieved_per_s:d | p50 ms=p50_ms | "
    "p90 ms=p90_ms | p99 ms=p99_ms | p99.9 ms=p999_ms | max ms=max_ms | p99/p50 | errors | lost | "
    "srv cpu=server_cpu_util | gen cpu=client_cpu_util | gen lag p99 ms=lag p99 | conns=connections"
    " | GCs=gc_n | GC ms=gc_ms | gen2=gc_gen2 | max GC ms, so far=gc_max"
)
LIMIT_COLUMNS = (
    "figure | unit | service | echo | raw ORT ms=raw_ms | limit | of limit=fraction | "
    "svc p99=service_p99_ms | echo p99=echo_p99_ms"
)


def tables(results: dict[str, Any]) -> list[str]:
    crows = results.get("classify", {}).get("rows", [])
    srows = results.get("streaming", {}).get("rows", [])
    blocks = []
    if crows:
        sides = {"s": {"target": "service"}, "e": {"target": "echo"}, "f": {"target": "fastapi-echo"}}
        rows = _beside(crows, ("format", "batch", "connections"), **sides)
        for r in rows:
            r["svc/echo"] = _ratio(r["s.rps"], r.get("e.rps"))
        c = results["classify"]
        title = "classify (wrk) vs the raw ASGI echo (the floor) and the FastAPI echo, same body"
        about = f"\n(model {c['model']}, body bytes {c['body_bytes']})"
        blocks.append(table(rows, CLASSIFY_COLUMNS, title) + about)
    if srows:
        ones = sorted((r for r in srows if r["streams"] == 1), key=lambda r: (r["frames"], _server(r)))
        s = results["streaming"]
        title = "one stream: per-step WebSocket round trip"
        rows = [r | {"server": _server(r)} for r in ones]
        blocks.append(table(rows, ONE_STREAM_COLUMNS, title) + f"\n(model {s['model']})")
        on, off = {"target": "service", "batching": "on"}, {"target": "service", "batching": "off"}
        rows = _beside(
            srows, ("frames", "streams"), on=on, off=off, e={"target": "echo"}, f={"target": "fastapi-echo"}
        )
        for r in rows:
            r["on/off"] = _ratio(r.get("on.steps_per_s"), r.get("off.steps_per_s"))
            r["on/echo"] = _ratio(r.get("on.steps_per_s"), r.get("e.steps_per_s"))
        title = (
            "streams: steps/s with step batching on and off, and the echo (batch: mean steps per ORT call)"
        )
        blocks.append(table(rows, STREAMS_COLUMNS, title))
    if crows or srows:
        rows = [
            r | {"load": f"classify {r['format']}, batch {r['batch']}, {r['connections']} conns"}
            for r in crows
        ]
        rows += [r | {"load": f"streams {r['frames']}, {r['streams']} streams"} for r in srows]
        rows = [
            r
            | {
                "server": _server(r),
                "cpu": r.get("server_cpu_us_per_request", r.get("server_cpu_us_per_step")),
            }
            for r in rows
        ]
        title = "server CPU per request or step by thread, context switches (all threads) per request or step"
        blocks.append(table(sorted(rows, key=lambda r: (r["server"], r["load"])), CPU_COLUMNS, title))
    if first := results.get("first_output"):
        title = f"time to first output and to decision, one step every {first['period_ms']:g} ms (medians)"
        blocks.append(table(first["kinds"], FIRST_COLUMNS, title) + f"\n(inputs: {first['inputs']})")
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
        sat = sweep["saturation"]
        title = (
            f"open-loop sweep, latency from each request's due time; saturation {sat['classify']:.0f} req/s, "
            f"{sat.get('streams') or 0:.0f} steps/s (closed loop); gen = the load generator's CPU, lateness"
        )
        blocks.append(table(rows, SWEEP_COLUMNS, title))
    if results["limit"]:
        digits = {"ms": 3, "req/s": None, "steps/s": None}
        rows = [
            r | {k: r[k] and round(r[k], digits[r["unit"]]) for k in ("service", "echo", "limit")}
            for r in results["limit"]
        ]
        title = "the service against its limit ('of limit' 1.0 = at it)"
        raw = "; ".join(
            ", ".join(f"{k} {v:.1f}" for k, v in m.items() if k.endswith("_us")) + f" ({m['model']})"
            for m in results["raw"]["models"]
        )
        blocks.append(table(rows, LIMIT_COLUMNS, title) + f"\n(raw ORT us: {raw})")
    return blocks


def gc_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The server's garbage collections during a load point (bench.serving.gctrace), when traced."""
    if not (gc := row.get("gc")):
        return {}
    return {
        "gc_n": sum(g["count"] for g in gc.values()),
        "gc_ms": sum(g["sum_ms"] for g in gc.values()),
        "gc_gen2": gc["gen2"]["count"],
        "gc_max": max(g["max_ms_so_far"] for g in gc.values()),
    }


def report(results: dict[str, Any], out_dir: Path, stem: str, extra_blocks: Sequence[str] = ()) -> list[Path]:
    """Print the tables, write out_dir/stem.json and the plots; returns the files written."""
    results["limit"] = limit_rows(results)
    blocks = tables(results) + list(extra_blocks)
    if (rounds := results.get("plan", {}).get("rounds", 1)) > 1:
        blocks.insert(
            0, f"every load point ran {rounds} times, interleaved; the tables show its fastest round"
        )
    goal_items = goals(results)
    results["goals"] = [g.to_json() for g in goal_items]
    blocks.append(goals_table(goal_items, "goals (server on one core)"))
    for p in results.get("profile") or []:
        rows = [{"f": f, "pct": pct} for f, pct in p.get("self_pct", [])[:12]]
        title = (
            f"profile {p['name']}: {p['error']}"
            if "error" in p
            else f"profile {p['name']} ({p['samples']} samples)"
        )
        blocks.append(table(rows, "function (self time)=f | %=pct", title) if rows else title)
    env = results["environment"]
    load = f"load average {env['loadavg_start']} -> {env.get('loadavg_end')}"
    blocks.append(f"{env['pinning']}; {load}; {env.get('wall_s')} s")
    print("\n\n".join(blocks), flush=True)
    from bench.serving.plots import plots

    return write_outputs(out_dir / f"{stem}.json", results, lambda: plots(results, out_dir, stem), 4)
