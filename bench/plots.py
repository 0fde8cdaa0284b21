"""Plots for the benchmark suites (matplotlib, headless Agg backend, imported only when a suite plots)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Heatmap:
    """One annotated panel: values[i][j] for row label i (T) and column label j (N); None = not measured."""

    title: str
    values: Sequence[Sequence[float | None]]


def ratio_heatmaps(
    panels: Sequence[Heatmap],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    suptitle: str,
    xlabel: str,
    ylabel: str,
    cbar_label: str,
    path: Path,
    ncols: int = 2,
) -> None:
    """Side-by-side heat maps of ratios on a log scale centred on 1, every cell annotated (like Fig. 3)."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    plt = pyplot()
    finite = [v for p in panels for row in p.values for v in row if v is not None and v > 0]
    span = max(1.0, max(abs(math.log2(v)) for v in finite)) if finite else 1.0
    norm = TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols + 0.8, 3.9 * nrows + 0.7), squeeze=False, constrained_layout=True
    )
    image = None
    for ax, panel in zip(axes.flat, panels, strict=False):
        data = np.array([[np.nan if v is None else math.log2(v) for v in row] for row in panel.values])
        image = ax.imshow(data, cmap="RdYlGn", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(len(col_labels)), col_labels)
        ax.set_yticks(range(len(row_labels)), row_labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel.title, fontsize=11)
        for i, row in enumerate(panel.values):
            for j, v in enumerate(row):
                text = "n/a" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")
                strong = v is not None and abs(math.log2(v)) > 0.6 * span
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=9, color="white" if strong else "black"
                )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if image is not None:
        ticks = [t for t in range(-math.ceil(span), math.ceil(span) + 1) if abs(t) <= span]
        bar = fig.colorbar(image, ax=axes, ticks=ticks, shrink=0.9)
        bar.ax.set_yticklabels([f"{2.0**t:g}" for t in ticks])
        bar.set_label(cbar_label)
    fig.suptitle(suptitle, fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bandwidth_bars(
    T_values: Sequence[int],
    series: dict[str, Sequence[float | None]],
    reference: float,
    *,
    title: str,
    path: Path,
) -> None:
    """Grouped bars of effective bandwidth (GB/s) per T, with the DRAM copy bandwidth as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(T_values))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=name)
    ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"DRAM copy {reference:.0f} GB/s")
    ax.set_xticks(range(len(T_values)), [str(t) for t in T_values])
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("effective GB/s  (read X + write S) / time")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncols=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    ratios: Sequence[float],
    *,
    title: str,
    ylabel: str,
    path: Path,
) -> None:
    """Grouped bars (one group per configuration) annotated with Δ_IF / Δ_PSN above each group."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(series))
    top = max((max(v) for v in series.values() if v), default=1.0)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    for i, r in enumerate(ratios):
        ax.text(i, top * 1.03, f"ΔIF/ΔPSN = {r:.2f}", ha="center", fontsize=9)
    ax.set_ylim(0, top * 1.45)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
