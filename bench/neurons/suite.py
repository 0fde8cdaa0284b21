"""``psn bench neurons``: simulation speed of LIF vs the PSN family, as in the paper's Fig. 3: for T in 2..64
and N in 2^8..2^20, the fastest LIF form (``bench.neurons.kernels``) against PSN, masked and sliding PSN in
inference and training, an ONNX Runtime PSN layer against torch's, and the PSN forward's bandwidth at the
largest N against the machine's copy bandwidth measured in the same run."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch

from bench import common
from bench.common import BenchError, Timing, time_interleaved
from bench.neurons import kernels
from bench.neurons.report import BANDWIDTH_FORMS, report
from psn.neurons import LIF, PSN, MaskedPSN, SlidingPSN

T_FULL = (2, 4, 8, 16, 32, 64)
LOG2N_FULL = (8, 12, 16, 20)
T_QUICK = (2, 8)
LOG2N_QUICK = (8, 10)
PARALLEL = ("psn", "masked_psn", "sliding_psn")
# the slow reference LIF forms (eager module, autograd) are timed up to this T*N
REFERENCE_MAX_NUMEL = 1 << 24


class Mode(StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"


def order_k(T: int) -> int:
    """The order k used for masked and sliding PSN (their speed does not depend on it: one T×T product)."""
    return min(T, 4)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = common.arguments("psn bench neurons", __doc__)
    common.add_device(p)
    p.add_argument("--T", type=int, nargs="+", help="time steps (default 2 4 8 16 32 64)")
    p.add_argument("--log2n", type=int, nargs="+", help="log2 of the neuron counts (default 8 12 16 20)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile LIF forms")
    p.add_argument("--budget", type=float, help="seconds of timing per group of candidates (default 0.8)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch (and ONNX Runtime) CPU threads, default 1: on a busy shared machine a 2-thread parallel "
        "region waits for a preempted peer and small products time erratically; use 2+ on an idle machine",
    )
    return p.parse_args(argv)


class Suite:
    """State shared by all cells: modules per T, compiled functions, ONNX sessions, compile times."""

    def __init__(self, device: torch.device, use_compile: bool, notes: list[str]) -> None:
        self.device = device
        self.notes = notes
        self.compile_s: dict[str, float] = {}
        self.compile_failed: set[str] = set()
        self.modules: dict[int, dict[str, torch.nn.Module]] = {}
        self.ort: dict[int, Any] = {}
        self.tau = torch.tensor(2.0, device=device)
        self.compiled_loop: Callable[..., torch.Tensor] | None = None
        self.use_compile = use_compile
        if use_compile:
            if hasattr(torch._dynamo.config, "recompile_limit"):
                torch._dynamo.config.recompile_limit = 64
            self.compiled_loop = torch.compile(kernels.lif_forward_loop, dynamic=True)

    def neurons(self, T: int) -> dict[str, torch.nn.Module]:
        if T not in self.modules:
            masked = MaskedPSN(T, order_k(T))
            masked.set_lambda(1.0)
            mods = {"psn": PSN(T), "masked_psn": masked, "sliding_psn": SlidingPSN(order_k(T)), "lif": LIF()}
            self.modules[T] = {k: m.to(self.device) for k, m in mods.items()}
        return self.modules[T]

    def ort_layer(self, T: int) -> Any:
        if T not in self.ort:
            psn = self.neurons(T)["psn"]
            try:
                self.ort[T] = kernels.OrtPSN(psn.weight, psn.bias, self.device, torch.get_num_threads())
            except Exception as exc:  # a missing package or provider: report it, time the rest
                self.notes.append(f"ONNX Runtime PSN layer unavailable at T={T}: {exc}")
                self.ort[T] = None
        return self.ort[T]

    def prime(self, key: str, fn: Callable[[], object]) -> bool:
        """Run a compiled candidate once, recording its compile time; False (and a note) if it fails."""
        if key in self.compile_s:
            return True
        if key in self.compile_failed:
            return False
        t0 = time.perf_counter()
        try:
            fn()
            common.synchronize(self.device)
        except Exception as exc:
            self.notes.append(f"torch.compile failed for {key}: {type(exc).__name__}: {exc}"[:300])
            self.compile_failed.add(key)
            return False
        self.compile_s[key] = time.perf_counter() - t0
        return True

    def inference(self, x: torch.Tensor, bandwidth: bool, reference: bool) -> dict[str, Callable[[], object]]:
        T = x.shape[0]
        mods = self.neurons(T)
        fns: dict[str, Callable[[], object]] = {
            "lif:script": lambda: kernels.lif_forward_script(x, self.tau, 1.0),
        }
        if reference:
            fns["lif:eager"] = lambda: mods["lif"](x)
        loop = self.compiled_loop
        # primed under no_grad as it is timed (grad mode is part of what a compiled graph is guarded on)
        if loop is not None and self.prime(f"lif:compile T={T}", _no_grad(lambda: loop(x, 2.0, 1.0))):
            fns["lif:compile"] = lambda: loop(x, 2.0, 1.0)
        for name in PARALLEL:
            fns[name] = (lambda m: lambda: m(x))(mods[name])
        layer = self.ort_layer(T)
        if layer is not None:
            fns["psn:ort"] = layer.bind(x, torch.empty_like(x))
        if bandwidth:
            w, b = mods["psn"].weight, mods["psn"].bias
            copy_out = torch.empty_like(x)
            fns["copy"] = lambda: copy_out.copy_(x)  # the same bytes, timed under the same load
            fns["psn:inplace"] = lambda: kernels.psn_inplace(w, b, x)
            if self.device.type == "cpu":
                fns["psn:blocked"] = lambda: kernels.psn_blocked(w, b, x)
        return {name: _no_grad(fn) for name, fn in fns.items()}

    def training(self, x: torch.Tensor, reference: bool) -> dict[str, Callable[[], object]]:
        T = x.shape[0]
        mods = self.neurons(T)
        xg = x.detach().requires_grad_()
        grad = torch.randn_like(x)

        def step(forward: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor]):
            return lambda: torch.autograd.grad(forward(xg), [xg, *params], grad)

        fns = {"lif:bptt": step(lambda v: kernels.lif_bptt(v, False), [])}
        if reference:
            fns["lif:autograd"] = step(mods["lif"], [])
        bptt_c = step(lambda v: kernels.lif_bptt(v, True), [])
        if self.use_compile and self.prime("lif:bptt_compile", bptt_c):  # False from its first failure on
            fns["lif:bptt_compile"] = bptt_c
        for name in PARALLEL:
            fns[name] = step(mods[name], list(mods[name].parameters()))
        return fns


def _no_grad(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn()

    return run


def cell_record(mode: Mode, T: int, N: int, times: dict[str, Timing]) -> dict[str, Any]:
    lif = {k: v for k, v in times.items() if k.startswith("lif:")}
    best = min(lif, key=lambda k: lif[k].median_s)
    t_lif = lif[best].median_s
    rec: dict[str, Any] = {
        "mode": mode.value,
        "T": T,
        "N": N,
        "times": {k: v.to_json() for k, v in times.items()},
        "lif_form": best,
        "t_lif_s": t_lif,
        "ratio": {name: t_lif / times[name].median_s for name in PARALLEL},
    }
    if "psn:ort" in times:
        rec["torch_over_ort"] = times["psn"].median_s / times["psn:ort"].median_s
    return rec


def reuse_freed_memory() -> bool:
    """Keep freed heap memory in the process (glibc), as a caching allocator does on CUDA: else each large
    tensor is a fresh mapping whose page faults can cost more than the op. Whether it took effect."""
    int_max = (1 << 31) - 1  # the heap then keeps at most what the peak needed
    return common.mallopt({common.M_MMAP_MAX: 0, common.M_TRIM_THRESHOLD: int_max})


def copy_bandwidth(device: torch.device, numel: int, budget: float) -> dict[str, float]:
    """GB/s of a copy between two buffers of ``numel`` floats (read + write), torch copy_ and numpy."""
    import numpy as np

    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    fns: dict[str, Callable[[], object]] = {"torch_copy": lambda: dst.copy_(src)}
    if device.type == "cpu":
        a, b = src.numpy(), dst.numpy()
        fns["numpy_copy"] = lambda: np.copyto(b, a)
    times = time_interleaved(fns, device, budget_s=budget)
    return {k: 2 * 4 * numel / t.median_s / 1e9 for k, t in times.items()}


def machine_rates(device: torch.device, numel: int, gemm_n: int, budget: float) -> dict[str, Any]:
    """Copy bandwidth over ``numel`` floats and the FP32 GEMM rate of a gemm_n^3 product."""
    copy = copy_bandwidth(device, numel, budget)
    m1, m2 = torch.rand(gemm_n, gemm_n, device=device), torch.rand(gemm_n, gemm_n, device=device)
    gemm = time_interleaved({"mm": lambda: torch.mm(m1, m2)}, device, budget_s=budget)["mm"]
    return {
        "copy_bytes": 4 * numel,
        "copy_GBps": copy,
        "gemm_size": gemm_n,
        "gemm_GFLOPs": 2 * gemm_n**3 / gemm.median_s / 1e9,
    }


def bandwidth_row(T: int, N: int, times: dict[str, Timing]) -> dict[str, Any]:
    nbytes = 2 * 4 * T * N  # read X, write S (W and B are negligible)
    copy_gbps = nbytes / times["copy"].median_s / 1e9
    forms = {
        name: {
            "time_s": times[name].median_s,
            "GBps": nbytes / times[name].median_s / 1e9,
            "percent_of_copy": 100.0 * nbytes / times[name].median_s / 1e9 / copy_gbps,
        }
        for name in BANDWIDTH_FORMS
        if name in times
    }
    return {"T": T, "N": N, "bytes": nbytes, "flops": 2 * T * T * N, "copy_GBps": copy_gbps, "forms": forms}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.resolve_device(args.device)
    if args.threads < 1:
        raise BenchError("--threads must be >= 1")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    malloc_reuse = device.type == "cpu" and reuse_freed_memory()
    Ts = tuple(args.T or (T_QUICK if args.quick else T_FULL))
    Ns = tuple(1 << e for e in (args.log2n or (LOG2N_QUICK if args.quick else LOG2N_FULL)))
    budget = args.budget if args.budget is not None else (0.03 if args.quick else 0.8)
    if min(Ts) < 1 or min(Ns) < 1:
        raise BenchError("T and N must be positive")
    env = common.environment(device)
    notes: list[str] = []
    suite = Suite(device, use_compile=not (args.quick or args.no_compile), notes=notes)
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    # DRAM copy needs buffers well above the last-level cache (32 MiB here): 256 MiB unless --quick
    copy_numel = max(max(Ts) * max(Ns), 1 << (20 if args.quick else 26))
    gemm_n = 256 if args.quick else (2048 if device.type == "cpu" else 8192)
    rates_before = machine_rates(device, copy_numel, gemm_n, budget)
    cells: list[dict[str, Any]] = []
    bandwidth: list[dict[str, Any]] = []
    jobs = [(T, N) for T in Ts for N in Ns]
    no_reference: list[str] = []
    for T, N in common.progress(jobs, total=len(jobs), desc="neurons (T, N)", quiet=args.quiet):
        x = torch.rand(T, N, device=device, generator=gen) * 2.0  # [T, N], LIF fires at times
        is_bw = max(Ns) == N
        reference = REFERENCE_MAX_NUMEL >= T * N
        if not reference:
            no_reference.append(f"T={T} N={N}")
        times = time_interleaved(suite.inference(x, is_bw, reference), device, budget_s=budget)
        cells.append(cell_record(Mode.INFERENCE, T, N, times))
        if is_bw:
            bandwidth.append(bandwidth_row(T, N, times))
        times = time_interleaved(suite.training(x, reference), device, budget_s=budget)
        cells.append(cell_record(Mode.TRAINING, T, N, times))
        del x
    if no_reference:
        notes.append(f"reference LIF forms (eager, autograd) not timed above T*N = 2^24: {no_reference}")
    rates_after = machine_rates(device, copy_numel, gemm_n, budget)
    env["loadavg_end"] = common.load_average()
    copy_ref = max(max(rates_before["copy_GBps"].values()), max(rates_after["copy_GBps"].values()))
    gemm_ref = max(rates_before["gemm_GFLOPs"], rates_after["gemm_GFLOPs"])
    for row in bandwidth:
        t_mem, t_flop = row["bytes"] / (row["copy_GBps"] * 1e9), row["flops"] / (gemm_ref * 1e9)
        row["bound"], t_roof = "memory" if t_mem >= t_flop else "compute", max(t_mem, t_flop)
        for form in row["forms"].values():
            form["percent_of_dram_copy"] = 100.0 * form["GBps"] / copy_ref
            form["roofline_fraction"] = t_roof / form["time_s"]
    return {
        "suite": "neurons",
        "environment": env,
        "config": {
            "T": list(Ts),
            "N": list(Ns),
            "quick": bool(args.quick),
            "statistic": "median of interleaved repeats",
            "lif": "tau=2, v_threshold=1, hard reset, decay_input (psn.neurons.LIF); surrogate ATan alpha=2",
            "order_k": "masked and sliding PSN use k = min(T, 4); masked PSN at lambda = 1",
            "malloc_reuse": malloc_reuse,
            "torch_compile": suite.use_compile,
            "compile_s": suite.compile_s,
            "reference_max_numel": REFERENCE_MAX_NUMEL,
            "budget_s": budget,
        },
        "cells": cells,
        "bandwidth": {
            "N": max(Ns),
            "rates_before": rates_before,
            "rates_after": rates_after,
            "copy_reference_GBps": copy_ref,
            "gemm_reference_GFLOPs": gemm_ref,
            "bytes_counted": "read X + write S, 2*4*T*N (W, B negligible)",
            "percent_of_copy": "of a copy_ of the same [T, N] tensor timed in the same interleaved rounds",
            "percent_of_dram_copy": "of copy_reference_GBps: 256 MiB buffers, best of before/after the grid",
            "roofline": "max(bytes / same-size copy rate, 2 T^2 N flops / GEMM rate) / time",
            "rows": bandwidth,
        },
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    result = run(args)
    report(result, args.out)
    return 0
