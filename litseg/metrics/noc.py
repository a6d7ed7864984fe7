"""NoC / NoF / mIoU@k / IoU-AUC of interactive segmentation (RITM ``compute_noc_metric``, RClicks).

Per instance the evaluation loop records an IoU curve over ``max_clicks`` clicks (no
early stop). From it:

* **NoC@t** = 1-based index of the first click with ``IoU >= t``, else ``max_clicks``;
  the dataset value is the mean over instances.
* **NoF@t** = number of instances whose NoC@t equals ``max_clicks``. As in RITM's
  ``over_max`` count this includes instances that reach ``t`` exactly at the last click.
* **mIoU@k** = mean IoU after ``k`` clicks.
* **IoU-AUC** = ``trapz(IoU_1..IoU_T) / (T - 1)``, the normalised area under the curve.

:class:`NoCMetric` keeps the raw curves (list states, ``dist_reduce_fx="cat"``) with an
instance id and a *group* id per curve: group 0 is the baseline clicker, the RClicks
clicking groups use 1..10. Curves are de-duplicated by ``(instance id, group)`` and sorted
before any statistic, so padded or re-ordered distributed evaluation gives the same result
as one process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors


def instance_id(dataset: str, image: str, instance: int | str) -> int:
    """A stable 63-bit integer id of ``dataset / image / instance`` (same on every rank and run)."""
    digest = hashlib.sha256(f"{dataset}\x00{image}\x00{instance}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def threshold_label(threshold: float) -> str:
    """``0.85 -> "85"``, ``0.875 -> "87.5"`` (the metric-name suffix)."""
    return f"{round(threshold * 100, 6):g}"


def noc_per_instance(curves: np.ndarray, threshold: float) -> np.ndarray:
    """NoC@threshold of each curve (rows of ``curves``, shape ``N x max_clicks``), as int64."""
    curves = np.asarray(curves, dtype=np.float64)
    reached = curves >= threshold
    first = np.argmax(reached, axis=1) + 1  # argmax finds the first True
    return np.where(reached.any(axis=1), first, curves.shape[1]).astype(np.int64)


def auc_per_instance(curves: np.ndarray) -> np.ndarray:
    """Normalised area under each IoU curve: ``trapz / (max_clicks - 1)`` (IoU@1 for one click)."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.shape[1] == 1:
        return curves[:, 0].copy()
    return np.trapezoid(curves, axis=1) / (curves.shape[1] - 1)


def summarize_curves(
    curves: np.ndarray,
    iou_thresholds: Sequence[float] = (0.8, 0.85, 0.9),
    nof_thresholds: Sequence[float] = (0.85, 0.9),
) -> dict[str, float]:
    """Dataset statistics of ``N x max_clicks`` IoU curves (keys ``NoC@90``, ``NoF@90``,
    ``mIoU@k`` for every k, ``IoU-AUC``, ``n_instances``). Empty input gives NaN / 0."""
    curves = np.asarray(curves, dtype=np.float64)
    n, max_clicks = curves.shape
    out: dict[str, float] = {}
    for t in iou_thresholds:
        out[f"NoC@{threshold_label(t)}"] = float(noc_per_instance(curves, t).mean()) if n else float("nan")
    for t in nof_thresholds:
        out[f"NoF@{threshold_label(t)}"] = float(np.count_nonzero(noc_per_instance(curves, t) == max_clicks))
    out["IoU-AUC"] = float(auc_per_instance(curves).mean()) if n else float("nan")
    for k in range(1, max_clicks + 1):
        out[f"mIoU@{k}"] = float(curves[:, k - 1].mean()) if n else float("nan")
    out["n_instances"] = float(n)
    return out


@dataclass(frozen=True)
class InstanceTable:
    """Per-instance results, one row per ``(instance id, group)``, sorted by (group, id)."""

    instance_ids: np.ndarray  # int64 [N]
    groups: np.ndarray  # int64 [N]
    curves: np.ndarray  # float64 [N, max_clicks]

    def noc(self, threshold: float) -> np.ndarray:
        return noc_per_instance(self.curves, threshold)

    def auc(self) -> np.ndarray:
        return auc_per_instance(self.curves)

    def select(self, group: int) -> InstanceTable:
        keep = self.groups == group
        return InstanceTable(self.instance_ids[keep], self.groups[keep], self.curves[keep])


