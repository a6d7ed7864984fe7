"""Figures shared by the methods' reports (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from litseg.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def labelled_scatter(points: Mapping[str, tuple[float, float]], path: str | os.PathLike[str], xlabel: str,
                     ylabel: str, title: str) -> None:
    """One labelled marker per entry (e.g. annotation effort vs mIoU per supervision kind)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def line_plot(curves: Mapping[str, Sequence[float]], path: str | os.PathLike[str], xlabel: str, ylabel: str,
              title: str, x: Sequence[float] | None = None, ylim: tuple[float, float] | None = None,
              integer_x: bool = False) -> None:
    """One line per entry (e.g. mIoU vs number of clicks per dataset)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4.5))
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ylim is not None:
        ax.set_ylim(*ylim)
    for name, ys in curves.items():
        xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        ax.plot(xs, list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def image_grid(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
               path: str | os.PathLike[str], row_titles: Sequence[str] | None = None) -> None:
    """A grid of RGB images (rows x columns) with column headers."""
    n_rows, n_cols = len(rows), len(column_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 1.8 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=7)
    _save(fig, path)
