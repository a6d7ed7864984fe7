"""How well a clickability map predicts real clicks: the RClicks Table 3 metrics (note 3.4).

For one full_stem with N real clicks and a predicted map P (image resolution):

* **KS** (higher is better): draw N points from P / sum(P), 100 times; the fraction of draws
  whose 2-D two-sample Kolmogorov-Smirnov test against the real clicks has p > 0.05.
  :func:`ks_2d` gives the statistic and Peacock / Press et al.'s analytic p-value
  approximation. Two statistics (``ks_variant``):

  - ``"rclicks"`` (default, so the numbers compare with RClicks' Table 3): the statistic of
    ``ndtest.ks2d2s`` that RClicks calls, :func:`ks2d2s_statistic`. Around each origin point
    its own sample is counted without the origin, which may then be re-assigned to whichever
    quadrant makes the difference largest. A sample against itself gives 1/n, not 0.
  - ``"textbook"``: Fasano & Franceschini's statistic as in Numerical Recipes, with the origin
    counted in its own (lower-left) quadrant, :func:`fasano_franceschini_statistic`. A sample
    against itself gives 0.

  The written tables name the KS column after the statistic (:func:`ks_column`).
* **PL1** (lower): mean L1 distance over all (real, sampled) pairs, x divided by the
  object's bounding-box width and y by its height; averaged over draws.
* **WD** (lower): the Wasserstein distance (``scipy.stats.wasserstein_distance_nd``, see
  :func:`wasserstein_2d`) between sampled and real pixel sets divided by the bounding-box
  diagonal; averaged over draws.
* **NSS** (higher): mean z-score of P at the real click pixels.
* **PDE** (higher): mean of P / sum(P) at the real click pixels.

Baselines (defined in :mod:`litseg.rclicks.maps`): UD (error mask / max) and DT (L2
distance transform of the error mask / max).
Dataset values are means over full_stems; :func:`click_distribution_table` writes them as
a Table-3-like CSV / Markdown table.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.special import kolmogorov
from scipy.stats import wasserstein_distance_nd

from litseg.io import write_table
from litseg.rclicks.maps import distance_transform_baseline, uniform_baseline

__all__ = [
    "KS_VARIANTS", "KSVariant", "aggregate_scores", "click_distribution_scores", "click_distribution_table",
    "distance_transform_baseline", "fasano_franceschini_statistic", "ks2d2s_statistic", "ks_2d", "ks_column",
    "ks_statistic", "object_bbox_size", "sample_clicks", "uniform_baseline", "wasserstein_2d",
]

BOOTSTRAP_DRAWS = 100
KS_ALPHA = 0.05
METRIC_NAMES = ("KS", "PL1", "WD", "NSS", "PDE")

KSVariant = Literal["rclicks", "textbook"]
KS_VARIANTS: tuple[str, ...] = ("rclicks", "textbook")
# Column name of KS in the written tables: it says which statistic the fractions come from.
KS_COLUMNS = {"rclicks": "KS (ndtest ks2d2s)", "textbook": "KS (textbook Fasano-Franceschini)"}


# ----------------------------------------------------------------------------- 2-D KS test


def _quadrant_fractions(origins: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Share of ``points`` in each quadrant around every origin: ``M x 4``.

    Quadrants are (x > ox, y > oy), (x <= ox, y > oy), (x <= ox, y <= oy), (x > ox, y <= oy):
    points on a dividing line count on the lower / left side, and an origin drawn from
    ``points`` counts in its own lower-left quadrant (column 2; the comparisons of both
    Numerical Recipes' and ndtest's ``quadct``).
    """
    right = points[None, :, 0] > origins[:, None, 0]
    above = points[None, :, 1] > origins[:, None, 1]
    quadrants = np.stack([right & above, ~right & above, ~right & ~above, right & ~above], axis=-1)
    return quadrants.mean(axis=1)


_OWN_QUADRANT = 2  # the origin's own quadrant in _quadrant_fractions: x <= ox, y <= oy


