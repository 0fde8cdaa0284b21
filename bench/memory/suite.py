"""``psn bench memory``: peak training memory with IF neurons vs PSN, as in the paper's Table 4: a small
VGG-style network trained for one step with no neurons, IF neurons or PSN; Δ = M − M_NO estimates the memory
of the neurons' hidden states (the paper expects Δ_IF / Δ_PSN ≈ 2)."""

from __future__ import annotations

import argparse
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
V_TH = 1.0
ALPHA = 2.0
METHOD = (
    "CPU: each configuration in a fresh subprocess whose glibc allocator returns every block above 64 KiB to "
    "the OS when freed, so the RSS follows live tensors; after a warm-up step the peak-RSS mark is reset "
    "(/proc/self/clear_refs) and M is the peak RSS during one forward + backward minus the RSS before it. "
    "Also the bytes autograd saves for the backward (saved_tensors_hooks, unique storages)."
)


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
    linear; the per-step layers with time folded into the batch (torch is imported only here: the parent
    process of the suite needs none)."""
    import torch
    from torch import nn

    from bench.neurons.kernels import lif_bptt
    from psn.neurons import PSN
    from psn.surrogate import heaviside

    class TimeDistributed(nn.Module):
        """Applies a per-step module to [T, N, ...] by folding time into the batch."""

        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.module(x.flatten(0, 1))  # [T*N, ...]
            return y.unflatten(0, x.shape[:2])  # [T, N, ...]

    class IFNeuron(nn.Module):
        """IF, hard reset, autograd over each step (SpikingJelly's default torch backend does the same):
        H[t] = V[t-1] + X[t], S[t] = Θ(H[t] − V_th), V[t] = H[t] (1 − S[t])."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = torch.zeros_like(x[0])
            spikes = []
            for t in range(x.shape[0]):
                h = v + x[t]
                s = heaviside(h - V_TH, ALPHA)
                v = h * (1.0 - s)
                spikes.append(s)
            return torch.stack(spikes)  # [T, N, ...]

    class IFFused(nn.Module):
        """IF over all steps in one function with hand-written BPTT, keeping only H: the LIF kernel of the
        neurons suite with no leak and tau 1 (H = V + X)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return lif_bptt(x, False, leak=0.0, tau=1.0)

    def make_neuron() -> nn.Module:
        if kind == "none":
            return nn.Identity()
        if kind == "if":
            return IFNeuron()
        if kind == "if_fused":
            return IFFused()
        if kind == "psn":
            return PSN(T, ALPHA)
        raise ValueError(f"unknown neuron kind {kind!r}")

    if side % 4:
        raise ValueError(f"the input side must be a multiple of 4, got {side}")
    c1, c2 = channels
    layers: list[nn.Module] = []
    c_in = 3
    for c_out, pool in ((c1, False), (c1, True), (c2, False), (c2, True)):
        layers += [
            TimeDistributed(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
            TimeDistributed(nn.BatchNorm2d(c_out)),
            make_neuron(),
        ]
        if pool:
            layers.append(TimeDistributed(nn.MaxPool2d(2)))
        c_in = c_out
    layers += [TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(c2 * (side // 4) ** 2, classes))]
    return nn.Sequential(*layers)


def hidden_state_numel(channels: tuple[int, int], side: int) -> int:
    """Neurons per sample per step: one hidden state of the whole network is this many floats."""
    c1, c2 = channels
    return 2 * c1 * side**2 + 2 * c2 * (side // 2) ** 2


# ------------------------------------------------------------------------------------------------ worker


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise common.BenchError(f"/proc/self/status has no {key}: peak RSS needs Linux")


def measure(kind: Kind, T: int, N: int, device_name: str, quick: bool) -> dict[str, Any]:
    """One training step's peak memory above the steady state, and autograd's saved bytes (MiB)."""
    # CPU: blocks above 64 KiB come from mmap and go back to the OS on free (no dynamic threshold)
    freed = {common.M_MMAP_THRESHOLD: 64 * 1024, common.M_TRIM_THRESHOLD: 64 * 1024}
    if device_name == "cpu" and not common.mallopt(freed):
        raise common.BenchError("mallopt failed: the RSS method needs glibc")
    import torch
    from torch.nn import functional as F

    device = torch.device(device_name)
    torch.manual_seed(0)
    side = 16 if quick else 32
    channels = (8, 8) if quick else (32, 64)
    net = build_network(kind.value, T, channels, side).to(device)
    x = torch.randn(T, N, 3, side, side, device=device)  # [T, N, C, H, W]
    y = torch.randint(0, 10, (N,), device=device)

    def step() -> None:
        loss = F.cross_entropy(net(x).mean(0), y)  # logits [T, N, 10] -> mean over time
        loss.backward()

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
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    mib = 2.0**20
    return {
        "kind": kind.value,
        "T": T,
        "N": N,
        "peak_MiB": peak / mib,
        "saved_MiB": sum(saved.values()) / mib,
        "hidden_state_MiB": 4 * T * N * hidden_state_numel(channels, side) / mib,
    }


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
    rows = []
    for T, N in configs:
        by = {r["kind"]: r for r in results if r["T"] == T and r["N"] == N}
        row: dict[str, Any] = {"T": T, "N": N, "hidden_state_MiB": by[Kind.PSN]["hidden_state_MiB"]}
        for metric in ("peak_MiB", "saved_MiB"):
            m = {k: by[k][metric] for k in by}
            delta = {k: m[k] - m[Kind.NONE] for k in m if k != Kind.NONE}
            row[metric] = m
            row[f"delta_{metric}"] = delta
            row[f"ratio_{metric}"] = {
                k: delta[k] / delta[Kind.PSN] for k in (Kind.IF, Kind.IF_FUSED) if delta[Kind.PSN] > 0
            }
            row[f"per_TN_KiB_{metric}"] = {
                k: (delta[k] - delta[Kind.PSN]) * 1024 / (T * N) for k in (Kind.IF, Kind.IF_FUSED)
            }
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
    return {
        "suite": "memory",
        "environment": env,
        "method": (
            METHOD
            if device.type == "cpu"
            else "torch.cuda.max_memory_allocated during one step minus memory_allocated before it"
        ),
        "config": {
            "quick": bool(args.quick),
            "network": "quick: conv 8-8, 16x16" if args.quick else "conv 32-32-pool-64-64-pool, 32x32x3",
            "kinds": {k.value: v for k, v in KIND_HELP.items()},
        },
        "results": results,
        "rows": summarize(results, configs),
    }


def plot(result: dict[str, Any], png_path: Path) -> list[Path]:
    """Δ per kind and one hidden state's size, a group of bars per (T, N), Δ_IF / Δ_PSN written above."""
    rows = result["rows"]
    series = {
        "Δ IF (autograd per step)": [r["delta_peak_MiB"]["if"] for r in rows],
        "Δ IF (fused BPTT)": [r["delta_peak_MiB"]["if_fused"] for r in rows],
        "Δ PSN": [r["delta_peak_MiB"]["psn"] for r in rows],
        "one hidden state (4 B × neurons × T × N)": [r["hidden_state_MiB"] for r in rows],
    }
    title = f"Peak training memory above no-neuron network ({result['environment']['device_name']})"
    with common.figure(png_path, title, size=(8.5, 4.2)) as (_, axes):
        ax, top = axes[0][0], max((max(v) for v in series.values() if v), default=1.0)
        common.bars(ax, [f"T={r['T']}, N={r['N']}" for r in rows], series)
        for i, r in enumerate(rows):
            ratio = r["ratio_peak_MiB"].get("if", 0.0)
            ax.text(i, top * 1.03, f"ΔIF/ΔPSN = {ratio:.2f}", ha="center", fontsize=9)
        ax.set_ylim(0, top * 1.45)
        ax.set_ylabel("Δ = M - M_NO (MiB)")
        ax.legend(fontsize=8, ncols=2, loc="upper left")
    return [png_path]


def report(result: dict[str, Any], out_dir: Path) -> None:
    """Print the tables, write the JSON and the plot."""
    env = result["environment"]
    json_path, png_path = common.output_paths(out_dir, "bench-memory", env["device"])
    print(f"memory benchmark on {env['device_name']} (torch {env['torch']}), {env['date']}")
    print("method:", result["method"])
    for kind, text in result["config"]["kinds"].items():
        print(f"  {kind:<8} {text}")
    for metric, what in (
        ("peak_MiB", "peak memory of one training step"),
        ("saved_MiB", "bytes saved for backward"),
    ):
        headers = ["T", "N", "M_NO", "M_IF", "M_IF_fused", "M_PSN", "Δ_IF", "Δ_IF_fused", "Δ_PSN"]
        headers += ["Δ_IF/Δ_PSN", "Δ_IF_fused/Δ_PSN", "(Δ_IF-Δ_PSN)/TN KiB", "hidden/TN KiB"]
        rows = []
        for r in result["rows"]:
            m, d, q = r[metric], r[f"delta_{metric}"], r[f"ratio_{metric}"]
            per_tn = r[f"per_TN_KiB_{metric}"]["if"]
            hidden_per_tn = r["hidden_state_MiB"] * 1024 / (r["T"] * r["N"])
            ms = [m[k] for k in ("none", "if", "if_fused", "psn")]
            ds = [d[k] for k in ("if", "if_fused", "psn")]
            rows.append([r["T"], r["N"], *ms, *ds, q.get("if"), q.get("if_fused"), per_tn, hidden_per_tn])
        print(format_table(headers, rows, title=f"\n{what} (MiB; Δ = M - M_NO)"))
    common.write_outputs(json_path, result, lambda: plot(result, png_path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    if args.worker:
        return worker(args.worker)
    result = run(args)
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
