"""Mask metrics shared by SAOM, SemSeg and ConverSeg: one definition each, torch-based.

Binary-mask inputs: ``bool`` tensors, or integer tensors where ``> 0`` is foreground (0/1 and
0/255 masks alike). Floating-point masks are refused by the functions (threshold them first);
:class:`GIoUCIoU` thresholds floating-point predictions itself (``pred > threshold``, logits by
default). The last two dimensions are ``H x W``; every leading index is one mask (one sample).

Both metrics are ``torchmetrics.Metric`` s whose states are sums (``dist_reduce_fx="sum"``), so
DDP, ``merge_state`` and accumulation over batches all give the one-shot numbers exactly
(integer pixel counts; the gIoU sum is float64). Results are float64 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["IOU_EPS", "GIoUCIoU", "PooledClassIoU", "intersection_union", "mask_iou", "np_mask_iou",
           "pairwise_mask_iou"]

# ConverSeg eval.py divides by (union + 1e-10) (converseg.md §4.1, "Metrics"); kept for parity.
# It moves an IoU by at most ~1e-10 relative and never decides anything.
IOU_EPS = 1e-10

MaskInput = Tensor | np.ndarray | Sequence[Tensor | np.ndarray]


def _as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _binary(x: Any, name: str, threshold: float | None = None) -> Tensor:
    x = _as_tensor(x)
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point() or x.is_complex():
        if threshold is None:
            raise TypeError(f"{name}: floating-point masks are ambiguous (logits? probabilities?); "
                            "binarise them first, e.g. logits > 0")
        return x > threshold
    return x > 0


def intersection_union(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-mask ``|P ∩ G|`` and ``|P ∪ G|`` (int64) of ``(..., H, W)`` binary masks."""
    p, t = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    if p.ndim < 2:
        raise ValueError(f"masks need at least 2 dimensions (H, W), got shape {tuple(p.shape)}")
    inter = (p & t).flatten(-2).sum(-1, dtype=torch.int64)
    union = (p | t).flatten(-2).sum(-1, dtype=torch.int64)
    return inter, union


def _iou_from_counts(inter: Tensor, union: Tensor, eps: float) -> Tensor:
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / (union + eps), torch.ones_like(inter))


def mask_iou(pred: Tensor, target: Tensor, *, eps: float = IOU_EPS) -> Tensor:
    """IoU of each pair of ``(..., H, W)`` binary masks -> ``(...)`` float64.

    ``|P ∩ G| / (|P ∪ G| + eps)``; **IoU = 1 when both masks are empty** (empty union): a correct
    "nothing here" answer, the ConverSeg / LISA convention. One empty and one non-empty mask
    give 0.
    """
    inter, union = intersection_union(pred, target)
    return _iou_from_counts(inter, union, eps)


def np_mask_iou(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None, *,
                eps: float = 0.0) -> float:
    """:func:`mask_iou` of one pair of ``H x W`` numpy masks, as a Python float.

    ``ignore`` pixels (boolean ``H x W``) are left out of both intersection and union; both masks
    empty on the remaining pixels count as a perfect match, 1.0. ``eps`` defaults to 0 (the
    interactive benchmark's exact RITM IoU); pass :data:`IOU_EPS` for the ConverSeg convention.
    """
    pred_t, target_t = _binary(pred, "pred"), _binary(target, "target")
    if ignore is not None:
        valid = ~_as_tensor(ignore).bool()
        pred_t, target_t = pred_t & valid, target_t & valid
    return float(mask_iou(pred_t, target_t, eps=eps))


def pairwise_mask_iou(masks_a: Tensor, masks_b: Tensor, *, eps: float = IOU_EPS) -> Tensor:
    """IoU matrix ``(N, M)`` float64 between ``N x H x W`` and ``M x H x W`` binary masks.

    Same convention as :func:`mask_iou` (two empty masks: 1).
    """
    a, b = _binary(masks_a, "masks_a"), _binary(masks_b, "masks_b")
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"expected N x H x W and M x H x W masks of one size, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a2, b2 = a.flatten(1), b.flatten(1)
    pixels = a2.shape[1]
    # Exact integer counts: float32 holds integers exactly up to 2**24; autocast must not lower it.
    dtype = torch.float32 if pixels <= 2**24 else torch.float64
    with torch.autocast(device_type=a.device.type, enabled=False):
        inter = (a2.to(dtype) @ b2.to(dtype).T).round().to(torch.int64)
    union = a2.sum(1)[:, None] + b2.sum(1)[None, :] - inter
    return _iou_from_counts(inter, union, eps)


