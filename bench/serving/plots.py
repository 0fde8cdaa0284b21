"""Plots of the serving suite (matplotlib, headless Agg backend, imported only when the suite plots)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.plots import pyplot
from bench.serving.report import GOAL_BATCHING_GAIN, KIND_COLORS


def groups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def line_panels(
    rows: list[dict[str, Any]],
    keys: tuple[str, ...],
    x: str,
    panels: Sequence[tuple[str, str, bool]],
    style: Callable[[tuple], dict[str, Any]],
    xlabel: str,
    title: str,
    path: Path,
    extra: Callable[[list], None] | None = None,
) -> None:
    """One panel per (y key, y label, log y); a line per group of rows (values of ``keys``), x on a log2
    axis; ``style(group) -> plot kwargs`` (label, color, marker, linestyle); p99 panels draw p50 dotted."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), constrained_layout=True)
    xs_all = sorted({r[x] for r in rows})
    for key_group, group in groups(rows, keys).items():
        group = sorted(group, key=lambda r: r[x])
        xs = [r[x] for r in group]
        kw = style(key_group)
        for ax, (y, _, _) in zip(axes, panels, strict=True):
            ax.plot(xs, [_nan(r.get(y)) for r in group], **kw)
            if y == "p99_ms" and kw.get("linestyle", "-") == "-":
                ax.plot(xs, [_nan(r.get("p50_ms")) for r in group], ":", color=kw.get("color"), marker=".")
    for ax, (_, ylabel, log) in zip(axes, panels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [str(v) for v in xs_all])
        ax.minorticks_off()
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_yscale("log" if log else "linear")
        if not log:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    if extra is not None:
        extra(list(axes))
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def limit_plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """One panel per unit (req/s, steps/s, ms): service, echo and limit side by side for each figure, the
    fraction of the limit written over the service's bar."""
    plt = pyplot()
    units = [u for u in ("req/s", "steps/s", "ms") if any(r["unit"] == u for r in rows)]
    fig, axes = plt.subplots(
        1, len(units), figsize=(5.2 * len(units), 4.6), constrained_layout=True, squeeze=False
    )
    colors = {"service": "tab:green", "echo": "tab:gray", "limit": "tab:blue"}
    for ax, unit in zip(axes[0], units, strict=True):
        group = [r for r in rows if r["unit"] == unit]
        for j, r in enumerate(group):
            for k, name in enumerate(colors):
                ax.bar(
                    j + (k - 1) * 0.26,
                    r[name] or 0.0,
                    0.26,
                    color=colors[name],
                    label=name if j == 0 else None,
                )
            if r["fraction"] is not None:
                ax.text(j - 0.26, r["service"], f"{r['fraction']:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(group)), [r["figure"].replace(", ", "\n", 2) for r in group], fontsize=7)
        ax.set_ylabel(unit + (" (lower is better)" if unit == "ms" else ""))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("number over the service: fraction of the limit", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def first_output_plot(kinds: list[dict[str, Any]], period_ms: float, title: str, path: Path) -> None:
    """Left: when each input's first output arrived against when the input was sent; right: the wait of each
    input for its output."""
    plt = pyplot()
    fig, (ax_t, ax_d) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    end = max(max(k["output_ms"]) for k in kinds)
    ax_t.plot([0, end], [0, end], color="black", linewidth=0.6, linestyle=":", label="output = input")
    for k in kinds:
        color, xs, ys = KIND_COLORS.get(k["kind"]), k["input_ms"], k["output_ms"]
        label = (
            f"{k['kind']}: first output {k['first_output_ms']:.1f} ms, label settled {k['settled_ms']:.1f}, "
            f"decision {k['decision_ms']:.1f}"
        )
        ax_t.plot(xs, ys, "o-", color=color, linewidth=1.4, markersize=3, label=label)
        # the output closest in time to the moment the running label became the final one (the last of ties)
        settled = max(range(len(ys)), key=lambda i: (-round(abs(ys[i] - k["settled_ms"]), 3), i))
        ax_t.plot([xs[settled]], [ys[settled]], "*", color=color, markersize=14, markeredgecolor="black")
        ax_d.plot(
            range(len(xs)),
            [max(o - i, 1e-3) for i, o in zip(xs, ys, strict=True)],
            "o-",
            color=color,
            markersize=3,
            label=k["kind"],
        )
    ax_t.plot(
        [], [], "*", color="white", markeredgecolor="black", markersize=11, label="label settled (final)"
    )
    ax_t.set(xlabel="input step sent at (ms from step 0)", ylabel="first output that has seen it (ms)")
    ax_t.set_title(f"one step every {period_ms:g} ms: output time against input time", fontsize=10)
    ax_d.set(xlabel="input step t", ylabel="wait for its output (ms)", yscale="log")
    ax_d.set_title("wait of each input for an output (log)", fontsize=10)
    for ax in (ax_t, ax_d):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_plot(sweep: dict[str, Any], title: str, path: Path) -> None:
    """Per workload: p50, p99, p99.9 (log) against the offered load as a fraction of saturation."""
    plt = pyplot()
    workloads = list(dict.fromkeys(r["workload"] for r in sweep["rows"]))
    fig, axes = plt.subplots(
        1, len(workloads), figsize=(5.5 * len(workloads), 4.5), constrained_layout=True, squeeze=False
    )
    for ax, workload in zip(axes[0], workloads, strict=True):
        rows = [r for r in sweep["rows"] if r["workload"] == workload]
        xs = [100 * r["level"] for r in rows]
        for key, style in (("p50_ms", "o:"), ("p99_ms", "s-"), ("p999_ms", "^--")):
            ax.plot(xs, [r[key] for r in rows], style, label=key.removesuffix("_ms").replace("p999", "p99.9"))
        unit = "req/s" if workload == "classify" else "steps/s"
        ax.set(
            xlabel=f"offered load, % of saturation ({sweep['saturation'][workload]:.0f} {unit})",
            ylabel="latency from due time (ms)",
            yscale="log",
            title=workload,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        colors = {
            (1, "json"): "tab:blue",
            (16, "json"): "tab:orange",
            (1, "v2-binary"): "tab:green",
            (16, "v2-binary"): "tab:olive",
        }
        limits = {r["figure"]: r["limit"] for r in results.get("limit", [])}

        def style(g: tuple) -> dict[str, Any]:
            target, fmt, batch = g
            name = "psn serve" if target == "service" else f"{target} (floor)" if target == "echo" else target
            return {
                "label": f"{name}, {fmt}, batch {batch}",
                "color": colors.get((batch, fmt), "tab:purple"),
                "marker": "o",
                "linestyle": {"service": "-", "echo": "--"}.get(target, "-."),
            }

        def mark_limit(axes: list) -> None:
            for name, value in limits.items():
                if value and name.startswith("classify"):
                    axes[0].axhline(
                        value, color="black", linewidth=0.8, linestyle="-.", label=f"limit: {name}"
                    )

        line_panels(
            rows,
            ("target", "format", "batch"),
            "connections",
            [
                ("rps", "requests / s (log)", True),
                ("p99_ms", "latency p99 (p50 dotted), ms", True),
                ("server_cpu_us_per_request", "server CPU µs per request", False),
            ],
            style,
            "concurrent connections (wrk)",
            f"POST classify ({results['classify']['model']}) vs echo, {where}",
            out("classify"),
            mark_limit,
        )
    if rows := results.get("streaming", {}).get("rows"):
        colors = {"on": "tab:green", "off": "tab:red", "-": "black"}

        def style(g: tuple) -> dict[str, Any]:
            target, batching, frames = g
            name = (
                f"batching {batching}"
                if target == "service"
                else f"{target} (floor)"
                if target == "echo"
                else target
            )
            return {
                "label": f"{name}, {frames} frames",
                "color": colors.get(batching, "black") if target != "fastapi-echo" else "tab:gray",
                "marker": {"binary": "o", "json": "s"}.get(frames, "^"),
                "linestyle": {"service": "-", "echo": "--"}.get(target, "-."),
            }

        line_panels(
            rows,
            ("target", "batching", "frames"),
            "streams",
            [
                (
                    "steps_per_s",
                    f"steps answered / s (batching goal: {GOAL_BATCHING_GAIN:g}x off at 256)",
                    False,
                ),
                ("p99_ms", "step round trip p99 (p50 dotted), ms", True),
                ("server_cpu_us_per_step", "server CPU µs per step", False),
            ],
            style,
            "concurrent streams (closed loop)",
            f"WebSocket steps ({results['streaming']['model']}), {where}",
            out("streams"),
        )
    if sweep := results.get("sweep"):
        sweep_plot(sweep, f"open-loop sweep, {where}", out("sweep"))
    if f := results.get("first_output"):
        title = (
            "first output: a PSN answers after all T steps, masked and sliding PSNs and LIF after each step"
            f"\n{where}"
        )
        first_output_plot(f["kinds"], f["period_ms"], title, out("latency"))
    return written
