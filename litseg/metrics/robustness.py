"""Robustness of interactive segmentation to click positions: RClicks' Sample NoC, ΔSB, ΔGR, ΔHH, NSR.

Inputs are per-instance results of the baseline clicker (group 0) and of the ten
clicking groups G1..G10 (groups 1..10; G1 samples the least likely, G10 the most likely
tenth of the clickability mass), e.g. :meth:`litseg.metrics.noc.NoCMetric.per_instance`.
Everything is computed per instance and then averaged (RClicks notebook, spec note 3.3):

* **Sample NoC** = mean_i mean_g NoC_ig, **±** = mean_i std_g NoC_ig (population std);
* **ΔSB %** = 100 mean_i (mean_g NoC_ig - NoC_i^base) / NoC_i^base (the baseline clicker's
  optimism);
* **ΔGR %** = 100 mean_i (NoC_i,G1 - NoC_i,G10) / NoC_i,G10 (unlikely vs likely clicks);
* **ΔHH %** = 100 mean over i and k = 1..5 of (NoC_i,Gk - NoC_i,Gk+5) / NoC_i,Gk+5.

NoF and IoU-AUC use the same constructions with *absolute* differences. NoF_ig is the
indicator NoC_ig == max_clicks; its per-instance values are *summed* over instances, so
the NoF columns are instance counts like NoF itself (Sample NoF = mean over groups of
each group's NoF; ΔSB NoF = Sample NoF - baseline NoF). IoU-AUC values are averaged.
**Sample NSR IoU-AUC** = 100 mean_i std_g / mean_g of IoU-AUC. NSR@1 of real clicks is
:func:`nsr`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from litseg.metrics.noc import InstanceTable, threshold_label

BASE_GROUP = 0
CLICKING_GROUPS = tuple(range(1, 11))


def nsr(ious_per_instance: Sequence[Sequence[float]]) -> float:
    """Noise-to-signal ratio x100: mean over instances of ``std / (mean + 1e-9)``.

    The std is the population std (``ddof=0``, NumPy's default, as the RClicks notebook).
    """
    if not ious_per_instance:
        return float("nan")
    ratios = [np.std(v) / (np.mean(v) + 1e-9) for v in (np.asarray(x, dtype=np.float64) for x in ious_per_instance)]
    return float(100.0 * np.mean(ratios))


def sample_mean_std(grouped: np.ndarray) -> tuple[float, float]:
    """``(mean_i mean_g x, mean_i std_g x)`` of an ``instances x groups`` array (population std)."""
    grouped = _check_grouped(grouped)
    return float(grouped.mean(axis=1).mean()), float(grouped.std(axis=1).mean())


def delta_sb(grouped: np.ndarray, base: np.ndarray, relative: bool = True) -> float:
    """Sample vs baseline: mean_i of (mean_g x - base) [/ base, x100 when ``relative``]."""
    grouped = _check_grouped(grouped)
    base = np.asarray(base, dtype=np.float64)
    if base.shape != (grouped.shape[0],):
        raise ValueError(f"base has shape {base.shape}, expected ({grouped.shape[0]},)")
    return _difference(grouped.mean(axis=1), base, relative)


def delta_gr(grouped: np.ndarray, relative: bool = True) -> float:
    """First vs last group (G1 vs G10): mean_i of (x_G1 - x_G10) [/ x_G10, x100]."""
    grouped = _check_grouped(grouped)
    return _difference(grouped[:, 0], grouped[:, -1], relative)


def delta_hh(grouped: np.ndarray, relative: bool = True) -> float:
    """First half vs second half of the groups, paired element-wise (G1-G6, ..., G5-G10)."""
    grouped = _check_grouped(grouped)
    if grouped.shape[1] % 2:
        raise ValueError(f"ΔHH needs an even number of groups, got {grouped.shape[1]}")
    half = grouped.shape[1] // 2
    return _difference(grouped[:, :half], grouped[:, half:], relative)


def _difference(a: np.ndarray, b: np.ndarray, relative: bool) -> float:
    if relative:
        return float(100.0 * np.mean((a - b) / b))
    return float(np.mean(a - b))


def _check_grouped(grouped: np.ndarray) -> np.ndarray:
    grouped = np.asarray(grouped, dtype=np.float64)
    if grouped.ndim != 2 or grouped.shape[0] == 0 or grouped.shape[1] < 2:
        raise ValueError(f"expected an instances x groups array with >= 1 instance and >= 2 groups, "
                         f"got shape {grouped.shape}")
    return grouped


def align_groups(table: InstanceTable, values: np.ndarray, groups: tuple[int, ...] = CLICKING_GROUPS,
                 base_group: int = BASE_GROUP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrange one value per table row into ``(ids, base[n], grouped[n, len(groups)])``.

    Every instance must have a row in the base group and in each clicking group: an
    instance missing from any group is an error, never silently dropped.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != table.instance_ids.shape:
        raise ValueError(f"{values.shape} values for {table.instance_ids.shape} table rows")
    by_group: dict[int, dict[int, float]] = {}
    for gid, iid, v in zip(table.groups.tolist(), table.instance_ids.tolist(), values.tolist(), strict=True):
        by_group.setdefault(gid, {})[iid] = v
    wanted = (base_group, *groups)
    missing_groups = [g for g in wanted if g not in by_group]
    if missing_groups:
        raise ValueError(f"no results for group(s) {missing_groups}; found {sorted(by_group)}")
    ids = sorted(by_group[base_group])
    for g in wanted:
        if set(by_group[g]) != set(ids):
            diff = set(by_group[g]) ^ set(ids)
            raise ValueError(f"group {g} and the base group cover different instances ({len(diff)} differ)")
    base = np.array([by_group[base_group][i] for i in ids])
    grouped = np.array([[by_group[g][i] for g in groups] for i in ids]).reshape(len(ids), len(groups))
    return np.array(ids, dtype=np.int64), base, grouped


def robustness_summary(table: InstanceTable, threshold: float = 0.9, max_clicks: int | None = None) -> dict[str, Any]:
    """All robustness statistics of one (predictor, dataset) from its per-instance table."""
    max_clicks = max_clicks or table.curves.shape[1]
    label = threshold_label(threshold)
    noc = table.noc(threshold).astype(np.float64)
    ids, noc_base, noc_g = align_groups(table, noc)
    _, fail_base, fail_g = align_groups(table, (noc == max_clicks).astype(np.float64))
    _, auc_base, auc_g = align_groups(table, table.auc())
    n = len(ids)
    out: dict[str, Any] = {"instances": n}
    mean, std = sample_mean_std(noc_g)
    out |= {
        f"Base NoC@{label}": float(noc_base.mean()),
        f"Sample NoC@{label}": mean,
        f"Sample NoC@{label} ±": std,
        f"ΔSB NoC@{label} %": delta_sb(noc_g, noc_base),
        f"ΔGR NoC@{label} %": delta_gr(noc_g),
        f"ΔHH NoC@{label} %": delta_hh(noc_g),
    }
    # NoF: per-instance indicators, summed over instances (= n x the per-instance mean).
    mean, std = sample_mean_std(fail_g)
    out |= {
        f"Base NoF@{label}": float(fail_base.sum()),
        f"Sample NoF@{label}": n * mean,
        f"Sample NoF@{label} ±": n * std,
        f"ΔSB NoF@{label}": n * delta_sb(fail_g, fail_base, relative=False),
        f"ΔGR NoF@{label}": n * delta_gr(fail_g, relative=False),
        f"ΔHH NoF@{label}": n * delta_hh(fail_g, relative=False),
    }
    mean, std = sample_mean_std(auc_g)
    out |= {
        "Base IoU-AUC": float(auc_base.mean()),
        "Sample IoU-AUC": mean,
        "Sample IoU-AUC ±": std,
        "ΔSB IoU-AUC": delta_sb(auc_g, auc_base, relative=False),
        "ΔGR IoU-AUC": delta_gr(auc_g, relative=False),
        "ΔHH IoU-AUC": delta_hh(auc_g, relative=False),
        "Sample NSR IoU-AUC": nsr(list(auc_g)),
    }
    return out