def _pairs(preds: MaskInput, target: MaskInput) -> list[tuple[Any, Any]]:
    """Batch inputs as (pred, target) pairs: one tensor pair, or two equal-length sequences."""
    if isinstance(preds, (list, tuple)) or isinstance(target, (list, tuple)):
        if not (isinstance(preds, (list, tuple)) and isinstance(target, (list, tuple))):
            raise TypeError("pass preds and target both as tensors or both as sequences of masks")
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions but {len(target)} targets")
        return list(zip(preds, target))
    return [(preds, target)]


class GIoUCIoU(Metric):
    """gIoU and cIoU of binary masks (referring / reasoning segmentation).

    Definitions, as ConverSeg's ``eval.py`` computes them (converseg.md §4.1 "Metrics" and
    "What a faithful re-implementation must get right" item 14), which are also the ReasonSeg /
    LISA definitions:

    * per-sample IoU_i = |P_i ∩ G_i| / (|P_i ∪ G_i| + 1e-10), and **IoU_i = 1.0 when the union is
      empty** (empty prediction for an empty target);
    * **gIoU** = mean over samples of IoU_i;
    * **cIoU** = Σ_i |P_i ∩ G_i| / (Σ_i |P_i ∪ G_i| + 1e-10) over the whole set (so an all-empty
      set has cIoU 0, and empty/empty samples add nothing to it).

    ``update(preds, target)``: ``(..., H, W)`` tensors (every leading index is one sample) or two
    sequences of ``H_i x W_i`` masks (samples at their original, differing sizes). Float
    predictions are binarised with ``pred > threshold`` (default 0.0: logits, ConverSeg's
    "logit > 0"; use 0.5 for probabilities); targets are bool or integer (``> 0`` = object).
    ``compute()`` -> ``{"gIoU", "cIoU"}`` float64 scalars in [0, 1] (NaN before any sample).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    samples: Tensor
    intersection: Tensor
    union: Tensor

    def __init__(self, threshold: float = 0.0, eps: float = IOU_EPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.eps = float(eps)
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("intersection", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: MaskInput, target: MaskInput) -> None:
        for pred, tgt in _pairs(preds, target):
            p = _binary(pred, "preds", self.threshold).to(self.iou_sum.device)
            t = _binary(tgt, "target").to(self.iou_sum.device)
            inter, union = intersection_union(p, t)
            self.iou_sum += _iou_from_counts(inter, union, self.eps).sum()
            self.samples += inter.numel()
            self.intersection += inter.sum()
            self.union += union.sum()

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.iou_sum.device)
        if int(self.samples) == 0:
            return {"gIoU": nan, "cIoU": nan.clone()}
        return {"gIoU": self.iou_sum / self.samples.double(),
                "cIoU": self.intersection.double() / (self.union.double() + self.eps)}


class PooledClassIoU(Metric):
    """Per-class IoU and accuracy pooled over the whole dataset, then averaged over classes.

    One ``(C+1) x (C+1)`` confusion matrix (rows = ground truth, columns = prediction) is summed
    over every update (and over DDP ranks); index ``C`` is "no class", used only by instance mode.
    Per class c, with TP_c = M[c, c], GT_c = Σ row c, P_c = Σ column c:

    * IoU_c = TP_c / (GT_c + P_c - TP_c)   (= Σ|P∩G| / Σ|P∪G| pooled over the dataset)
    * Acc_c = TP_c / GT_c                   (pixel recall of class c)
    * ``mIoU`` = mean of IoU_c over the classes whose union is non-empty (present in the ground
      truth or the prediction); ``mAcc`` = mean of Acc_c over the classes present in the
      ground truth. A class absent from both has IoU and Acc NaN and is left out of both means
      (it was never tested); a class only predicted has IoU 0 (counts) and Acc NaN. This is the
      mmseg convention, and for mIoU also torchmetrics' ``MulticlassJaccardIndex(average="macro")``
      (its ``MulticlassAccuracy`` macro differs: it scores an only-predicted class 0).
      ``pixel_acc`` = Σ TP / Σ GT. All NaN before any update.
    * ``ignore_index``: label-map pixels whose target equals it are dropped entirely (neither TP,
      FP nor FN); if it is also a class index, that class reports NaN.

    Two update modes (do not mix them in one object):

    * **label maps** ``update(preds, target)``: ``preds`` ``B x H x W`` class ids or
      ``B x C x H x W`` scores (argmax over dim 1), ``target`` ``B x H x W`` class ids.
    * **paired instances** ``update(pred_masks, gt_masks, classes)`` (SAOM, saom.md §4 and
      "must get right" item 13): ``N x H x W`` binary masks (or sequences of ``H_i x W_i``
      masks), prediction i paired with ground-truth instance i of class ``classes[i]``. Adds
      |P∩G| to M[c, c], |G \\ P| to M[c, C] and |P \\ G| to M[C, c]: IoU_c = Σ|P∩G| / Σ|P∪G| and
      Acc_c = Σ|P∩G| / Σ|G| over the instances of c, a missing prediction is an empty mask, and
      a prediction is compared only with its own instance (no background class, no
      false-positive penalty elsewhere). SAOM's "mean over classes with >= 1 matched prediction"
      is the mean over classes with ground truth here, because every ground-truth instance gets
      a prediction. SAOM's code divides by (Σ + 1e-10); this divides exactly and reports NaN for
      an empty union (SAOM drops empty ground-truth instances, so it never matters).
      Values are fractions; SAOM tables print 100x.

    ``compute()`` -> ``{"mIoU", "mAcc", "pixel_acc"}`` float64 scalars and ``"IoU"``, ``"Acc"``
    float64 vectors of length C.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        size = num_classes + 1
        self.add_state("confmat", torch.zeros(size, size, dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ update

    def update(self, preds: MaskInput, target: MaskInput, classes: Tensor | Sequence[int] | None = None) -> None:
        if classes is None:
            self._update_labels(_as_tensor(preds), _as_tensor(target))
        else:
            self._update_instances(preds, target, classes)

    def _update_labels(self, preds: Tensor, target: Tensor) -> None:
        c = self.num_classes
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1 or preds.shape[1] != c:
                raise ValueError(f"score predictions must be B x {c} x H x W for targets {tuple(target.shape)}, "
                                 f"got {tuple(preds.shape)}")
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"preds and target shapes differ: {tuple(preds.shape)} vs {tuple(target.shape)}")
        if preds.dtype == torch.bool or target.dtype == torch.bool or target.is_floating_point():
            raise TypeError("label maps must hold integer class ids")
        preds = preds.to(self.confmat.device).reshape(-1).long()
        target = target.to(self.confmat.device).reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        if target.numel() == 0:
            return
        for name, values in (("target", target), ("preds", preds)):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= c:
                extra = "" if self.ignore_index is None else f" or ignore_index {self.ignore_index}"
                raise ValueError(f"{name} holds class ids {lo}..{hi}, outside 0..{c - 1}{extra}")
        size = c + 1
        counts = torch.bincount(target * size + preds, minlength=size * size)
        self.confmat += counts.reshape(size, size)

    def _update_instances(self, preds: MaskInput, target: MaskInput, classes: Tensor | Sequence[int]) -> None:
        device = self.confmat.device
        inters, unions, gts = [], [], []
        for pred, tgt in _pairs(preds, target):
            p, t = _binary(pred, "preds"), _binary(tgt, "target")
            inter, union = intersection_union(p, t)
            inters.append(inter.reshape(-1).to(device))
            unions.append(union.reshape(-1).to(device))
            gts.append(t.flatten(-2).sum(-1, dtype=torch.int64).reshape(-1).to(device))
        inter, union, gt = torch.cat(inters), torch.cat(unions), torch.cat(gts)
        cls = _as_tensor(classes).to(device=device, dtype=torch.int64).reshape(-1)
        if cls.numel() != inter.numel():
            raise ValueError(f"{inter.numel()} mask pairs but {cls.numel()} classes")
        if cls.numel() == 0:
            return
        if int(cls.min()) < 0 or int(cls.max()) >= self.num_classes:
            raise ValueError(f"classes must lie in 0..{self.num_classes - 1}, got {int(cls.min())}..{int(cls.max())}")
        none = torch.full_like(cls, self.num_classes)
        pred_area = union - gt  # |P| - |P ∩ G| = |P \ G| since |P ∪ G| = |G| + |P \ G|
        # index_put_ with accumulate=True is deterministic on CUDA (unlike weighted bincount).
        self.confmat.index_put_((cls, cls), inter, accumulate=True)
        self.confmat.index_put_((cls, none), gt - inter, accumulate=True)
        self.confmat.index_put_((none, cls), pred_area, accumulate=True)

    # ------------------------------------------------------------------ results

    @property
    def confusion_matrix(self) -> Tensor:
        """``C x C`` confusion matrix (rows ground truth, columns prediction) of label-map updates."""
        return self.confmat[: self.num_classes, : self.num_classes]

    def compute(self) -> dict[str, Tensor]:
        c = self.num_classes
        cm = self.confmat.double()
        tp = torch.diagonal(cm)[:c]
        gt = cm[:c].sum(1)
        pred = cm[:, :c].sum(0)
        union = gt + pred - tp
        nan = torch.full_like(tp, float("nan"))
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
        if self.ignore_index is not None and 0 <= self.ignore_index < c:
            iou[self.ignore_index] = float("nan")
            acc[self.ignore_index] = float("nan")
        total = gt.sum()
        pixel_acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64,
                                                                       device=cm.device)
        return {"mIoU": torch.nanmean(iou), "mAcc": torch.nanmean(acc), "pixel_acc": pixel_acc,
                "IoU": iou, "Acc": acc}
