"""Checkpointing whose ``last.ckpt`` always holds the latest completed epoch.

Lightning 2.6's ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt`` only when a
top-k checkpoint was saved at the same step (``model_checkpoint.py``, ``on_validation_end``: "Only save
last checkpoint if a checkpoint was actually saved in this step"), so after a crash a run resumes from
its best epoch and repeats every epoch since. :class:`RunCheckpoint` writes ``last.ckpt`` at every
save point as well, after flushing the loggers; top-k selection, ``hpc_ckpt`` files and everything
else are Lightning's own.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with ``save_last=True`` that refreshes ``last.ckpt`` at every save point."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        super().__init__(*args, **kwargs)
        self._last_saved_at: int | None = None

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # Flush the loggers first: CSVLogger writes metrics.csv only every 100 steps, so a job killed
        # after this checkpoint would otherwise lose the rows that precede it for good.
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_at = trainer.global_step

    def _refresh_last(self, trainer: Trainer) -> None:
        if self.save_last and self._last_saved_at != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
