"""Saliency-style map metrics used to train and validate the RClicks clickability model.

* KL divergence (the training loss, note 1.6): both maps normalised to sum 1 (eps 1e-9),
  ``sum gt * log(eps + gt / (eps + pred))`` per sample (its batch mean is
  :func:`litseg.losses.kl_loss`).
* CC: Pearson correlation of the two maps.
* SIM: histogram intersection ``sum min(p, q)`` of the sum-normalised maps.

CC and SIM first min-max normalise both maps (as upstream's validation does). Each has a
functional form returning one value per sample and a torchmetrics ``Metric`` that
accumulates per-sample values in sum states (so DDP reduction is a plain sum).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from litseg.nets.rclicks import minmax_normalize

EPS = 1e-9


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """``B x ...`` -> ``B x N``: every metric is computed per sample over all pixels."""
    if x.dim() < 2:
        raise ValueError(f"expected a batch of maps (B x ...), got shape {tuple(x.shape)}")
    return x.flatten(1).float()  # bf16 autocast outputs: sums and logs in float32


def sum_normalize(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample division by the sum (``B x N``)."""
    return x / (x.sum(dim=1, keepdim=True) + eps)


def kl_divergence(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample KL(target || pred) of sum-normalised maps, shape ``B``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = sum_normalize(_per_sample(pred), eps)
    q = sum_normalize(_per_sample(target), eps)
    return (q * torch.log(eps + q / (eps + p))).sum(dim=1)


def correlation_coefficient(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample Pearson correlation (CC) of the min-max normalised maps, shape ``B``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    a = minmax_normalize(_per_sample(pred), eps)
    b = minmax_normalize(_per_sample(target), eps)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1)) + eps)


def similarity(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-sample SIM (histogram intersection) of min-max then sum-normalised maps, shape ``B``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    a = sum_normalize(minmax_normalize(_per_sample(pred), eps), eps)
    b = sum_normalize(minmax_normalize(_per_sample(target), eps), eps)
    return torch.minimum(a, b).sum(dim=1)


class _PerSampleMean(Metric):
    """Mean over all samples seen of a per-sample map metric (sum and count states)."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, eps: float = EPS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def per_sample(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        values = self.per_sample(pred.detach().float(), target.detach().float(), self.eps)
        # Re-assigned, not in place: states reset inside inference mode (trainer.validate) are inference tensors.
        self.total = self.total + values.double().sum()
        self.count = self.count + values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class SaliencyKLD(_PerSampleMean):
    """Mean per-sample KL divergence (lower is better)."""

    higher_is_better = False
    per_sample = staticmethod(kl_divergence)


class SaliencyCC(_PerSampleMean):
    """Mean per-sample Pearson correlation (higher is better)."""

    higher_is_better = True
    per_sample = staticmethod(correlation_coefficient)


class SaliencySIM(_PerSampleMean):
    """Mean per-sample histogram intersection (higher is better)."""

    higher_is_better = True
    per_sample = staticmethod(similarity)
