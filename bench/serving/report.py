"""Tables and goals of the serving suite, from the rows that bench.serving.suite collects.

Classify rows: {target (service|echo), format (json|v2-binary), batch, connections, rps, seq_per_s,
p50_ms, p90_ms, p99_ms, errors, server_cpu_util}. Stream rows: {target, batching (on|off|-), frames,
streams, steps_per_s, p50_ms, p90_ms, p99_ms, errors, server_cpu_util, client_cpu_util, client_procs}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.common import format_table

GOAL_RTT_P50_MS = 0.5
GOAL_STEPS_256 = 20_000.0
GOAL_BATCHING_GAIN = 3.0
GOAL_RPS_32 = 1_500.0
GOAL_P99_32_MS = 25.0


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _get(row: dict[str, Any] | None, key: str) -> Any:
    return None if row is None else row.get(key)


def _classify_cells(fmt: str, batch: int, conns: int, s: dict[str, Any], e: dict[str, Any] | None) -> list:
    return [
        fmt, batch, conns, round(s["rps"]), round(s["seq_per_s"]), s["p50_ms"], s["p90_ms"], s["p99_ms"],
        s["server_cpu_util"], _round(s.get("server_cpu_us_per_request")), s["errors"],
        _round(_get(e, "rps")), _get(e, "p99_ms"), _round(_get(e, "server_cpu_us_per_request")),
        _ratio(s["rps"], _get(e, "rps")),
    ]  # fmt: skip


def classify_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for fmt in sorted({r.get("format", "json") for r in rows}):
        for batch in sorted({r["batch"] for r in rows}):
            for conns in sorted({r["connections"] for r in rows}):
                s = _find(rows, target="service", format=fmt, batch=batch, connections=conns)
                e = _find(rows, target="echo", format=fmt, batch=batch, connections=conns)
                if s is not None:
                    out.append(_classify_cells(fmt, batch, conns, s, e))
    headers = ["body", "batch", "conns", "req/s", "seq/s", "p50 ms", "p90 ms", "p99 ms", "srv cpu", "us/req"]
    headers += ["errors", "echo req/s", "echo p99", "us/req", "svc/echo"]
    title = (
        "classify (wrk; body json: v1 JSON, v2-binary: V2 binary tensor) vs the echo app with the same body "
        "(us/req: server CPU per request)"
    )
    return format_table(headers, out, title)


def rtt_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in sorted(rows, key=lambda r: (r["frames"], r["target"], r["batching"])):
        if r["streams"] != 1:
            continue
        name = "echo" if r["target"] == "echo" else f"psn serve, batching {r['batching']}"
        out.append([
            name, r["frames"], r["p50_ms"], r["p90_ms"], r["p99_ms"], round(r["steps_per_s"]),
            r["server_cpu_util"], _round(r.get("server_cpu_us_per_step")), r["client_cpu_util"],
            _round(r.get("client_cpu_us_per_step")),
        ])  # fmt: skip
    headers = ["server", "frames", "p50 ms", "p90 ms", "p99 ms", "steps/s", "srv cpu", "srv us/step"]
    headers += ["cli cpu", "cli us/step"]
    return format_table(headers, out, "one stream: per-step WebSocket round trip")


def streams_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for frames in sorted({r["frames"] for r in rows}):
        for n in sorted({r["streams"] for r in rows}):
            on = _find(rows, target="service", batching="on", frames=frames, streams=n)
            off = _find(rows, target="service", batching="off", frames=frames, streams=n)
            echo = _find(rows, target="echo", frames=frames, streams=n)
            out.append([
                frames, n, _round(_get(on, "steps_per_s")), _get(on, "p50_ms"), _get(on, "p99_ms"),
                _get(on, "server_cpu_util"), _round(_get(on, "server_cpu_us_per_step")),
                _get(on, "mean_batch"), _round(_get(off, "steps_per_s")), _get(off, "p99_ms"),
                _round(_get(off, "server_cpu_us_per_step")),
                _ratio(_get(on, "steps_per_s"), _get(off, "steps_per_s")), _round(_get(echo, "steps_per_s")),
                _round(_get(echo, "server_cpu_us_per_step")),
                _ratio(_get(on, "steps_per_s"), _get(echo, "steps_per_s")),
                _round(_get(on, "client_cpu_us_per_step")),
            ])  # fmt: skip
    headers = ["frames", "streams", "on steps/s", "p50 ms", "p99 ms", "srv cpu", "us/step", "batch"]
    headers += [
        "off steps/s",
        "p99 ms",
        "us/step",
        "on/off",
        "echo steps/s",
        "us/step",
        "on/echo",
        "cli us/step",
    ]
    title = (
        "streams: aggregate steps/s with step batching on and off, and the echo app "
        "(us/step: server CPU per step; batch: mean steps per ORT call)"
    )
    return format_table(headers, out, title)


def threads_table(classify: list[dict[str, Any]], streams: list[dict[str, Any]]) -> str:
    """Where the server's CPU goes by thread: the event loop (main) against the others (the ORT worker or
    executor threads), and how often its threads are switched out, per request or step."""
    out = []
    for r in sorted(classify, key=lambda r: (r["target"], r.get("format", ""), r["batch"], r["connections"])):
        name = "echo" if r["target"] == "echo" else "psn serve"
        load = f"{r.get('format', 'json')}, batch {r['batch']}, {r['connections']} conns"
        out.append([f"classify {name}", load, *_thread_cells(r, "server_cpu_us_per_request")])
    for r in sorted(streams, key=lambda r: (r["target"], r["batching"], r["frames"], r["streams"])):
        name = "echo" if r["target"] == "echo" else f"batching {r['batching']}"
        out.append([f"streams {name}", f"{r['frames']}, {r['streams']} streams",
                    *_thread_cells(r, "server_cpu_us_per_step")])  # fmt: skip
    headers = ["server", "load", "cpu us", "main thread us", "other threads us", "switches"]
    title = "server CPU per request or step by thread, and context switches (all threads) per request or step"
    return format_table(headers, out, title)


def _thread_cells(row: dict[str, Any], total_key: str) -> list[Any]:
    keys = (total_key, "main_thread_us", "other_threads_us")
    return [*(_round(row.get(k)) for k in keys), row.get("switches")]


def first_output_table(kinds: list[dict[str, Any]], period_ms: float) -> str:
    out = [
        [k["kind"], k["model"], k["T"], k["first_output_ms"], k["first_output_step"], k["decision_ms"],
         k["settled_ms"], k["last_step_delay_ms"], k["step_rtt_p50_ms"]]
        for k in kinds
    ]  # fmt: skip
    headers = ["kind", "model", "T", "first out ms", "after step", "decision ms", "settled ms"]
    headers += ["after last step ms", "step rtt p50"]
    title = f"time to first output and to decision, one step every {period_ms:g} ms (medians, ms from step 0)"
    return format_table(headers, out, title)


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


@dataclass
class Goal:
    goal: str
    target: str
    measured: str
    met: bool | None  # None: not measured

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def goals(classify: list[dict[str, Any]], streams: list[dict[str, Any]]) -> list[Goal]:
    out: list[Goal] = []
    for frames in ("json", "binary"):
        r = _find(streams, target="service", batching="on", frames=frames, streams=1)
        out.append(Goal(
            f"one-stream step round trip p50 ({frames} frames)", f"<= {GOAL_RTT_P50_MS} ms",
            "-" if r is None else f"{r['p50_ms']:.3f} ms",
            None if r is None else r["p50_ms"] <= GOAL_RTT_P50_MS,
        ))  # fmt: skip
    for frames in ("binary", "json"):
        on = _find(streams, target="service", batching="on", frames=frames, streams=256)
        off = _find(streams, target="service", batching="off", frames=frames, streams=256)
        out.append(Goal(
            f"256 streams, batching on ({frames} frames)", f">= {GOAL_STEPS_256:,.0f} steps/s",
            "-" if on is None else f"{on['steps_per_s']:,.0f} steps/s",
            None if on is None else on["steps_per_s"] >= GOAL_STEPS_256,
        ))  # fmt: skip
        gain = _ratio(on["steps_per_s"] if on else None, off["steps_per_s"] if off else None)
        out.append(Goal(
            f"256 streams, batching on / off ({frames} frames)", f">= {GOAL_BATCHING_GAIN:g}x",
            "-" if gain is None else f"{gain:.2f}x", None if gain is None else gain >= GOAL_BATCHING_GAIN,
        ))  # fmt: skip
    c = _find(classify, target="service", format="json", batch=1, connections=32)
    out.append(Goal(
        "classify, 32 connections, batch 1", f">= {GOAL_RPS_32:,.0f} req/s, p99 <= {GOAL_P99_32_MS:g} ms",
        "-" if c is None else f"{c['rps']:,.0f} req/s, p99 {c['p99_ms']:.1f} ms",
        None if c is None else c["rps"] >= GOAL_RPS_32 and c["p99_ms"] <= GOAL_P99_32_MS,
    ))  # fmt: skip
    return out


def goals_table(items: list[Goal]) -> str:
    rows = [
        [g.goal, g.target, g.measured, "-" if g.met is None else ("met" if g.met else "MISSED")]
        for g in items
    ]
    return format_table(
        ["goal", "target", "measured", ""], rows, "goals (2-core machine, server on one core)"
    )


def profile_text(profiles: list[dict[str, Any]], top: int = 12) -> str:
    parts = []
    for p in profiles:
        if "error" in p:
            parts.append(f"profile {p['name']}: {p['error']}")
            continue
        rows = [[f, pct] for f, pct in p["self_pct"][:top]]
        parts.append(
            format_table(["function (self time)", "%"], rows, f"profile {p['name']} ({p['samples']} samples)")
        )
    return "\n\n".join(parts)
