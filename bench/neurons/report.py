"""Tables, plots and JSON for the ``neurons`` suite (kept apart from the measuring code)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import common
from bench.common import format_table

PARALLEL_TITLES = {"psn": "PSN", "masked_psn": "masked PSN", "sliding_psn": "sliding PSN"}
MODES = ("inference", "training")
BANDWIDTH_FORMS = ("psn", "psn:inplace", "psn:blocked", "psn:ort")
MODE_TITLES = {"inference": "forward (inference)", "training": "forward + backward (training)"}


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def _n_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def _grid(result: dict[str, Any], mode: str, value) -> list[list[Any]]:
    """values[i][j] for T = config.T[i], N = config.N[j] (None where the cell was not measured)."""
    by_key = {(c["T"], c["N"]): c for c in result["cells"] if c["mode"] == mode}
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    return [[value(by_key[(T, N)]) if (T, N) in by_key else None for N in Ns] for T in Ts]


def ratio_tables(result: dict[str, Any]) -> str:
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    headers, specs = ["T \\ N", *[_n_label(n) for n in Ns]], []
    for mode in MODES:
        for n, t in PARALLEL_TITLES.items():
            specs.append((mode, f"t_LIF / t_{t}  (> 1: {t} faster)", lambda c, n=n: c["ratio"][n]))
        specs.append((mode, "fastest LIF form (t_LIF)", lambda c: c["lif_form"].removeprefix("lif:")))
    specs.append(("inference", "t_PSN(torch) / t_PSN(ONNX Runtime)", lambda c: c.get("torch_over_ort")))
    return "\n".join(
        format_table(
            headers,
            [[T, *row] for T, row in zip(Ts, _grid(result, mode, fn), strict=True)],
            f"\n{mode}: {title}",
        )
        for mode, title, fn in specs
    )


def time_table(result: dict[str, Any], mode: str) -> str:
    names = ["psn", "masked_psn", "sliding_psn"] + (["psn:ort"] if mode == "inference" else [])
    cells = [c for c in result["cells"] if c["mode"] == mode]
    forms = sorted({k for c in cells for k in c["times"] if k.startswith("lif")}) + names
    headers = ["T", "N", *[f.removeprefix("lif:") for f in forms]]
    rows = [
        [c["T"], _n_label(c["N"]), *[fmt_seconds(c["times"].get(f, {}).get("median_s")) for f in forms]]
        for c in cells
    ]
    return format_table(
        headers, rows, title=f"\n{mode}: median time per call (LIF forms, then the PSN family)"
    )


def bandwidth_table(result: dict[str, Any]) -> str:
    bw = result["bandwidth"]
    rb, ra = bw["rates_before"], bw["rates_after"]
    head = (
        f"\nPSN forward at N = {_n_label(bw['N'])}: effective bandwidth = (read X + write S) / time, "
        "against a copy_ of the same [T, N] tensor timed in the same rounds (goal >= 50%;\n"
        "at T <= 4 the data fit the 32 MiB L3 cache, so both run from cache).\n"
        f"DRAM copy ({rb['copy_bytes'] / 2**20:.0f} MiB buffers), before / after the grid: "
        + ", ".join(f"{k} {rb['copy_GBps'][k]:.1f} / {ra['copy_GBps'][k]:.1f} GB/s" for k in rb["copy_GBps"])
        + f". FP32 GEMM ({rb['gemm_size']}^3) {rb['gemm_GFLOPs']:.0f} / {ra['gemm_GFLOPs']:.0f} GFLOP/s.\n"
        "PSN does 2 T^2 N flops for 8 T N bytes (T/4 flop/byte), so past some T it is compute-bound: "
        "roofline = max(bytes / copy rate, flops / GEMM rate) / time."
    )
    forms = [f for f in BANDWIDTH_FORMS if any(f in r["forms"] for r in bw["rows"])]
    headers = ["T", "bound", "copy GB/s", *[f"{f}: GB/s (% copy, % roofline)" for f in forms]]

    def cell(x: dict[str, float] | None) -> str:
        if x is None:
            return "-"
        return f"{x['GBps']:.1f} ({x['percent_of_copy']:.0f}%, {100 * x['roofline_fraction']:.0f}%)"

    rows = [
        [r["T"], r["bound"], r["copy_GBps"], *(cell(r["forms"].get(f)) for f in forms)] for r in bw["rows"]
    ]
    return head + "\n" + format_table(headers, rows)


def heatmaps(result: dict[str, Any], panels: list[tuple[str, list]], title: str, path: Path) -> None:
    """Side-by-side heat maps of t_LIF / t_X over (T, N) on a log scale centred on 1, cells annotated."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    finite = [v for _, grid in panels for row in grid for v in row if v is not None and v > 0]
    span = max(1.0, max(abs(math.log2(v)) for v in finite)) if finite else 1.0
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    with common.figure(path, title, 2, math.ceil(len(panels) / 2), (4.9, 4.2)) as (fig, axes):
        for ax, (name, grid) in zip(axes.flat, panels, strict=False):
            data = np.array([[np.nan if v is None else math.log2(v) for v in row] for row in grid])
            image = ax.imshow(data, cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
            ax.set_xticks(range(len(Ns)), [_n_label(n) for n in Ns])
            ax.set_yticks(range(len(Ts)), [str(t) for t in Ts])
            ax.set(xlabel="N (neurons)", ylabel="T (time steps)")
            ax.set_title(name, fontsize=11)
            for (i, j), v in np.ndenumerate(np.array(grid, dtype=object)):
                text = "n/a" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
                color = "white" if v is not None and abs(math.log2(v)) > 0.6 * span else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
        ticks = [t for t in range(-math.ceil(span), math.ceil(span) + 1) if abs(t) <= span]
        bar = fig.colorbar(image, ax=axes, ticks=ticks, shrink=0.9)
        bar.ax.set_yticklabels([f"{2.0**t:g}" for t in ticks])
        bar.set_label("t_LIF / t_PSN")


def plot_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    env, bw = result["environment"], result["bandwidth"]
    where = f"{env['device_name']}, torch {env['torch']}"
    stems = ("bench-neurons", "bench-neurons-family", "bench-neurons-bandwidth")
    paths = [common.output_paths(out_dir, stem, env["device"])[1] for stem in stems]
    psn = [(MODE_TITLES[m], _grid(result, m, lambda c: c["ratio"]["psn"])) for m in MODES]
    heatmaps(result, psn, f"t_LIF / t_PSN  ({where})", paths[0])
    family = [
        (f"{PARALLEL_TITLES[n]}: {MODE_TITLES[m]}", _grid(result, m, lambda c, n=n: c["ratio"][n]))
        for n in ("masked_psn", "sliding_psn")
        for m in MODES
    ]
    heatmaps(result, family, f"t_LIF / t_masked|sliding PSN  ({where})", paths[1])
    if not bw["rows"]:
        return paths[:2]
    forms = [f for f in BANDWIDTH_FORMS if f in bw["rows"][0]["forms"]]
    series = {"copy (same tensor)": [r["copy_GBps"] for r in bw["rows"]]}
    series |= {f: [r["forms"].get(f, {}).get("GBps") for r in bw["rows"]] for f in forms}
    title = f"PSN forward effective bandwidth at N = {_n_label(bw['N'])}  ({where})"
    with common.figure(paths[2], title, size=(8.5, 4.2)) as (_, axes):
        ax, ref = axes[0][0], bw["copy_reference_GBps"]
        common.bars(ax, [str(r["T"]) for r in bw["rows"]], series)
        ax.axhline(ref, color="black", linestyle="--", linewidth=1, label=f"DRAM copy {ref:.0f} GB/s")
        ax.set(xlabel="T (time steps)", ylabel="effective GB/s  (read X + write S) / time")
        ax.legend(fontsize=8, ncols=2)
    return paths


def report(result: dict[str, Any], out_dir: Path) -> None:
    """Print the tables, write the JSON and the plots."""
    env, cfg = result["environment"], result["config"]
    json_path, _ = common.output_paths(out_dir, "bench-neurons", env["device"])
    print(f"neurons benchmark on {env['device_name']} (torch {env['torch']}), {env['date']}")
    if env.get("note"):
        print(env["note"], f"load average at start {env['loadavg_start']}, at end {env.get('loadavg_end')}.")
    print(
        "t_LIF is the fastest LIF form measured in each cell (forms: eager module, TorchScript loop, "
        "torch.compile; training: autograd over steps, hand-written BPTT in TorchScript, BPTT with "
        f"torch.compile'd steps). torch.compile used: {cfg['torch_compile']}; "
        f"compile seconds: { {k: round(v, 1) for k, v in cfg['compile_s'].items()} }. "
        f"Freed memory kept in-process (glibc): {cfg['malloc_reuse']}."
    )
    print(ratio_tables(result))
    for mode in MODES:
        print(time_table(result, mode))
    print(bandwidth_table(result))
    for note in result["notes"]:
        print("note:", note)
    common.write_outputs(json_path, result, lambda: plot_all(result, out_dir))
