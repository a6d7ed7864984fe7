"""The one losses module: dice, sigmoid focal, partial cross-entropy, KL of sum-normalised maps.

* :func:`dice_loss` / :func:`sigmoid_focal_loss`: binary mask losses on logits (SAM-style mask
  training: SAOM, ConverSeg); the focal loss equals ``torchvision.ops.sigmoid_focal_loss``.
* :func:`partial_cross_entropy`: cross-entropy over labelled pixels only (weak-label UNet).
* :func:`kl_loss`: KL(target || prediction) of per-sample sum-normalised maps (RClicks).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from litseg.imaging import IGNORE_INDEX
from litseg.metrics.saliency import EPS, kl_divergence

Reduction = Literal["none", "mean", "sum"]

__all__ = ["dice_loss", "kl_loss", "partial_cross_entropy", "sigmoid_focal_loss"]


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _check_same_shape(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              reduction: Reduction = "mean") -> torch.Tensor:
    """Soft dice loss of ``sigmoid(logits)`` against a 0/1 ``target`` (``B x ...``), per sample.

    ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` over all non-batch axes
    (``smooth = 1`` as in SAM's training loss); ``reduction`` over the batch.
    """
    _check_same_shape(logits, target)
    if logits.dim() < 2:
        raise ValueError(f"expected a batch (B x ...), got shape {tuple(logits.shape)}")
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    loss = 1.0 - (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return _reduce(loss, reduction)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: Reduction = "mean") -> torch.Tensor:
    """Focal loss (Lin et al., ICCV 2017) on logits, element-wise then ``reduction``.

    ``alpha`` weighs positives (``1 - alpha`` negatives; a negative ``alpha`` disables the
    weighting), ``gamma`` the down-weighting of easy pixels; the same as
    ``torchvision.ops.sigmoid_focal_loss``.
    """
    _check_same_shape(logits, target)
    logits, target = logits.float(), target.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return _reduce(loss, reduction)


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_balanced: bool = False) -> torch.Tensor:
    """Cross-entropy over labelled pixels only (``IGNORE_INDEX`` elsewhere); zero (with a gradient
    path) when none are labelled.

    ``class_balanced``: the mean over the classes present in the batch of each class's mean
    pixel CE, i.e. pixel weights ``1 / (n_classes_present * n_c)``, so every labelled class
    contributes equally whatever its pixel count (inverse-frequency class balancing, as the
    median-frequency weights of Eigen & Fergus, ICCV 2015, used by SegNet, but from the batch's
    own labelled pixels). Without it, the plain pixel mean.
    """
    labelled = target != IGNORE_INDEX
    if not labelled.any():
        return logits.sum() * 0.0
    if not class_balanced:
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")[labelled]
    classes, inverse = target[labelled].unique(return_inverse=True)
    class_sums = per_pixel.new_zeros(len(classes)).index_add_(0, inverse, per_pixel)
    class_counts = torch.bincount(inverse, minlength=len(classes)).to(per_pixel.dtype)
    return (class_sums / class_counts).mean()


def kl_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The RClicks training loss: :func:`~litseg.metrics.saliency.kl_divergence` (KL(target || pred)
    of per-sample sum-normalised maps) averaged over the batch."""
    return kl_divergence(pred, target, eps).mean()