class NoCMetric(Metric):
    """Interactive-segmentation curve metric, DDP-safe (see the module docstring).

    ``update(curves, instance_ids, group=0)``: ``curves`` is ``[N, max_clicks]`` (or one
    ``[max_clicks]`` curve), ``instance_ids`` ``[N]`` ints (e.g. :func:`instance_id`).
    ``compute()`` summarises one group (raises if several groups were recorded: use
    :meth:`compute_groups`); :meth:`per_instance` gives the table behind it.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        max_clicks: int = 20,
        iou_thresholds: Sequence[float] = (0.8, 0.85, 0.9),
        nof_thresholds: Sequence[float] = (0.85, 0.9),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.nof_thresholds = tuple(float(t) for t in nof_thresholds)
        self.add_state("curves", default=[], dist_reduce_fx="cat")
        self.add_state("instance_ids", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, curves: torch.Tensor | np.ndarray, instance_ids: torch.Tensor | Sequence[int] | int,
               group: int = 0) -> None:
        curves = torch.as_tensor(np.asarray(curves, dtype=np.float64), device=self.device)
        if curves.ndim == 1:
            curves = curves[None]
        if curves.ndim != 2 or curves.shape[1] != self.max_clicks:
            raise ValueError(f"curves must be [N, {self.max_clicks}], got {tuple(curves.shape)}")
        ids = torch.as_tensor(np.atleast_1d(np.asarray(instance_ids, dtype=np.int64)), device=self.device)
        if ids.shape != (curves.shape[0],):
            raise ValueError(f"expected {curves.shape[0]} instance ids, got shape {tuple(ids.shape)}")
        self.curves.append(curves)
        self.instance_ids.append(ids)
        self.groups.append(torch.full_like(ids, int(group)))

    def _sync_dist(self, dist_sync_fn=gather_all_tensors, process_group=None) -> None:
        # A rank that saw no instance (e.g. of this dataset) must still join the all_gather
        # with tensors of the right dtype and width; torchmetrics' own stand-in is a 1-D
        # float32 tensor, which would not match the other ranks' [n, max_clicks] float64.
        if len(self.curves) == 0:
            self.curves.append(torch.zeros(0, self.max_clicks, dtype=torch.float64, device=self.device))
            self.instance_ids.append(torch.zeros(0, dtype=torch.int64, device=self.device))
            self.groups.append(torch.zeros(0, dtype=torch.int64, device=self.device))
        super()._sync_dist(dist_sync_fn=dist_sync_fn, process_group=process_group)

    def _table(self) -> InstanceTable:
        """The (already synchronised) states as a de-duplicated, sorted table."""
        if isinstance(self.curves, list) and len(self.curves) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return InstanceTable(empty, empty.copy(), np.zeros((0, self.max_clicks)))
        curves = dim_zero_cat(self.curves).cpu().numpy().astype(np.float64).reshape(-1, self.max_clicks)
        ids = dim_zero_cat(self.instance_ids).cpu().numpy().astype(np.int64).reshape(-1)
        groups = dim_zero_cat(self.groups).cpu().numpy().astype(np.int64).reshape(-1)
        order = np.lexsort((ids, groups))  # by group, then id; stable, so the first copy wins below
        ids, groups, curves = ids[order], groups[order], curves[order]
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = (ids[1:] != ids[:-1]) | (groups[1:] != groups[:-1])
        return InstanceTable(ids[keep], groups[keep], curves[keep])

    def per_instance(self) -> InstanceTable:
        """Every recorded ``(instance, group)`` curve, gathered from all ranks."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            return self._table()

    def _summary(self, table: InstanceTable) -> dict[str, torch.Tensor]:
        stats = summarize_curves(table.curves, self.iou_thresholds, self.nof_thresholds)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}

    def compute(self) -> dict[str, torch.Tensor]:
        table = self._table()
        present = np.unique(table.groups)
        if len(present) > 1:
            raise ValueError(f"curves of several groups {present.tolist()} recorded; use compute_groups()")
        return self._summary(table)

    def compute_groups(self) -> dict[int, dict[str, torch.Tensor]]:
        """The summary of each group separately (gathered from all ranks)."""
        table = self.per_instance()
        return {int(g): self._summary(table.select(int(g))) for g in np.unique(table.groups)}
