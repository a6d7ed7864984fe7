"""Figures shared by the methods' reports (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox, ScaledTranslation  # noqa: E402

from litseg.io import atomic_path  # noqa: E402

DPI = 120  # figures are laid out and saved at this resolution, so measured label boxes are the saved ones
MARKER_SIZE = 40  # scatter marker area in points^2
LABEL_FONTSIZE = 8

# Directions tried around a marker, in order: the old fixed placement (up-right) first.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))
_ALIGN = {-1: ("right", "top"), 0: ("center", "center"), 1: ("left", "bottom")}


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _overlaps(a: Bbox, b: Bbox) -> bool:
    """Whether two display boxes share interior (touching edges do not count)."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _segment_hits(segment: np.ndarray, box: Bbox) -> bool:
    return bool(MplPath(segment).intersects_bbox(box, filled=True))


def _distance(box: Bbox, x: float, y: float) -> float:
    """Pixel distance from (x, y) to the nearest point of ``box``."""
    return math.hypot(x - min(max(x, box.x0), box.x1), y - min(max(y, box.y0), box.y1))


def _fits(box: Bbox, axes_box: Bbox | None) -> bool:
    return axes_box is None or (axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1
                                and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1)


def place_labels(ax: plt.Axes, xy: Sequence[tuple[float, float]], names: Sequence[str],
                 marker_size: float = MARKER_SIZE, fontsize: float = LABEL_FONTSIZE, pad_px: float = 2.0,
                 step_pt: float = 6.0) -> list[Text]:
    """Label the markers at data coordinates ``xy`` with ``names`` so that no two labels and no
    label and marker overlap; returns the label ``Text`` artists (same order as ``names``).

    Deterministic greedy placement in display (pixel) coordinates, measured with the figure's
    renderer: each label in turn tries 8 sides of its marker (up-right first) at growing distances
    and takes the first spot whose box, grown by ``pad_px``, overlaps no marker, no label placed
    so far and no leader line, and lies inside the axes. A label right next to its marker must be
    nearer to it than to any other marker; one pushed further away gets a thin leader line, which
    crosses no placed label either where possible (a marker ringed by labels leaves no such line).
    If the axes hold no free spot the search goes on outside them without a distance limit; far
    enough out every spot is free, so it always ends. Set the axes limits before calling: the
    placement is in pixels.
    """
    if len(xy) != len(names):
        raise ValueError(f"{len(xy)} positions for {len(names)} labels")
    fig = ax.get_figure(root=True)
    renderer = fig.canvas.get_renderer()
    xy = [(float(x), float(y)) for x, y in xy]
    centres = ax.transData.transform(np.array(xy, dtype=np.float64).reshape(-1, 2))
    px_per_pt = fig.dpi / 72.0
    radius_pt = math.sqrt(marker_size) / 2
    radius_px = radius_pt * px_per_pt + pad_px
    markers = [Bbox.from_extents(cx - radius_px, cy - radius_px, cx + radius_px, cy + radius_px)
               for cx, cy in centres]
    placed_boxes: list[Bbox] = []
    leaders: list[np.ndarray] = []
    axes_box = ax.get_window_extent(renderer)
    inside_limit_pt = math.hypot(axes_box.width, axes_box.height) / px_per_pt
    # Ring 0: the padded label just clears the padded marker box (about the old fixed 5-4 pt offset).
    first_gap_pt = (radius_px + pad_px + 1.0) / px_per_pt

    def free(box: Bbox, leader: np.ndarray | None, strict: bool) -> bool:
        """No marker, label or leader line in ``box``; if ``strict``, no label on ``leader`` either."""
        if any(_overlaps(box, other) for other in markers + placed_boxes):
            return False
        if any(_segment_hits(segment, box) for segment in leaders):
            return False
        return not strict or leader is None or not any(_segment_hits(leader, other) for other in placed_boxes)

    def own_nearest(box: Bbox, px: float, py: float) -> bool:
        """A label next to its marker (no leader) is read as the nearest marker's: it must be its own."""
        own = _distance(box, px, py)
        return all(_distance(box, cx, cy) > own for cx, cy in centres if (cx, cy) != (px, py))

    def candidates(px: float, py: float, width: float, height: float):
        """(bounds, strict, ring, dx, dy, offset in points, predicted padded box) around the marker
        at pixel (px, py), nearest first. Passes: inside the axes with leader lines that cross no
        label; inside the axes with any leader (a marker ringed by labels has no other way out);
        anywhere, without a distance limit."""
        for bounds, strict in ((axes_box, True), (axes_box, False), (None, False)):
            ring = 0
            while bounds is None or first_gap_pt + ring * step_pt <= inside_limit_pt:
                off = first_gap_pt + ring * step_pt  # per axis, in points
                for dx, dy in _DIRECTIONS:
                    ax_, ay_ = px + dx * off * px_per_pt, py + dy * off * px_per_pt
                    x0 = ax_ - width * (1 - dx) / 2  # left / center / right aligned at the anchor
                    y0 = ay_ - height * (1 - dy) / 2  # bottom / center / top aligned
                    box = Bbox.from_bounds(x0, y0, width, height).padded(pad_px)
                    if _fits(box, bounds):
                        yield bounds, strict, ring, dx, dy, off, box
                ring += 1

    labels: list[Text] = []
    for (x, y), (px, py), name in zip(xy, centres, names, strict=True):
        text = ax.text(x, y, name, fontsize=fontsize, zorder=4)
        size = text.get_window_extent(renderer)
        found = None
        for bounds, strict, ring, dx, dy, off, predicted in candidates(px, py, size.width, size.height):
            if not free(predicted, None, strict):
                continue
            # Set the spot and measure the real box: the prediction only saves renderer calls.
            text.set_horizontalalignment(_ALIGN[dx][0])
            text.set_verticalalignment(_ALIGN[dy][1])
            text.set_transform(ax.transData + ScaledTranslation(dx * off / 72, dy * off / 72, fig.dpi_scale_trans))
            box = text.get_window_extent(renderer).padded(pad_px)
            leader = None
            if ring > 0:  # away from the marker: a leader from the marker's edge to the label
                ex, ey = float(np.clip(px, box.x0, box.x1)), float(np.clip(py, box.y0, box.y1))
                norm = math.hypot(ex - px, ey - py) or 1.0
                sx, sy = px + (ex - px) * radius_px / norm, py + (ey - py) * radius_px / norm
                leader = np.array([(sx, sy), (ex, ey)])
            if strict and leader is None and not own_nearest(box, px, py):
                continue
            if _fits(box, bounds) and free(box, leader, strict):
                found = (box, leader)
                break
        box, leader = found  # the candidates never run out: far enough out every spot is free
        placed_boxes.append(box)
        if leader is not None:
            leaders.append(leader)
            # drawn in inches relative to the marker, so it moves with it (e.g. bbox_inches="tight")
            inches = (leader - (px, py)) / fig.dpi
            ax.add_line(Line2D(inches[:, 0], inches[:, 1], color="0.5", linewidth=0.6, zorder=3,
                               transform=fig.dpi_scale_trans + ScaledTranslation(x, y, ax.transData)))
        labels.append(text)
    return labels