def _as_points(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def fasano_franceschini_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook 2-D KS distance: the largest quadrant-share difference around the points
    of ``a``, and around the points of ``b``, averaged (so it is symmetric in a and b)."""
    a, b = _as_points(a), _as_points(b)
    d_a = np.abs(_quadrant_fractions(a, a) - _quadrant_fractions(a, b)).max()
    d_b = np.abs(_quadrant_fractions(b, a) - _quadrant_fractions(b, b)).max()
    return float(0.5 * (d_a + d_b))


def _ks2d2s_half(origins: np.ndarray, other: np.ndarray) -> float:
    """ndtest's one-sided distance with the points of ``origins`` (n of them) as origins.

    ``diff`` = quadrant shares of ``origins`` minus those of ``other``; the own quadrant's
    share drops the origin (``- 1/n``), and the largest positive difference gets ``+ 1/n``
    (the origin re-assigned to that quadrant, which undoes the drop in the own quadrant).
    The distance is the larger of the most negative and the most positive difference.
    """
    n = len(origins)
    diff = _quadrant_fractions(origins, origins) - _quadrant_fractions(origins, other)
    diff[:, _OWN_QUADRANT] -= 1.0 / n
    return float(max(-diff.min(), diff.max() + 1.0 / n))


def ks2d2s_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The 2-D KS distance as ``ndtest.ks2d2s`` (RClicks' Table 3) computes it: the mean of
    :func:`_ks2d2s_half` around the points of ``a`` and around the points of ``b``.

    It differs from :func:`fasano_franceschini_statistic` by up to ``1/n`` per side: a sample
    against itself gives ``1/n`` (0.2 for 5 distinct points) instead of 0.
    """
    a, b = _as_points(a), _as_points(b)
    return 0.5 * (_ks2d2s_half(a, b) + _ks2d2s_half(b, a))


def ks_statistic(a: np.ndarray, b: np.ndarray, variant: KSVariant = "rclicks") -> float:
    """:func:`ks2d2s_statistic` (``"rclicks"``) or :func:`fasano_franceschini_statistic` (``"textbook"``)."""
    if variant == "rclicks":
        return ks2d2s_statistic(a, b)
    if variant == "textbook":
        return fasano_franceschini_statistic(a, b)
    raise ValueError(f"unknown KS variant {variant!r}; expected one of {KS_VARIANTS}")


def ks_column(variant: KSVariant = "rclicks") -> str:
    """The KS column's name in the written tables, e.g. ``"KS (ndtest ks2d2s)"``."""
    if variant not in KS_COLUMNS:
        raise ValueError(f"unknown KS variant {variant!r}; expected one of {KS_VARIANTS}")
    return KS_COLUMNS[variant]


def _pearson(points: np.ndarray) -> float:
    """Correlation of x and y; 0 when either coordinate is constant (undefined otherwise)."""
    x, y = points[:, 0] - points[:, 0].mean(), points[:, 1] - points[:, 1].mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def ks_2d(a: np.ndarray, b: np.ndarray, variant: KSVariant = "rclicks") -> tuple[float, float]:
    """Two-sample 2-D Kolmogorov-Smirnov test of point sets ``a`` (n1 x 2) and ``b`` (n2 x 2).

    Returns ``(D, p)``. ``D`` is :func:`ks_statistic` of ``variant`` (default RClicks'
    ``ndtest.ks2d2s``); ``p`` is, for either statistic, Press et al.'s approximation
    ``Q_KS(D sqrt(N) / (1 + sqrt(1 - (r1^2 + r2^2) / 2) (0.25 - 0.75 / sqrt(N))))``
    with ``N = n1 n2 / (n1 + n2)``, ``r1, r2`` the x-y correlations of the samples, and
    ``Q_KS(l) = 2 sum_j (-1)^(j-1) exp(-2 j^2 l^2)`` (``scipy.special.kolmogorov``). The
    approximation is meant for N >~ 20; smaller samples give only rough p-values. A sample
    with a constant coordinate has r = 0 here (scipy's ``pearsonr``, which ndtest calls,
    gives NaN, so upstream counts such a draw as a rejection).
    """
    a, b = _as_points(a), _as_points(b)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("the 2-D KS test needs at least one point in each sample")
    d = ks_statistic(a, b, variant)
    sqrt_n = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    rr = np.sqrt(1.0 - 0.5 * (_pearson(a) ** 2 + _pearson(b) ** 2))
    lam = d * sqrt_n / (1.0 + rr * (0.25 - 0.75 / sqrt_n))
    return d, float(np.clip(kolmogorov(lam), 0.0, 1.0))


def wasserstein_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two 2-D point sets with uniform weights (Euclidean cost).

    Equals ``scipy.stats.wasserstein_distance_nd``. For equally sized sets (always the case
    in the bootstrap: N samples against N real clicks) the optimal plan is a permutation
    (Birkhoff), so an assignment solver gives the same value a few hundred times faster
    than the general linear program.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    if len(a) != len(b):
        return float(wasserstein_distance_nd(a, b))
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


# ----------------------------------------------------------------------------- per full_stem


def object_bbox_size(mask: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the bounding box of the non-zero pixels of ``mask``."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        raise ValueError("the object mask is empty: no bounding box to normalise by")
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def sample_clicks(prob_map: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Draw i.i.d. pixels proportional to ``prob_map``: array of ``shape + (2,)`` (x, y)."""
    flat = np.asarray(prob_map, dtype=np.float64).ravel()
    cdf = np.cumsum(flat)
    if not cdf[-1] > 0:
        raise ValueError("cannot sample from a map that sums to zero")
    # Inverse-CDF sampling: one cumsum serves all draws (rng.choice(p=...) would redo it per call).
    idx = np.searchsorted(cdf, rng.random(shape) * cdf[-1], side="right")
    idx = np.minimum(idx, flat.size - 1)
    width = prob_map.shape[1]
    return np.stack([idx % width, idx // width], axis=-1)


def click_distribution_scores(pred_map: np.ndarray, clicks_xy: np.ndarray, object_mask: np.ndarray,
                              rng: np.random.Generator, draws: int = BOOTSTRAP_DRAWS,
                              ks_variant: KSVariant = "rclicks") -> dict[str, float]:
    """KS / PL1 / WD / NSS / PDE of one full_stem (see the module docstring).

    ``pred_map``: H x W non-negative map at image resolution; ``clicks_xy``: N x 2 real
    clicks (x, y), clipped into the image; ``object_mask``: the GT object (its bounding box
    normalises distances). A map that sums to zero (a constant model output after min-max
    normalisation) is scored as uniform over the image and flagged by ``degenerate_map``.
    ``ks_variant`` picks the KS statistic (:func:`ks_statistic`); the key stays ``"KS"``.
    """
    if ks_variant not in KS_VARIANTS:
        raise ValueError(f"unknown KS variant {ks_variant!r}; expected one of {KS_VARIANTS}")
    pred = np.asarray(pred_map, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != np.asarray(object_mask).shape:
        raise ValueError(f"map {pred.shape} and object mask {np.asarray(object_mask).shape} must be equal H x W")
    if (pred < 0).any() or not np.isfinite(pred).all():
        raise ValueError("a clickability map must be finite and non-negative")
    height, width = pred.shape
    real = np.asarray(clicks_xy, dtype=np.int64).reshape(-1, 2).copy()
    if len(real) == 0:
        raise ValueError("no real clicks to compare with")
    real[:, 0] = np.clip(real[:, 0], 0, width - 1)
    real[:, 1] = np.clip(real[:, 1], 0, height - 1)
    degenerate = not pred.sum() > 0
    if degenerate:
        pred = np.ones_like(pred)
    prob = pred / pred.sum()
    box_w, box_h = object_bbox_size(object_mask)
    diagonal = float(np.hypot(box_w, box_h))

    n = len(real)
    samples = sample_clicks(prob, (draws, n), rng)
    ks_pass, pl1, wd = 0, 0.0, 0.0
    for draw in samples:
        ks_pass += ks_2d(real, draw, ks_variant)[1] > KS_ALPHA
        # All (real, sampled) pairs, coordinates in units of the object's box.
        dx = np.abs(real[:, None, 0] - draw[None, :, 0]) / box_w
        dy = np.abs(real[:, None, 1] - draw[None, :, 1]) / box_h
        pl1 += float((dx + dy).mean())
        wd += wasserstein_2d(draw, real) / diagonal
    at_clicks = prob[real[:, 1], real[:, 0]]
    std = prob.std()
    nss = float(((at_clicks - prob.mean()) / std).mean()) if std > 0 else 0.0
    return {
        "KS": ks_pass / draws,
        "PL1": pl1 / draws,
        "WD": wd / draws,
        "NSS": nss,
        "PDE": float(at_clicks.mean()),
        "degenerate_map": int(degenerate),
    }


# ----------------------------------------------------------------------------- tables


def aggregate_scores(rows: Iterable[dict[str, Any]],
                     keys: Sequence[str] = ("model", "dataset")) -> list[dict[str, Any]]:
    """Mean of every metric over the full_stems of each (model, dataset); keeps first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    table = []
    for group_key, members in groups.items():
        out: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        out["full_stems"] = len(members)
        for name in METRIC_NAMES:
            out[name] = float(np.mean([m[name] for m in members]))
        out["degenerate_maps"] = int(sum(m.get("degenerate_map", 0) for m in members))
        table.append(out)
    return table


def _label_ks(row: dict[str, Any], column: str) -> dict[str, Any]:
    """``row`` with its ``"KS"`` key renamed to ``column``, in place in the key order."""
    return {(column if key == "KS" else key): value for key, value in row.items()}


def click_distribution_table(per_stem_rows: Sequence[dict[str, Any]], output_dir: str | os.PathLike[str],
                             name: str = "click_distribution", ks_variant: KSVariant = "rclicks",
                             ) -> list[dict[str, Any]]:
    """Write ``<name>_per_stem.csv`` and the Table-3-like ``<name>.csv`` / ``.md``; returns the table rows.

    ``ks_variant`` is the statistic the rows' ``"KS"`` values were computed with: in the
    written files (and the returned rows) that column is named :func:`ks_column`, e.g.
    ``KS (ndtest ks2d2s)``, so a table says which KS it reports.
    """
    column = ks_column(ks_variant)
    output_dir = Path(output_dir)
    write_table([_label_ks(r, column) for r in per_stem_rows], output_dir / f"{name}_per_stem.csv")
    table = [_label_ks(r, column) for r in aggregate_scores(per_stem_rows)]
    write_table(table, output_dir / f"{name}.csv", output_dir / f"{name}.md", float_format="{:.4g}")
    return table
