"""The limit of each kind of work, and the service as a fraction of it.

The stack's own ceiling (the echo app: FastAPI + uvicorn + uvloop, no parsing, no model) and the model's
raw ONNX Runtime cost (``bench.serving.raw``), measured in the same run on the same core as the service,
bound what the service can reach: a request or step costs at least the echo's share of a core plus the
model's run, so

    limit rate = 1 / (1 / echo rate + raw cost)          (requests or steps per second, one core)
    limit round trip = echo round trip + raw cost        (one stream, one step in flight)

and ``fraction = service / limit`` for rates, ``limit / service`` for round trips (1.0 = at the limit).
Rows: classify at 32 connections, batch 1 (JSON bodies and V2 binary tensors), 64 streams (JSON and
binary frames), one stream's step round trip p50 (JSON and binary frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.common import format_table

CLASSIFY_CONNECTIONS = 32
LIMIT_STREAMS = 64
GOAL_FRACTION = 0.85
GOAL_P99_MS = 25.0
GOAL_RTT_OVER_ECHO = 1.5


@dataclass
class LimitRow:
    figure: str  # what is measured, e.g. "classify req/s, 32 conns, JSON"
    unit: str  # "req/s", "steps/s" or "ms"
    service: float | None
    echo: float | None
    raw_ms: float | None  # the model's raw ORT cost per request or step
    limit: float | None
    fraction: float | None  # of the limit, 1.0 = at it
    service_p99_ms: float | None = None
    echo_p99_ms: float | None = None
    over_echo: float | None = None  # service / echo (round trips) or echo / service (rates)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def limit_rate(echo_rate: float | None, raw_s: float | None) -> float | None:
    if not echo_rate or raw_s is None:
        return None
    return 1.0 / (1.0 / echo_rate + raw_s)


def _seconds(us: float | None) -> float | None:
    return None if us is None else us / 1e6


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _rate_row(figure: str, unit: str, service: dict | None, echo: dict | None, key: str, raw_s: float | None):
    s = None if service is None else service[key]
    e = None if echo is None else echo[key]
    lim = limit_rate(e, raw_s)
    return LimitRow(
        figure, unit, s, e, None if raw_s is None else raw_s * 1e3, lim,
        None if s is None or not lim else s / lim,
        None if service is None else service.get("p99_ms"), None if echo is None else echo.get("p99_ms"),
        None if s is None or not e else e / s,
    )  # fmt: skip


def limit_rows(results: dict[str, Any]) -> list[LimitRow]:
    raw = {r["kind"]: r for r in results.get("raw", {}).get("models", [])}
    out: list[LimitRow] = []
    classify = results.get("classify", {})
    crows = classify.get("rows", [])
    full_s = _seconds(raw.get(classify.get("kind"), {}).get("full_b1_us"))
    for fmt, name in (("json", "JSON"), ("v2-binary", "V2 binary")):
        service = _find(crows, target="service", format=fmt, batch=1, connections=CLASSIFY_CONNECTIONS)
        echo = _find(crows, target="echo", format=fmt, batch=1, connections=CLASSIFY_CONNECTIONS)
        if service is not None:
            figure = f"classify, {CLASSIFY_CONNECTIONS} conns, batch 1, {name}"
            out.append(_rate_row(figure, "req/s", service, echo, "rps", full_s))
    streaming = results.get("streaming", {})
    srows = streaming.get("rows", [])
    step = raw.get(streaming.get("kind"), {})
    for frames in ("json", "binary"):
        service = _find(srows, target="service", batching="on", frames=frames, streams=LIMIT_STREAMS)
        echo = _find(srows, target="echo", frames=frames, streams=LIMIT_STREAMS)
        if service is not None:
            figure = f"{LIMIT_STREAMS} streams, {frames} frames"
            out.append(
                _rate_row(
                    figure,
                    "steps/s",
                    service,
                    echo,
                    "steps_per_s",
                    _seconds(step.get("step_b64_per_step_us")),
                )
            )
    for frames in ("json", "binary"):
        service = _find(srows, target="service", batching="on", frames=frames, streams=1)
        echo = _find(srows, target="echo", frames=frames, streams=1)
        if service is None:
            continue
        raw_s = _seconds(step.get("step_b1_us"))
        s, e = service["p50_ms"], None if echo is None else echo["p50_ms"]
        lim = None if e is None or raw_s is None else e + raw_s * 1e3
        out.append(LimitRow(
            f"one stream, step round trip p50, {frames} frames", "ms", s, e,
            None if raw_s is None else raw_s * 1e3, lim, None if lim is None or not s else lim / s,
            service.get("p99_ms"), None if echo is None else echo.get("p99_ms"), None if not e else s / e,
        ))  # fmt: skip
    return out


def limit_table(rows: list[LimitRow]) -> str:
    def num(v: float | None, unit: str) -> Any:
        if v is None:
            return None
        return round(v, 3) if unit == "ms" else round(v)

    out = [
        [r.figure, r.unit, num(r.service, r.unit), num(r.echo, r.unit), r.raw_ms, num(r.limit, r.unit),
         r.fraction, r.service_p99_ms, r.echo_p99_ms]
        for r in rows
    ]  # fmt: skip
    headers = ["figure", "unit", "service", "echo", "raw ORT ms", "limit", "of limit", "svc p99", "echo p99"]
    title = (
        "the service against its limit (limit = 1/(1/echo rate + raw ORT cost); for round trips echo + raw; "
        "'of limit' 1.0 = at it)"
    )
    return format_table(headers, out, title)


@dataclass
class LimitGoal:
    goal: str
    target: str
    measured: str
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def limit_goals(rows: list[LimitRow]) -> list[LimitGoal]:
    """The issue's goals (JSON bodies and frames; binary must be faster still)."""
    out = []
    for r in rows:
        if r.unit == "req/s":
            ok = (
                None
                if r.fraction is None
                else r.fraction >= GOAL_FRACTION and (r.service_p99_ms or 1e9) <= GOAL_P99_MS
            )
            measured = "-" if r.fraction is None else f"{r.fraction:.2f}x, p99 {r.service_p99_ms:.1f} ms"
            out.append(
                LimitGoal(r.figure, f">= {GOAL_FRACTION}x limit, p99 <= {GOAL_P99_MS:g} ms", measured, ok)
            )
        elif r.unit == "steps/s":
            ok = None if r.fraction is None else r.fraction >= GOAL_FRACTION
            measured = "-" if r.fraction is None else f"{r.fraction:.2f}x"
            out.append(LimitGoal(r.figure, f">= {GOAL_FRACTION}x limit", measured, ok))
        else:
            ok = None if r.over_echo is None else r.over_echo <= GOAL_RTT_OVER_ECHO
            measured = "-" if r.over_echo is None else f"{r.over_echo:.2f}x echo ({r.service:.3f} ms)"
            out.append(LimitGoal(r.figure, f"<= {GOAL_RTT_OVER_ECHO}x echo's p50", measured, ok))
    return out