def labelled_scatter_figure(points: Mapping[str, tuple[float, float]], xlabel: str, ylabel: str,
                            title: str) -> tuple[plt.Figure, plt.Axes, list[Text]]:
    """The figure of :func:`labelled_scatter` and its label artists (none overlap; see :func:`place_labels`)."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=DPI)
    for x, y in points.values():
        ax.scatter([x], [y], s=MARKER_SIZE, zorder=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # Room for the labels inside the axes, then freeze the limits: placement is in pixels.
    ax.margins(x=0.12, y=0.12)
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    fig.canvas.draw()
    labels = place_labels(ax, list(points.values()), list(points))
    return fig, ax, labels


def labelled_scatter(points: Mapping[str, tuple[float, float]], path: str | os.PathLike[str], xlabel: str,
                     ylabel: str, title: str) -> None:
    """One labelled marker per entry (e.g. annotation effort vs mIoU per supervision kind); the
    labels are placed so that none overlaps another label or a marker."""
    fig, _, _ = labelled_scatter_figure(points, xlabel, ylabel, title)
    _save(fig, path)


def integer_ticks(first: int, last: int, max_ticks: int = 8) -> list[int]:
    """Integer ticks from ``first`` to ``last`` that always include both ends, with round steps
    in between: 1..20 -> [1, 5, 10, 15, 20]; 1..10 -> [1, 2, 4, 6, 8, 10]; 1..3 -> [1, 2, 3].

    An inner multiple closer than half a step to an end is dropped (1..21 -> [1, 5, 10, 15, 21]).
    """
    first, last = int(first), int(last)
    if last < first:
        raise ValueError(f"empty tick range {first}..{last}")
    if last - first + 1 <= max_ticks:
        return list(range(first, last + 1))
    step = 1
    for magnitude in (10 ** k for k in range(12)):
        candidates = [m * magnitude for m in (1, 2, 5)]
        fitting = [s for s in candidates if (last - first) / s + 2 <= max_ticks]
        if fitting:
            step = fitting[0]
            break
    inner = range((first // step + 1) * step, last, step)
    return [first] + [t for t in inner if t - first >= step / 2 and last - t >= step / 2] + [last]


def line_plot_figure(curves: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, title: str,
                     x: Sequence[float] | None = None, ylim: tuple[float, float] | None = None,
                     integer_x: bool = False) -> tuple[plt.Figure, plt.Axes]:
    """The figure of :func:`line_plot`."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=DPI)
    if ylim is not None:
        ax.set_ylim(*ylim)
    all_x: list[float] = []
    for name, ys in curves.items():
        xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        all_x += xs[:len(ys)]
        ax.plot(xs, list(ys), marker="o", markersize=3, label=name)
    if integer_x and all_x:
        ax.set_xticks(integer_ticks(math.ceil(min(all_x)), math.floor(max(all_x))))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig, ax


def line_plot(curves: Mapping[str, Sequence[float]], path: str | os.PathLike[str], xlabel: str, ylabel: str,
              title: str, x: Sequence[float] | None = None, ylim: tuple[float, float] | None = None,
              integer_x: bool = False) -> None:
    """One line per entry (e.g. mIoU vs number of clicks per dataset). ``integer_x``: integer x
    ticks that include the first and the last x (clicks 1 and 20 for a 20-click curve)."""
    fig, _ = line_plot_figure(curves, xlabel, ylabel, title, x=x, ylim=ylim, integer_x=integer_x)
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
