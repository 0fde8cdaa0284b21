"""``psn bench memory``: peak training memory with IF neurons vs PSN, as in the paper's Table 4: a small
VGG-style network trained for one step with no neurons, IF neurons or PSN; Δ = M − M_NO estimates the memory
of the neurons' hidden states (the paper expects Δ_IF / Δ_PSN ≈ 2)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

from bench import common
from bench.common import format_table

FULL_CONFIGS = ((4, 16), (8, 16), (16, 8), (16, 16))  # (T, N); the paper's are (16, 16), (8, 16), (16, 8)
QUICK_CONFIGS = ((4, 4),)
RESULT_TAG = "MEMORY_RESULT "
METHOD = (
    "CPU: each configuration in a fresh subprocess whose glibc allocator returns every block above 64 KiB to "
    "the OS when freed, so the RSS follows live tensors; after a warm-up step the peak-RSS mark is reset "
    "(/proc/self/clear_refs) and M is the peak RSS during one forward + backward minus the RSS before it. "
    "Also the bytes autograd saves for the backward (saved_tensors_hooks, unique storages)."
)
V_TH, ALPHA = 1.0, 2.0


class Kind(StrEnum):
    NONE = "none"
    IF = "if"
    IF_FUSED = "if_fused"
    PSN = "psn"


KIND_HELP = {
    Kind.NONE: "no neurons (identity): synapses only, M_NO",
    Kind.IF: "IF, autograd over each step like SpikingJelly's torch backend (keeps H-V_th, H, 1-S per step)",
    Kind.IF_FUSED: "IF, one multi-step function, hand-written BPTT keeping only H (like SpikingJelly's CUDA)",
    Kind.PSN: "PSN (psn.neurons.PSN: keeps only its input X; H is recomputed in the backward)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = common.arguments("psn bench memory", __doc__, "folder for the JSON and PNG")
    common.add_device(p)
    p.add_argument("--config", nargs=2, type=int, action="append", metavar=("T", "N"), help="repeatable")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at a time (memory is per process)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ network


def build_network(kind: str, T: int, channels: tuple[int, int], side: int, classes: int = 10) -> Any:
    """VGG-style on [T, N, C, H, W]: [conv-BN-neuron] ×2 (c1), max-pool, [conv-BN-neuron] ×2 (c2), max-pool,
    linear; the per-step layers with time folded into the batch."""
    import torch
    from torch import nn

    from bench.neurons.kernels import lif_bptt
    from psn.neurons import PSN
    from psn.surrogate import heaviside

    class TimeDistributed(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # [T*N, ...] -> [T, N, ...]

    class IFNeuron(nn.Module):
        """IF, hard reset, autograd over each step (SpikingJelly's default torch backend does the same)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v, spikes = torch.zeros_like(x[0]), []
            for t in range(x.shape[0]):
                h = v + x[t]
                spikes.append(heaviside(h - V_TH, ALPHA))
                v = h * (1.0 - spikes[-1])
            return torch.stack(spikes)  # [T, N, ...]

    class IFFused(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return lif_bptt(x, False, 0.0, 1.0)  # IF: no leak, tau 1

    neuron = {"none": nn.Identity, "if": IFNeuron, "if_fused": IFFused, "psn": lambda: PSN(T, ALPHA)}[kind]
    if side % 4:
        raise ValueError(f"the input side must be a multiple of 4, got {side}")
    (c1, c2), c_in, layers = channels, 3, []
    for c_out, pool in ((c1, False), (c1, True), (c2, False), (c2, True)):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        layers += [TimeDistributed(conv), TimeDistributed(nn.BatchNorm2d(c_out)), neuron()]
        layers += [TimeDistributed(nn.MaxPool2d(2))] if pool else []
        c_in = c_out
    layers += [TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(c2 * (side // 4) ** 2, classes))]
    return nn.Sequential(*layers)


def hidden_state_numel(channels: tuple[int, int], side: int) -> int:
    """Neurons per sample per step: one hidden state of the whole network is this many floats."""
    return 2 * channels[0] * side**2 + 2 * channels[1] * (side // 2) ** 2


# ------------------------------------------------------------------------------------------------ worker


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise common.BenchError(f"/proc/self/status has no {key}: peak RSS needs Linux")


def measure(kind: Kind, T: int, N: int, device_name: str, quick: bool) -> dict[str, Any]:
    """One training step's peak memory above the steady state, and autograd's saved bytes (MiB)."""
    if device_name == "cpu":  # blocks above 64 KiB come from mmap and go back to the OS on free
        libc, m_mmap_threshold, m_trim_threshold = ctypes.CDLL("libc.so.6"), -3, -1
        if not (libc.mallopt(m_mmap_threshold, 64 * 1024) and libc.mallopt(m_trim_threshold, 64 * 1024)):
            raise common.BenchError("mallopt failed: the RSS method needs glibc")
    import torch
    from torch.nn import functional as F

    device, side, channels = torch.device(device_name), 16 if quick else 32, (8, 8) if quick else (32, 64)
    torch.manual_seed(0)
    net = build_network(kind.value, T, channels, side).to(device)
    x = torch.randn(T, N, 3, side, side, device=device)  # [T, N, C, H, W]
    y = torch.randint(0, 10, (N,), device=device)

    def step() -> None:
        F.cross_entropy(net(x).mean(0), y).backward()  # logits [T, N, 10] -> mean over time

    step()  # warm-up: parameter gradients, library workspaces, lazy initialisation
    net.zero_grad(set_to_none=False)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _proc_status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
        step()
        peak = _proc_status_kib("VmHWM") * 1024 - base
    net.zero_grad(set_to_none=False)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    mib, hidden = 2.0**20, 4 * T * N * hidden_state_numel(channels, side)
    out = {"kind": kind.value, "T": T, "N": N, "peak_MiB": peak / mib, "saved_MiB": sum(saved.values()) / mib}
    return out | {"hidden_state_MiB": hidden / mib}


def worker(spec: str) -> int:
    args = json.loads(spec)
    for kind in args["kinds"]:
        result = measure(Kind(kind), args["T"], args["N"], args["device"], args["quick"])
        print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ parent


def run_worker(kinds: list[Kind], T: int, N: int, device: str, quick: bool) -> list[dict[str, Any]]:
    """Measure ``kinds`` in one fresh Python process, one after the other."""
    spec = json.dumps({"kinds": [k.value for k in kinds], "T": T, "N": N, "device": device, "quick": quick})
    results = common.run_module("bench.memory.suite", ["--worker", spec], RESULT_TAG, 900)
    if len(results) != len(kinds):
        raise common.BenchError(f"memory worker {kinds} T={T} N={N}: {len(results)} results")
    return results


def summarize(results: list[dict[str, Any]], configs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    rows, ifs = [], (Kind.IF, Kind.IF_FUSED)
    for T, N in configs:
        by = {r["kind"]: r for r in results if r["T"] == T and r["N"] == N}
        row: dict[str, Any] = {"T": T, "N": N, "hidden_state_MiB": by[Kind.PSN]["hidden_state_MiB"]}
        for metric in ("peak_MiB", "saved_MiB"):
            m = {k: by[k][metric] for k in by}
            delta = {k: m[k] - m[Kind.NONE] for k in m if k != Kind.NONE}
            row |= {metric: m, f"delta_{metric}": delta}
            row[f"ratio_{metric}"] = {k: delta[k] / delta[Kind.PSN] for k in ifs if delta[Kind.PSN] > 0}
            row[f"per_TN_KiB_{metric}"] = {k: (delta[k] - delta[Kind.PSN]) * 1024 / (T * N) for k in ifs}
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.resolve_device(args.device)
    configs = [tuple(c) for c in (args.config or (QUICK_CONFIGS if args.quick else FULL_CONFIGS))]
    if any(T < 1 or N < 1 for T, N in configs):
        raise common.BenchError("--config T N needs positive numbers")
    if args.jobs < 1:
        raise common.BenchError("--jobs must be >= 1")
    env = common.environment(device)
    # one fresh process per (kind, T, N); --quick measures all kinds of a configuration in one process
    groups = [[k] for k in Kind] if not args.quick else [list(Kind)]
    jobs = [(kinds, T, N) for T, N in configs for kinds in groups]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_worker, k, T, N, device.type, args.quick) for k, T, N in jobs]
        done = common.progress(futures, total=len(futures), desc="memory (subprocesses)", quiet=args.quiet)
        results = [r for f in done for r in f.result()]
    env["loadavg_end"] = common.load_average()
    cuda = "torch.cuda.max_memory_allocated during one step minus memory_allocated before it"
    network = "quick: conv 8-8, 16x16" if args.quick else "conv 32-32-pool-64-64-pool, 32x32x3"
    kinds = {k.value: v for k, v in KIND_HELP.items()}
    config = {"quick": bool(args.quick), "network": network, "kinds": kinds}
    out = {"suite": "memory", "environment": env, "method": METHOD if device.type == "cpu" else cuda}
    return out | {"config": config, "results": results, "rows": summarize(results, configs)}


def report(result: dict[str, Any], out_dir: Path) -> None:
    """Print the tables, write the JSON and the plot."""
    env, rows = result["environment"], result["rows"]
    json_path, png_path = common.output_paths(out_dir, "bench-memory", env["device"])
    print(f"memory benchmark on {env['device_name']} (torch {env['torch']}), {env['date']}")
    print("method:", result["method"])
    for kind, text in result["config"]["kinds"].items():
        print(f"  {kind:<8} {text}")
    headers = ["T", "N", "M_NO", "M_IF", "M_IF_fused", "M_PSN", "Δ_IF", "Δ_IF_fused", "Δ_PSN"]
    headers += ["Δ_IF/Δ_PSN", "Δ_IF_fused/Δ_PSN", "(Δ_IF-Δ_PSN)/TN KiB", "hidden/TN KiB"]
    what = {"peak_MiB": "peak memory of one training step", "saved_MiB": "bytes saved for backward"}
    for metric in ("peak_MiB", "saved_MiB"):
        table = []
        for r in rows:
            m, d, q = r[metric], r[f"delta_{metric}"], r[f"ratio_{metric}"]
            row = [r["T"], r["N"], *(m[k] for k in ("none", "if", "if_fused", "psn"))]
            row += [*(d[k] for k in ("if", "if_fused", "psn")), q.get("if"), q.get("if_fused")]
            per_tn = r["hidden_state_MiB"] * 1024 / (r["T"] * r["N"])
            table.append([*row, r[f"per_TN_KiB_{metric}"]["if"], per_tn])
        print(format_table(headers, table, title=f"\n{what[metric]} (MiB; Δ = M - M_NO)"))
    common.write_json(json_path, result)
    series = {
        "Δ IF (autograd per step)": [r["delta_peak_MiB"]["if"] for r in rows],
        "Δ IF (fused BPTT)": [r["delta_peak_MiB"]["if_fused"] for r in rows],
        "Δ PSN": [r["delta_peak_MiB"]["psn"] for r in rows],
        "one hidden state (4 B × neurons × T × N)": [r["hidden_state_MiB"] for r in rows],
    }
    title = f"Peak training memory above no-neuron network ({env['device_name']})"
    with common.figure(png_path, title, size=(8.5, 4.2)) as (_, axes):
        ax, top = axes[0][0], max((max(v) for v in series.values() if v), default=1.0)
        common.bars(ax, [f"T={r['T']}, N={r['N']}" for r in rows], series)
        for i, r in enumerate(rows):
            ratio = r["ratio_peak_MiB"].get("if", 0.0)
            ax.text(i, top * 1.03, f"ΔIF/ΔPSN = {ratio:.2f}", ha="center", fontsize=9)
        ax.set_ylim(0, top * 1.45)
        ax.set_ylabel("Δ = M - M_NO (MiB)")
        ax.legend(fontsize=8, ncols=2, loc="upper left")
    print("\nwrote", json_path, png_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    if args.worker:
        return worker(args.worker)
    report(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