def limit_plot(rows: list[LimitRow], title: str, path) -> None:
    """Three panels (req/s, steps/s, round trip ms): for each figure the service, the echo and the limit
    side by side, the fraction of the limit written over the service's bar."""
    from bench.serving.plots import _pyplot

    plt = _pyplot()
    units = [u for u in ("req/s", "steps/s", "ms") if any(r.unit == u for r in rows)]
    if not units:
        return
    fig, axes = plt.subplots(1, len(units), figsize=(5.2 * len(units), 4.6), constrained_layout=True)
    axes = [axes] if len(units) == 1 else list(axes)
    colors = {"service": "tab:green", "echo": "tab:gray", "limit": "tab:blue"}
    for ax, unit in zip(axes, units, strict=True):
        group = [r for r in rows if r.unit == unit]
        width = 0.26
        for j, r in enumerate(group):
            for k, (name, value) in enumerate((("service", r.service), ("echo", r.echo), ("limit", r.limit))):
                x = j + (k - 1) * width
                ax.bar(x, value or 0.0, width, color=colors[name], label=name if j == 0 else None)
            if r.fraction is not None and r.service is not None:
                ax.text(j - width, r.service, f"{r.fraction:.2f}", ha="center", va="bottom", fontsize=8)
        labels = [r.figure.replace(", ", "\n", 2) for r in group]
        ax.set_xticks(range(len(group)), labels, fontsize=7)
        ax.set_ylabel(unit + (" (lower is better)" if unit == "ms" else ""))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("number over the service: fraction of the limit", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
