"""Plots of the serving suite (matplotlib, headless Agg backend, imported only when the suite plots)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import bars, figure, group_by
from bench.serving.report import GOAL_BATCHING_GAIN, KIND_COLORS


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def line_panels(
    rows: list[dict[str, Any]],
    keys: tuple[str, ...],
    x: str,
    panels: Sequence[tuple[str, str, bool]],
    xlabel: str,
    title: str,
    path: Path,
    limits: dict[str, float] | None = None,
) -> None:
    """One panel per (y key, y label, log y); a line per group of rows (values of ``keys``: target, then
    format or batching, then batch or frames), x on a log2 axis; p99 panels draw p50 dotted; ``limits`` as
    horizontal lines on the first panel."""
    xs_all = sorted({r[x] for r in rows})
    with figure(path, title, len(panels), size=(5, 4.5)) as (_, axes):
        for key_group, group in group_by(rows, keys).items():
            group = sorted(group, key=lambda r: r[x])
            xs, kw = [r[x] for r in group], _style(*key_group)
            for ax, (y, _, _) in zip(axes[0], panels, strict=True):
                ax.plot(xs, [_nan(r.get(y)) for r in group], **kw)
                if y == "p99_ms" and kw["linestyle"] == "-":
                    ax.plot(xs, [_nan(r.get("p50_ms")) for r in group], ":", color=kw["color"], marker=".")
        for ax, (_, ylabel, log) in zip(axes[0], panels, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs_all, [str(v) for v in xs_all])
            ax.minorticks_off()
            ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log" if log else "linear")
            if not log:
                ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        for name, value in (limits or {}).items():
            axes[0][0].axhline(value, color="black", linewidth=0.8, linestyle="-.", label=f"limit: {name}")
        axes[0][0].legend(fontsize=7)


_COLORS = {(1, "json"): "tab:blue", (16, "json"): "tab:orange", (1, "v2-binary"): "tab:green"}
_COLORS |= {(16, "v2-binary"): "tab:olive", "on": "tab:green", "off": "tab:red", "-": "black"}


def _style(target: str, mode: str, detail: Any) -> dict[str, Any]:
    """classify: (target, format, batch); streams: (target, batching, frames)."""
    name = {"service": "psn serve", "echo": "echo (floor)"}.get(target, target)
    if mode in ("on", "off", "-"):  # streams
        label = f"{f'batching {mode}' if target == 'service' else name}, {detail} frames"
        marker, color = {"binary": "o", "json": "s"}.get(detail, "^"), _COLORS[mode]
    else:
        label, marker, color = (
            f"{name}, {mode}, batch {detail}",
            "o",
            _COLORS.get((detail, mode), "tab:purple"),
        )
    return {
        "label": label,
        "color": "tab:gray" if target == "fastapi-echo" else color,
        "marker": marker,
        "linestyle": {"service": "-", "echo": "--"}.get(target, "-."),
    }


def limit_plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """One panel per unit (req/s, steps/s, ms): service, echo and limit side by side for each figure, the
    fraction of the limit written over the service's bar."""
    units = [u for u in ("req/s", "steps/s", "ms") if any(r["unit"] == u for r in rows)]
    names, colors = ("service", "echo", "limit"), ["tab:green", "tab:gray", "tab:blue"]
    with figure(path, title, len(units), size=(5.2, 4.6)) as (_, axes):
        for ax, unit in zip(axes[0], units, strict=True):
            group = [r for r in rows if r["unit"] == unit]
            labels = [r["figure"].replace(", ", "\n", 2) for r in group]
            bars(ax, labels, {n: [r[n] for r in group] for n in names}, colors)
            for j, r in enumerate(group):
                if r["fraction"] is not None:
                    ax.text(
                        j - 0.27, r["service"], f"{r['fraction']:.2f}", ha="center", va="bottom", fontsize=8
                    )
            ax.tick_params(axis="x", labelsize=7)
            ax.set_ylabel(unit + (" (lower is better)" if unit == "ms" else ""))
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
            ax.set_title("number over the service: fraction of the limit", fontsize=9)


