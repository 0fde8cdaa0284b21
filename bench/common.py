"""Shared pieces of the benchmark suites: timing, devices, tables, JSON output, environment notes.

Nothing here imports torch at module level, so suites without torch (serving) can use the table, JSON and
progress helpers; the device helpers import torch when called.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_OUT = Path("docs")
SHARED_MACHINE_NOTE = (
    "CPU timings come from a shared 2-core machine that other people use at the same time: expect noise; "
    "candidates are timed in interleaved rounds so that load hits them alike."
)

_T = TypeVar("_T")


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class BenchError(RuntimeError):
    """A benchmark cannot run as asked (a missing device or package, a bad option)."""


# ---------------------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> Any:
    """The torch.device for ``cpu`` or ``cuda``; a clear error when CUDA is asked for but absent."""
    import torch

    kind = Device(name)
    if kind is Device.CUDA and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(kind.value)


def synchronize(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def device_label(device: Any) -> str:
    """The device name the results are labelled with."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Any) -> dict[str, Any]:
    """What a reader needs to judge the numbers: versions, device, threads, load."""
    import torch

    env: dict[str, Any] = {
        "device": device.type,
        "device_name": device_label(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": load_average(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    if device.type == "cpu":
        env["note"] = SHARED_MACHINE_NOTE
    else:
        env["cuda"] = torch.version.cuda
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


def calm_openmp() -> None:
    """OpenMP threads that sleep instead of spinning when idle (unless the user chose otherwise).

    On a machine shared with other busy processes, spinning threads of a 2-thread parallel region wait a
    whole scheduler slice for a preempted peer: a 40 us matrix product then takes 16 ms at the 90th
    percentile. Takes effect only if set before torch starts its thread pool (before ``import torch``).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def reuse_freed_memory() -> bool:
    """Keep freed heap memory in the process (glibc), as a caching allocator does on CUDA.

    Without it every tensor above glibc's mmap threshold is a fresh mapping whose pages fault in on first
    touch, which on this VM costs more than the arithmetic of a large elementwise op. Returns whether it
    took effect (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    int_max = (1 << 31) - 1  # mallopt takes a C int; the heap then keeps at most what the peak needed
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, int_max))


# ---------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` blocks of ``inner`` calls each."""

    median_s: float
    min_s: float
    q1_s: float
    q3_s: float
    repeats: int
    inner: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _timing(samples: Sequence[float], inner: int) -> Timing:
    per_call = sorted(s / inner for s in samples)
    q = statistics.quantiles(per_call, n=4) if len(per_call) >= 2 else [per_call[0]] * 3
    return Timing(statistics.median(per_call), per_call[0], q[0], q[2], len(per_call), inner)


def _block(fn: Callable[[], object], inner: int, device: Any) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    device: Any,
    *,
    budget_s: float = 1.0,
    min_repeats: int = 3,
    max_repeats: int = 25,
    min_block_s: float = 0.005,
) -> dict[str, Timing]:
    """Median time per call of each function, timed in interleaved rounds.

    Each function runs once cold and once or twice more to estimate its cost; a block repeats a call until it
    lasts ``min_block_s`` (tiny calls); each round times one block of every function, in an order that
    rotates, so load from other processes falls on all candidates alike. Rounds stop when ``budget_s`` is
    spent (at least ``min_repeats``). On CUDA a block is the wall time between two device synchronizations.
    """
    names = list(fns)
    if not names:
        return {}
    inner: dict[str, int] = {}
    round_cost = 0.0
    for name in names:
        est = _block(fns[name], 1, device)  # cold call: allocation, compilation, caches
        if est < 1.0:  # warm calls for all but the slowest functions
            est = _block(fns[name], 1, device)
        if est < 0.2:
            est = _block(fns[name], 1, device)
        est = max(est, 1e-7)
        inner[name] = max(1, min(10_000, math.ceil(min_block_s / est)))
        round_cost += est * inner[name]
    repeats = max(min_repeats, min(max_repeats, int(budget_s / round_cost)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                samples[name].append(_block(fns[name], inner[name], device))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: _timing(samples[n], inner[n]) for n in names}


# ---------------------------------------------------------------------------------------------- output


def progress(iterable: Iterable[_T], total: int | None = None, desc: str = "", quiet: bool = False):
    """tqdm progress on stderr (falls back to the plain iterable when tqdm is missing or quiet)."""
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [title] if title else []
    out += [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 10_000:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f}ms"
    return f"{seconds:.2f}s"


def output_paths(out_dir: Path, stem: str, device: Any) -> tuple[Path, Path]:
    """docs/<stem>.json and .png; CUDA results get a ``-cuda`` suffix so they never overwrite CPU ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    return out_dir / f"{stem}{suffix}.json", out_dir / f"{stem}{suffix}.png"


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=False, allow_nan=False) + "\n")
