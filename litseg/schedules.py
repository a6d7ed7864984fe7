"""Learning-rate schedules and parameter groups of the suite's optimisation recipes.

The schedules are ordinary ``torch.optim.lr_scheduler`` schedulers, so configs inject them as
``model.init_args.lr_scheduler`` (``class_path: litseg.schedules.WarmupCosine``). Those that need the
length of the run take ``total_steps``: :class:`lit_modules.base.LitSegModule` passes the number of
optimiser updates (``scheduler_interval: step``) or of epochs (``epoch``) when the config leaves it
``null``.

Every factor is relative to each group's base lr (the model's ``lr`` times the group's ``lr_scale``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

NORM_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    torch.nn.GroupNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def warmup_steps_of(total_steps: int, warmup_fraction: float = 0.0, warmup_steps: int | None = None) -> int:
    """Warm-up length in steps: ``warmup_steps`` if given, else ``int(warmup_fraction * total_steps)``."""
    if warmup_steps is not None:
        if warmup_fraction:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        return int(warmup_steps)
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    return int(warmup_fraction * total_steps)


def warmup_factor(step: int, warmup: int) -> float:
    """Linear warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps, then 1."""
    return (step + 1) / warmup if warmup > 0 and step < warmup else 1.0


def warmup_cosine_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """LR factor: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``floor`` over the rest."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _total(total_steps: int | None) -> int:
    if total_steps is None:
        raise ValueError("total_steps is not set: give it in the config or let the module pass it "
                         "(scheduler_interval step: optimiser updates of the run; epoch: max_epochs)")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return int(total_steps)


class WarmupCosine(LambdaLR):
    """Linear warm-up, then cosine decay to ``floor`` (a fraction of the base lr) at ``total_steps``.

    A "step" is one scheduler step: one optimiser update with ``scheduler_interval: step``, one epoch
    with ``epoch``. ``warmup_fraction`` (of ``total_steps``, rounded down) or ``warmup_steps`` sets the
    warm-up; with neither, a plain cosine. The factor is ``(s + 1) / W`` during warm-up, then
    ``floor + (1 - floor) * (1 + cos(pi * min(1, (s - W) / max(1, T - W)))) / 2``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int | None = None,
                 warmup_fraction: float = 0.0, warmup_steps: int | None = None, floor: float = 0.0,
                 last_epoch: int = -1) -> None:
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.total_steps = _total(total_steps)
        self.warmup = warmup_steps_of(self.total_steps, warmup_fraction, warmup_steps)
        self.floor = floor
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.warmup, self.total_steps, self.floor)


class WarmupMultiStep(LambdaLR):
    """Linear warm-up, then the lr times ``gamma`` at each milestone (step counts from the start).

    ``milestones`` are scheduler steps (optimiser updates with ``scheduler_interval: step``); with
    ``total_steps`` known they may instead be fractions of the run (every value < 1). Warm-up as in
    :class:`WarmupCosine` (``warmup_fraction`` needs ``total_steps``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[float] = (),
                 gamma: float = 0.1, total_steps: int | None = None, warmup_fraction: float = 0.0,
                 warmup_steps: int | None = None, last_epoch: int = -1) -> None:
        fractional = bool(milestones) and all(0.0 < m < 1.0 for m in milestones)
        if fractional or (warmup_fraction and warmup_steps is None):
            total = _total(total_steps)
        else:
            total = int(total_steps or 0)
        self.milestones = sorted(int(m * total) if fractional else int(m) for m in milestones)
        self.gamma = gamma
        self.warmup = warmup_steps_of(total, warmup_fraction, warmup_steps)
        super().__init__(optimizer, self.factor, last_epoch=last_epoch)

    def factor(self, step: int) -> float:
        passed = sum(1 for m in self.milestones if step >= m)
        return warmup_factor(step, self.warmup) * self.gamma**passed


def no_decay_param_groups(module: torch.nn.Module, norm_layers: tuple[type[torch.nn.Module], ...] = NORM_LAYERS,
                          extra: Iterable[str] = ()) -> list[dict]:
    """Two parameter groups: ``decay`` (weights) and ``no_decay`` (biases, 1-d parameters and every
    parameter of a normalisation layer, plus the parameter names in ``extra``, e.g. position
    embeddings) with ``weight_decay: 0``. Frozen parameters are left out; empty groups are dropped.
    """
    no_decay_names = set(extra)
    for prefix, child in module.named_modules():
        if isinstance(child, norm_layers):
            no_decay_names |= {f"{prefix}.{n}" if prefix else n for n, _ in child.named_parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name in no_decay_names or param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"name": "decay", "params": decay}, {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
