"""Log input / ground truth / prediction overlays of a few fixed validation images to W&B.

Works for every method whose ``validation_step`` returns ``{"preds": B x H x W class ids}``
and whose batch holds ``"image"`` (ImageNet-normalised) and ``"mask"`` (``B x H x W``).
The first batch of the validation set is always the same images (no shuffling), so the
panels of successive epochs are comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from litseg.imaging import IGNORE_INDEX, denormalize


class SegmentationOverlayLogger(Callback):
    """Args:
    num_images: how many images of the first validation batch to log.
    every_n_epochs: log every this many epochs (the last epoch is always logged).
    key: W&B media key.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, key: str = "val/overlays") -> None:
        self.num_images = num_images
        self.every_n_epochs = max(1, every_n_epochs)
        self.key = key

    def _due(self, trainer: Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not isinstance(trainer.logger, WandbLogger) or not self._due(trainer):
            return
        if not isinstance(outputs, dict) or "preds" not in outputs:
            return
        import wandb

        class_names = getattr(trainer.datamodule, "class_names", None)
        n = min(self.num_images, len(outputs["preds"]))
        panels = []
        for i in range(n):
            pred = outputs["preds"][i].cpu().numpy().astype(np.int64)
            gt = batch["mask"][i].cpu().numpy().astype(np.int64)
            labels = {c: name for c, name in enumerate(class_names)} if class_names else None
            gt_labels = dict(labels or {}) | {IGNORE_INDEX: "ignore"}
            panels.append(
                wandb.Image(
                    denormalize(batch["image"][i]),
                    masks={
                        "ground_truth": {"mask_data": gt, "class_labels": gt_labels},
                        "prediction": {"mask_data": pred, "class_labels": labels or {}},
                    },
                    caption=str(batch["stem"][i]) if "stem" in batch else None,
                )
            )
        trainer.logger.experiment.log({self.key: panels, "trainer/global_step": trainer.global_step})
