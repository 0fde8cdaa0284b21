"""Plots of the serving suite (matplotlib, headless Agg backend, imported only when the suite plots)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

KIND_COLORS = {"psn": "tab:red", "masked_psn": "tab:blue", "sliding_psn": "tab:green", "lif": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log2_x(ax, values: Sequence[int], label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values), [str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)


def classify_plot(
    rows: list[dict[str, Any]],
    goal_rps: float,
    goal_p99_ms: float,
    title: str,
    path: Path,
    limit_rps: dict[int, float] | None = None,
) -> None:
    """rows: {target: service|echo, format: json|v2-binary, batch, connections, rps, p50_ms, p99_ms};
    limit_rps: the limit per connection count (1 / (1/echo rate + raw ORT cost)) for JSON, batch 1."""
    plt = _pyplot()
    fig, (ax_rps, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    conns = sorted({r["connections"] for r in rows})
    styles = {"service": "-", "echo": "--"}
    colors = {(1, "json"): "tab:blue", (16, "json"): "tab:orange", (1, "v2-binary"): "tab:green",
              (16, "v2-binary"): "tab:olive"}  # fmt: skip
    for (target, fmt, batch), group in _groups(rows, ("target", "format", "batch")).items():
        group.sort(key=lambda r: r["connections"])
        xs = [r["connections"] for r in group]
        color = colors.get((batch, fmt), "tab:purple")
        name = "psn serve" if target == "service" else "echo (stack ceiling)"
        label = f"{name}, {fmt}, batch {batch}"
        ax_rps.plot(xs, [r["rps"] for r in group], styles[target], marker="o", color=color, label=label)
        ax_lat.plot(
            xs, [r["p99_ms"] for r in group], styles[target], marker="o", color=color, label=label + " p99"
        )
        if target == "service":
            ax_lat.plot(xs, [r["p50_ms"] for r in group], ":", marker=".", color=color, label=label + " p50")
        cpu = [_nan(r.get("server_cpu_us_per_request")) for r in group]
        ax_cpu.plot(xs, cpu, styles[target], marker="o", color=color, label=label)
    if limit_rps:
        xs = sorted(limit_rps)
        ax_rps.plot(xs, [limit_rps[x] for x in xs], ":", marker="^", color="black",
                    label="limit (echo + raw ORT), json, batch 1")  # fmt: skip
    ax_rps.axhline(
        goal_rps, color="black", linewidth=0.8, linestyle="-.", label=f"goal {goal_rps:,.0f} req/s (32)"
    )
    ax_lat.axhline(
        goal_p99_ms, color="black", linewidth=0.8, linestyle="-.", label=f"goal p99 {goal_p99_ms:g} ms"
    )
    _log2_x(ax_rps, conns, "concurrent connections (wrk)")
    _log2_x(ax_lat, conns, "concurrent connections (wrk)")
    _log2_x(ax_cpu, conns, "concurrent connections (wrk)")
    ax_cpu.set_ylabel("server CPU µs per request")
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.set_title("server CPU per request (less sensitive to other load)", fontsize=10)
    ax_cpu.legend(fontsize=7)
    ax_rps.set_ylabel("requests / s (log)")
    ax_rps.set_yscale("log")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms)")
    ax_rps.set_title("throughput (a request = 1 or 16 sequences)", fontsize=10)
    ax_lat.set_title("latency", fontsize=10)
    ax_rps.legend(fontsize=7)
    ax_lat.legend(fontsize=6, ncols=2)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def streams_plot(rows: list[dict[str, Any]], goal_steps: float, title: str, path: Path) -> None:
    """rows: {target: service|echo, batching: on|off|-, frames, streams, steps_per_s, p50_ms, p99_ms}."""
    plt = _pyplot()
    fig, (ax_rate, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    counts = sorted({r["streams"] for r in rows})
    colors = {"on": "tab:green", "off": "tab:red", "-": "black"}
    markers = {"binary": "o", "json": "s"}
    for (target, batching, frames), group in _groups(rows, ("target", "batching", "frames")).items():
        group.sort(key=lambda r: r["streams"])
        xs = [r["streams"] for r in group]
        style = "--" if target == "echo" else "-"
        name = "echo (stack ceiling)" if target == "echo" else f"batching {batching}"
        label = f"{name}, {frames} frames"
        kw = {"color": colors.get(batching, "tab:purple"), "marker": markers.get(frames, "^")}
        ax_rate.plot(xs, [r["steps_per_s"] for r in group], style, label=label, **kw)
        ax_cpu.plot(xs, [_nan(r.get("server_cpu_us_per_step")) for r in group], style, label=label, **kw)
        if target == "service":
            ax_lat.plot(xs, [r["p50_ms"] for r in group], ":", label=label + " p50", **kw)
            ax_lat.plot(xs, [r["p99_ms"] for r in group], "-", label=label + " p99", **kw)
    ax_rate.axhline(
        goal_steps, color="black", linewidth=0.8, linestyle="-.", label=f"goal {goal_steps:,.0f} (256)"
    )
    _log2_x(ax_rate, counts, "concurrent streams (closed loop)")
    _log2_x(ax_lat, counts, "concurrent streams (closed loop)")
    _log2_x(ax_cpu, counts, "concurrent streams (closed loop)")
    ax_cpu.set_ylabel("server CPU µs per step")
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.set_title("server CPU per step (less sensitive to other load)", fontsize=10)
    ax_cpu.legend(fontsize=7)
    ax_rate.set_ylabel("steps answered / s (all streams)")
    ax_rate.set_ylim(bottom=0)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("step round trip (ms)")
    ax_rate.set_title("aggregate step rate", fontsize=10)
    ax_lat.set_title("per-step round trip", fontsize=10)
    ax_rate.legend(fontsize=7)
    ax_lat.legend(fontsize=6, ncols=2)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_output_plot(kinds: list[dict[str, Any]], period_ms: float, title: str, path: Path) -> None:
    """kinds: KindLatency.to_json() dicts. Left: when each input's first output arrived against when the
    input was sent; right: the wait of each input for its output."""
    plt = _pyplot()
    fig, (ax_t, ax_d) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    end = max(max(k["output_ms"]) for k in kinds)
    ax_t.plot([0, end], [0, end], color="black", linewidth=0.6, linestyle=":", label="output = input")
    for offset, k in enumerate(kinds):
        color = KIND_COLORS.get(k["kind"])
        xs, ys = k["input_ms"], k["output_ms"]
        label = (
            f"{k['kind']}: first output {k['first_output_ms']:.1f} ms, "
            f"label settled {k['settled_ms']:.1f}, decision {k['decision_ms']:.1f}"
        )
        ax_t.plot(
            xs, ys, "o-", color=color, linewidth=1.4, markersize=3, label=label, zorder=3 - offset * 0.1
        )
        # the output closest in time to the moment the running label became the final one (the last of ties)
        settled = max(range(len(ys)), key=lambda i: (-round(abs(ys[i] - k["settled_ms"]), 3), i))
        if ys:
            ax_t.plot([xs[settled]], [ys[settled]], "*", color=color, markersize=14, markeredgecolor="black",
                      zorder=5)  # fmt: skip
        waits = [max(o - i, 1e-3) for i, o in zip(xs, ys, strict=True)]
        ax_d.plot(range(len(waits)), waits, "o-", color=color, markersize=3, label=k["kind"])
    ax_t.plot(
        [], [], "*", color="white", markeredgecolor="black", markersize=11, label="label settled (final)"
    )
    ax_t.set_xlabel("input step sent at (ms from step 0)")
    ax_t.set_ylabel("first output that has seen it (ms)")
    ax_t.set_title(f"one step every {period_ms:g} ms: output time against input time", fontsize=10)
    ax_t.grid(True, alpha=0.3)
    ax_t.legend(fontsize=7, loc="lower right")
    ax_d.set_yscale("log")
    ax_d.set_xlabel("input step t")
    ax_d.set_ylabel("wait for its output (ms)")
    ax_d.set_title("wait of each input for an output (log)", fontsize=10)
    ax_d.grid(True, which="both", alpha=0.3)
    ax_d.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _groups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out
