"""Shared pieces of the suites: the one timing helper, devices, tables, goals, JSON and plots (no torch or
matplotlib import at module level: the serving suite needs neither)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field
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


def arguments(
    prog: str, doc: str, out: str = "folder for the JSON and PNGs (docs/)"
) -> argparse.ArgumentParser:
    """The options every suite takes: --quick, --quiet, --out (``psn bench all`` passes them on)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=out)
    return p


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present")


# ---------------------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> Any:
    """The torch.device for ``cpu``, ``cuda`` or ``auto`` (cuda when present)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind = Device(name)
    if kind is Device.CUDA and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(kind.value)


def synchronize(device: Any) -> None:
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(device: Any = None, **extra: Any) -> dict[str, Any]:
    """What a reader needs to judge the numbers: versions, device, threads, load."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": load_average(),
    }
    if device is not None:
        import torch

        threads = torch.get_num_threads()
        env |= {
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"{cpu_model()}, {threads} thread{'s' if threads != 1 else ''}",
            "torch": torch.__version__,
            "torch_threads": threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        }
        if device.type == "cuda":
            env |= {"cuda": torch.version.cuda, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device is None or device.type == "cpu":
        env["note"] = SHARED_MACHINE_NOTE
    return env | extra


def calm_openmp() -> None:
    """OpenMP threads that sleep when idle (spinning ones wait a whole slice for a preempted peer on a shared
    machine); before ``import torch``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)


def mallopt(settings: Mapping[int, int]) -> bool:
    """Set glibc malloc parameters (``{M_*: value}``, each a C int); whether every one took effect."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) for param, value in settings.items())  # stops at a failure


# ---------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` blocks of ``inner`` calls each; ``samples`` in round order."""

    median_s: float
    min_s: float
    q1_s: float
    q3_s: float
    repeats: int
    inner: int
    samples: tuple[float, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if k != "samples"}


def _block(fn: Callable[[], object], inner: int, device: Any) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    device: Any = None,
    *,
    budget_s: float = 1.0,
    min_repeats: int = 3,
    max_repeats: int = 25,
    min_block_s: float = 0.005,
) -> dict[str, Timing]:
    """Median time per call of each function (the one timing helper): after a cold call and an estimate, each
    round times one block (calls lasting ``min_block_s``) of every function in a rotating order, so load from
    other processes falls on all alike, until ``budget_s`` is spent; GC off, CUDA synchronized per block."""
    names = list(fns)
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
    repeats = max(min_repeats, min(max_repeats, int(budget_s / max(round_cost, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(_block(fns[name], inner[name], device) / inner[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for n in names:
        per_call = sorted(samples[n])
        q = statistics.quantiles(per_call, n=4) if len(per_call) >= 2 else [per_call[0]] * 3
        out[n] = Timing(
            median_s=statistics.median(per_call),
            min_s=per_call[0],
            q1_s=q[0],
            q3_s=q[2],
            repeats=repeats,
            inner=inner[n],
            samples=tuple(samples[n]),
        )
    return out


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


def table(rows: Iterable[Mapping[str, Any]], columns: str, title: str = "") -> str:
    """A table of dict rows; ``columns``: ``"header=key:format | ..."`` (``header=`` and ``:format`` optional,
    ``d`` rounds to an integer; a missing value prints -)."""
    specs = []
    for column in columns.split("|"):
        head, sep, rest = column.strip().rpartition("=")  # a header may hold "=" ("goal <= 1.2"), a key not
        key, _, fmt = rest.partition(":")
        specs.append((head if sep else key, key, fmt))

    def cell(value: Any, fmt: str) -> Any:
        if value is None or not fmt:
            return value
        return round(value) if fmt == "d" else format(value, fmt)

    return format_table(
        [h for h, _, _ in specs], [[cell(r.get(k), f) for _, k, f in specs] for r in rows], title
    )


def find(rows: Iterable[Mapping[str, Any]], **match: Any) -> Any:
    """The first row whose values match, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def group_by(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    """Rows grouped by their values of ``keys``, in first-seen order."""
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 10_000:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


@dataclass(frozen=True)
class Goal:
    """One goal of a suite (the one goal system): what, its target, what was measured, met or not (None:
    not measured)."""

    goal: str
    target: str
    measured: str
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def goal(
    name: str,
    value: float | None,
    bound: float,
    *,
    at_most: bool = False,
    target: str = "",
    measured: str | None = None,
) -> Goal:
    """Met when value >= bound (``at_most``: <=); not measured when value is None. The target and the
    measured text default to ">= 2x" and "2.31x"."""
    met = None if value is None else (value <= bound if at_most else value >= bound)
    target = target or f"{'<=' if at_most else '>='} {bound:g}x"
    if measured is None:
        measured = "-" if value is None else f"{value:.2f}x"
    return Goal(name, target, measured, met)


def goals_table(goals: Sequence[Goal], title: str = "goals") -> str:
    rows = [[*astuple(g)[:3], "-" if g.met is None else ("met" if g.met else "MISSED")] for g in goals]
    return format_table(["goal", "target", "measured", ""], rows, title)


def output_paths(out_dir: Path, stem: str, device: str) -> tuple[Path, Path]:
    """docs/<stem>.json and .png; CUDA results get a ``-cuda`` suffix so they never overwrite CPU ones."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem += "" if device == "cpu" else f"-{device}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.png"


def clean(value: Any, digits: int = 4) -> Any:
    """JSON-safe: NaN/inf -> None, floats rounded, tuples -> lists, recursively."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v, digits) for v in value]
    return value


def run_module(module: str, args: list[str], marker: str, timeout: float, core: int | None = None) -> list:
    """``python -m module args`` in a fresh process (pinned to ``core``): the JSON of each stdout line that
    starts with ``marker``; BenchError when it fails or prints none."""
    from server.launcher import REPO, server_env  # a server's environment: this checkout on PYTHONPATH

    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    cmd, env = [sys.executable, "-m", module, *args], server_env()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, preexec_fn=pin
    )
    found = [json.loads(ln[len(marker) :]) for ln in done.stdout.splitlines() if ln.startswith(marker)]
    if done.returncode != 0 or not found:
        raise BenchError(f"{module} {' '.join(args)[:200]} failed ({done.returncode}): {done.stderr[-800:]}")
    return found


def write_json(path: Path, payload: Mapping[str, Any], digits: int | None = None) -> None:
    """payload as indented JSON (rounded to ``digits`` when given; NaN/inf refused unless rounded away)."""
    data = payload if digits is None else clean(dict(payload), digits)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def write_outputs(
    json_path: Path,
    result: Mapping[str, Any],
    plots: Callable[[], list[Path]] = list,
    digits: int | None = None,
) -> list[Path]:
    """Every suite's last act: the JSON, then the plots (``plots()`` draws them and returns their paths; none
    where matplotlib is missing, said on stderr), then one line naming the files written."""
    write_json(json_path, result, digits)
    written = [json_path]
    try:
        written += plots()
    except ModuleNotFoundError as exc:  # matplotlib is a bench/train extra; the serving suite runs without
        if exc.name != "matplotlib":
            raise
        print(f"no plots ({exc})", file=sys.stderr)
    print("\nwrote " + ", ".join(map(str, written)), flush=True)
    return written


# ---------------------------------------------------------------------------------------------- plots


@contextlib.contextmanager
def figure(path: Path, title: str, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.5, 4.5)):
    """``with figure(path, title, ncols) as (fig, axes):`` axes[row][col], each panel ``size`` inches; the
    figure is titled, written to path and closed on the way out (matplotlib, headless Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), constrained_layout=True, squeeze=False
    )
    try:
        yield fig, axes
        fig.suptitle(title, fontsize=11)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def bars(ax, labels: Sequence[str], series: dict[str, Sequence[float | None]], colors=None) -> None:
    """Grouped bars: one group per label, one bar per series (None draws nothing)."""
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        color = None if colors is None else colors[k]
        ax.bar(xs, [v or 0.0 for v in values], width, label=name, color=color)
    ax.set_xticks(range(len(labels)), labels, fontsize=7 if len(labels) > 4 else None)
