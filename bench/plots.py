"""The plot scaffolding of every suite (matplotlib, headless Agg, imported only when a suite plots)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(path: Path, title: str, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.5, 4.5)):
    """``with figure(path, title, ncols) as (fig, axes):`` axes[row][col], each panel ``size`` inches; the
    figure is titled, written to path and closed on the way out."""
    plt = pyplot()
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