def first_output_plot(kinds: list[dict[str, Any]], period_ms: float, title: str, path: Path) -> None:
    """Left: when each input's first output arrived against when the input was sent; right: the wait of each
    input for its output."""
    with figure(path, title, 2) as (_, axes):
        ax_t, ax_d = axes[0]
        end = max(max(k["output_ms"]) for k in kinds)
        ax_t.plot([0, end], [0, end], color="black", linewidth=0.6, linestyle=":", label="output = input")
        for k in kinds:
            color, xs, ys = KIND_COLORS.get(k["kind"]), k["input_ms"], k["output_ms"]
            label = (
                f"{k['kind']}: first output {k['first_output_ms']:.1f} ms, label settled "
                f"{k['settled_ms']:.1f}, decision {k['decision_ms']:.1f}"
            )
            ax_t.plot(xs, ys, "o-", color=color, linewidth=1.4, markersize=3, label=label)
            # the output closest in time to when the running label became the final one (the last of ties)
            settled = max(range(len(ys)), key=lambda i: (-round(abs(ys[i] - k["settled_ms"]), 3), i))
            ax_t.plot([xs[settled]], [ys[settled]], "*", color=color, markersize=14, markeredgecolor="black")
            waits = [max(o - i, 1e-3) for i, o in zip(xs, ys, strict=True)]
            ax_d.plot(range(len(xs)), waits, "o-", color=color, markersize=3, label=k["kind"])
        ax_t.plot([], [], "*", color="white", markeredgecolor="black", markersize=11, label="label settled")
        ax_t.set(xlabel="input step sent at (ms from step 0)", ylabel="first output that has seen it (ms)")
        ax_t.set_title(f"one step every {period_ms:g} ms: output time against input time", fontsize=10)
        ax_d.set(xlabel="input step t", ylabel="wait for its output (ms)", yscale="log")
        ax_d.set_title("wait of each input for an output (log)", fontsize=10)
        for ax in (ax_t, ax_d):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)


def sweep_plot(sweep: dict[str, Any], title: str, path: Path) -> None:
    """Per workload: p50, p99, p99.9 (log) against the offered load as a fraction of saturation."""
    workloads = list(dict.fromkeys(r["workload"] for r in sweep["rows"]))
    with figure(path, title, len(workloads)) as (_, axes):
        for ax, workload in zip(axes[0], workloads, strict=True):
            rows = [r for r in sweep["rows"] if r["workload"] == workload]
            xs = [100 * r["level"] for r in rows]
            for key, style, label in (
                ("p50_ms", "o:", "p50"),
                ("p99_ms", "s-", "p99"),
                ("p999_ms", "^--", "p99.9"),
            ):
                ax.plot(xs, [r[key] for r in rows], style, label=label)
            unit = "req/s" if workload == "classify" else "steps/s"
            xlabel = f"offered load, % of saturation ({sweep['saturation'][workload]:.0f} {unit})"
            ax.set(xlabel=xlabel, ylabel="latency from due time (ms)", yscale="log", title=workload)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)


def plots(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    env = results["environment"]
    where = f"server on 1 core ({env['cpu']}), load avg {env['loadavg_start']}"
    written = []

    def out(name: str) -> Path:
        written.append(out_dir / f"{stem}-{name}.png")
        return written[-1]

    if results.get("limit"):
        limit_plot(results["limit"], f"service, echo and limit, same run, {where}", out("limit"))
    if rows := results.get("classify", {}).get("rows"):
        limits = {r["figure"]: r["limit"] for r in results["limit"] if r["limit"] and r["unit"] == "req/s"}
        panels = [
            ("rps", "requests / s (log)", True),
            ("p99_ms", "latency p99 (p50 dotted), ms", True),
            ("server_cpu_us_per_request", "server CPU µs per request", False),
        ]
        title = f"POST classify ({results['classify']['model']}) vs echo, {where}"
        keys, xlabel = ("target", "format", "batch"), "concurrent connections (wrk)"
        line_panels(rows, keys, "connections", panels, xlabel, title, out("classify"), limits)
    if rows := results.get("streaming", {}).get("rows"):
        panels = [
            ("steps_per_s", f"steps answered / s (batching goal: {GOAL_BATCHING_GAIN:g}x off at 256)", False),
            ("p99_ms", "step round trip p99 (p50 dotted), ms", True),
            ("server_cpu_us_per_step", "server CPU µs per step", False),
        ]
        title = f"WebSocket steps ({results['streaming']['model']}), {where}"
        keys, xlabel = ("target", "batching", "frames"), "concurrent streams (closed loop)"
        line_panels(rows, keys, "streams", panels, xlabel, title, out("streams"))
    if sweep := results.get("sweep"):
        sweep_plot(sweep, f"open-loop sweep, {where}", out("sweep"))
    if f := results.get("first_output"):
        title = (
            "first output: a PSN answers after all T steps, masked and sliding PSNs and LIF after each step"
        )
        first_output_plot(f["kinds"], f["period_ms"], f"{title}\n{where}", out("latency"))
    return written
