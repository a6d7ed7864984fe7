"""Base LightningModule of the suite: optimiser / schedule options, weight init, results.

Every method's module subclasses :class:`LitSegModule`. The CLI runs in subclass mode over
this base, so ``--model WeakLabelUNet`` (or ``class_path`` in YAML) picks a method and
its typed ``__init__`` arguments become config keys.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import WandbLogger

from litseg.checkpoint import load_weights
from litseg.io import write_table
from litseg.seeding import item_rng


class LitSegModule(LightningModule):
    """Shared conventions for the five methods.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (Adam / SGD).
        optimizer: optimiser family.
        scheduler: ``none``; ``cosine`` (per step, to 0); ``warmup_cosine`` (linear warm-up
            over ``warmup_fraction`` of the steps, then per-step cosine).
        warmup_fraction: share of all optimisation steps used for warm-up.
        init_weights: optional checkpoint whose weights initialise the module (weights only,
            strict). Resuming full trainer state is ``--ckpt_path`` instead.
    """

    def __init__(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        scheduler: Literal["none", "cosine", "warmup_cosine"] = "none",
        warmup_fraction: float = 0.1,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.scheduler_name = scheduler
        self.warmup_fraction = warmup_fraction
        self.init_weights = init_weights
        # Filled by on_test_epoch_end of subclasses; written by evaluate.py.
        self.evaluation_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ weights
    def load_init_weights(self) -> None:
        """Call at the end of a subclass ``__init__`` once its networks exist."""
        if self.init_weights:
            load_weights(self, self.init_weights, key="state_dict")

    # ------------------------------------------------------------------ reproducibility
    def on_train_epoch_start(self) -> None:
        """Re-seed the global RNGs from (run seed, epoch, rank) at every epoch.

        Stochastic layers (dropout, EfficientNet drop-connect) draw from the global torch RNG,
        whose state is not in Lightning checkpoints. Seeding per epoch makes an epoch's random
        numbers the same whether the run was resumed from ``last.ckpt`` or not, on every rank.
        Subclasses that override this hook must call ``super().on_train_epoch_start()``.
        """
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        epoch_seed = int(item_rng(seed, "epoch", self.current_epoch, self.global_rank).integers(2**62))
        torch.manual_seed(epoch_seed)
        random.seed(epoch_seed)

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.trainable_parameters()
        if self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        if self.scheduler_name == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_fraction * total) if self.scheduler_name == "warmup_cosine" else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine_factor(step, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation output
    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """Write the last test run's results under ``output_dir``; returns the table rows.

        The default writes ``results.csv`` / ``results.md`` from ``self.evaluation_rows``;
        methods with richer outputs (per-click CSVs, plots) extend it.
        """
        if not self.evaluation_rows:
            raise RuntimeError(f"{type(self).__name__}: no evaluation results; run the test loop first")
        write_table(self.evaluation_rows, output_dir / "results.csv", output_dir / "results.md")
        self.log_report("test", self.evaluation_rows)
        return self.evaluation_rows

    def log_report(self, prefix: str, rows: list[dict[str, Any]], images: dict[str, Path] | None = None) -> None:
        """Log a results table (``<prefix>/summary``) and figures (``<prefix>/<name>``) to every W&B logger."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns = list(rows[0])
                payload: dict[str, Any] = {
                    f"{prefix}/summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
                }
                payload |= {f"{prefix}/{name}": wandb.Image(str(path)) for name, path in (images or {}).items()}
                logger.experiment.log(payload)


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """LR factor: linear 0 -> 1 over ``warmup`` steps, then cosine 1 -> 0 over the rest."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
