"""Tables, plots and JSON for the ``neurons`` suite (kept apart from the measuring code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import common, plots
from bench.common import fmt_seconds, format_table

PARALLEL_TITLES = {"psn": "PSN", "masked_psn": "masked PSN", "sliding_psn": "sliding PSN"}
MODES = ("inference", "training")
BANDWIDTH_FORMS = ("psn", "psn:inplace", "psn:blocked", "psn:ort")
MODE_TITLES = {"inference": "forward (inference)", "training": "forward + backward (training)"}


def _n_label(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)


def _grid(result: dict[str, Any], mode: str, value) -> list[list[Any]]:
    """values[i][j] for T = config.T[i], N = config.N[j] (None where the cell was not measured)."""
    by_key = {(c["T"], c["N"]): c for c in result["cells"] if c["mode"] == mode}
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    return [[value(by_key[(T, N)]) if (T, N) in by_key else None for N in Ns] for T in Ts]


def ratio_tables(result: dict[str, Any]) -> str:
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    headers = ["T \\ N", *[_n_label(n) for n in Ns]]
    out: list[str] = []
    for mode in MODES:
        for name, title in PARALLEL_TITLES.items():
            grid = _grid(result, mode, lambda c, name=name: c["ratio"][name])
            rows = [[T, *row] for T, row in zip(Ts, grid, strict=True)]
            out.append(
                format_table(headers, rows, title=f"\n{mode}: t_LIF / t_{title}  (> 1: {title} faster)")
            )
        forms = _grid(result, mode, lambda c: c["lif_form"].removeprefix("lif:"))
        rows = [[T, *row] for T, row in zip(Ts, forms, strict=True)]
        out.append(format_table(headers, rows, title=f"\n{mode}: fastest LIF form (t_LIF)"))
        if mode == "inference":
            grid = _grid(result, mode, lambda c: c.get("torch_over_ort"))
            rows = [[T, *row] for T, row in zip(Ts, grid, strict=True)]
            out.append(format_table(headers, rows, title="\ninference: t_PSN(torch) / t_PSN(ONNX Runtime)"))
    return "\n".join(out)


def time_table(result: dict[str, Any], mode: str) -> str:
    names = ["psn", "masked_psn", "sliding_psn"] + (["psn:ort"] if mode == "inference" else [])
    lif_forms = sorted(
        {k for c in result["cells"] if c["mode"] == mode for k in c["times"] if k.startswith("lif")}
    )
    headers = ["T", "N", *[f.removeprefix("lif:") for f in lif_forms], *names]
    rows = []
    for c in (c for c in result["cells"] if c["mode"] == mode):
        t = c["times"]
        rows.append(
            [
                c["T"],
                _n_label(c["N"]),
                *[fmt_seconds(t[f]["median_s"]) if f in t else "-" for f in lif_forms],
                *[fmt_seconds(t[n]["median_s"]) if n in t else "-" for n in names],
            ]
        )
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
    rows = []
    for r in bw["rows"]:
        cells = []
        for f in forms:
            x = r["forms"].get(f)
            cells.append(
                "-"
                if x is None
                else f"{x['GBps']:.1f} ({x['percent_of_copy']:.0f}%, {100 * x['roofline_fraction']:.0f}%)"
            )
        rows.append([r["T"], r["bound"], r["copy_GBps"], *cells])
    return head + "\n" + format_table(headers, rows)


def plot_all(result: dict[str, Any], out_dir: Path, device) -> list[Path]:
    env = result["environment"]
    Ts, Ns = result["config"]["T"], result["config"]["N"]
    row_labels, col_labels = [str(t) for t in Ts], [_n_label(n) for n in Ns]
    where = f"{env['device_name']}, torch {env['torch']}"
    common_kw = dict(xlabel="N (neurons)", ylabel="T (time steps)", cbar_label="t_LIF / t_PSN")
    paths = []
    _, main_png = common.output_paths(out_dir, "bench-neurons", device)
    panels = [plots.Heatmap(MODE_TITLES[m], _grid(result, m, lambda c: c["ratio"]["psn"])) for m in MODES]
    plots.ratio_heatmaps(
        panels, row_labels, col_labels, suptitle=f"t_LIF / t_PSN  ({where})", path=main_png, **common_kw
    )
    paths.append(main_png)
    _, fam_png = common.output_paths(out_dir, "bench-neurons-family", device)
    panels = [
        plots.Heatmap(
            f"{PARALLEL_TITLES[n]}: {MODE_TITLES[m]}", _grid(result, m, lambda c, n=n: c["ratio"][n])
        )
        for n in ("masked_psn", "sliding_psn")
        for m in MODES
    ]
    plots.ratio_heatmaps(
        panels,
        row_labels,
        col_labels,
        suptitle=f"t_LIF / t_masked|sliding PSN  ({where})",
        path=fam_png,
        **common_kw,
    )
    paths.append(fam_png)
    bw = result["bandwidth"]
    if bw["rows"]:
        _, bw_png = common.output_paths(out_dir, "bench-neurons-bandwidth", device)
        forms = [f for f in BANDWIDTH_FORMS if f in bw["rows"][0]["forms"]]
        series = {"copy (same tensor)": [r["copy_GBps"] for r in bw["rows"]]}
        series.update({f: [r["forms"].get(f, {}).get("GBps") for r in bw["rows"]] for f in forms})
        plots.bandwidth_bars(
            [r["T"] for r in bw["rows"]],
            series,
            bw["copy_reference_GBps"],
            title=f"PSN forward effective bandwidth at N = {_n_label(bw['N'])}  ({where})",
            path=bw_png,
        )
        paths.append(bw_png)
    return paths


def report(result: dict[str, Any], out_dir: Path, device) -> None:
    """Print the tables, write the JSON and the plots."""
    env, cfg = result["environment"], result["config"]
    json_path, _ = common.output_paths(out_dir, "bench-neurons", device)
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
    common.write_json(json_path, result)
    paths = plot_all(result, out_dir, device)
    print("\nwrote", json_path, *paths)
