"""matplotlib (Agg) helpers: one small, readable PNG per experiment.

matplotlib is the optional extra ``ioband[plot]`` (the daemon does not need it): it is imported
on the first plot, and its absence is a clear ``PlotsUnavailable`` naming the extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PLOT_EXTRA = "plots need matplotlib, the optional extra: pip install 'ioband[plot]'"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


@functools.cache
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend with the suite's style, imported on first use."""
    try:
        import matplotlib
    except ImportError as err:
        raise PlotsUnavailable(PLOT_EXTRA) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


COLORS = {"ioband": "#1f77b4", "sfq": "#2ca02c", "none": "#7f7f7f", "published": "#d62728"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
DPI = 80

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.autolayout": False,
}


def draw(path: Path, fn: Callable[[Any], None], *, ncols: int = 2, width: float = 11.0) -> Path:
    """Create a figure with ``ncols`` axes, let ``fn(axes)`` draw, save it as a small PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(width, 4.0), squeeze=False)
    try:
        fn(list(axes[0]) if ncols > 1 else axes[0][0])
        fig.tight_layout()
        fig.savefig(path, dpi=DPI, metadata={"Software": None}, pil_kwargs={"optimize": True})
    finally:
        plt.close(fig)
    return path


def grouped_bars(
    ax: Any,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    colors: dict[str, str] | None = None,
    targets: Sequence[float] | None = None,
    target_label: str = "weight share",
) -> None:
    """Bars per category, one per series, with optional target ticks (black lines)."""
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
        color = (colors or {}).get(label, PALETTE[i % len(PALETTE)])
        ax.bar(xs, values, width * 0.95, label=label, color=color)
    if targets is not None:
        for c, t in enumerate(targets):
            ax.hlines(t, c - 0.45, c + 0.45, colors="black", linewidth=1.6, zorder=5)
        ax.plot([], [], color="black", linewidth=1.6, label=target_label)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories)
