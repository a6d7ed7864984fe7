"""Training and evaluation of the RClicks clickability model (Antonov et al., NeurIPS 2024).

``fit``: per-sample KL divergence between the predicted and the ground-truth click map
(both sum-normalised, in the letterboxed frame; note 1.6), Adam at lr 0.01 without
weight decay, 10% linear warm-up then per-step cosine (the base class's
``warmup_cosine``). Validation logs ``val/KLD``, ``val/CC`` and ``val/SIM``; the recipes
keep the checkpoint with the best ``val/SIM`` (mode max), as upstream's ``best.pth``.

``test``: the click-distribution metrics of Table 3 (KS / PL1 / WD / NSS / PDE, note 3.4)
per full_stem at image resolution, for the trained network ("Ours") and the UD / DT
baselines, with the same bootstrap draws for every model; ``write_evaluation`` writes the
per-dataset table (``results.csv`` / ``.md``) and the per-full_stem rows. KS uses RClicks'
statistic (``ndtest.ks2d2s``) unless ``ks_variant: textbook``; the tables' KS column says which
(``KS (ndtest ks2d2s)`` / ``KS (textbook Fasano-Franceschini)``), the logged key stays ``KS``.

Differences from upstream, on purpose: a timm CNN + FPN-style head instead of SegNeXt-B
(see :mod:`litseg.nets.rclicks`); the cosine decays to 0 at the last step, where upstream's
timm schedule stops at cosine position 0.9 (lr about 2.4e-4).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_modules.base import LitSegModule
from litseg.distributed import gather_rows
from litseg.losses import kl_loss
from litseg.metrics.click_distribution import (
    BOOTSTRAP_DRAWS,
    KS_VARIANTS,
    KSVariant,
    aggregate_scores,
    click_distribution_scores,
    click_distribution_table,
)
from litseg.metrics.saliency import SaliencyCC, SaliencyKLD, SaliencySIM
from litseg.nets.rclicks import ClickabilityNet, minmax_normalize
from litseg.rclicks.maps import distance_transform_baseline, uniform_baseline
from litseg.schedules import WarmupCosine
from litseg.seeding import item_rng

MODEL_NAME = "Ours"
# RClicks' schedule: 10% linear warm-up, then per-step cosine to 0.
RCLICKS_SCHEDULE = functools.partial(WarmupCosine, warmup_fraction=0.1)


class ClickabilityModel(LitSegModule):
    """Clickability network + KL training + Table-3 evaluation.

    Args:
        backbone, pretrained, fusion, decoder_channels, backbone_weights, dropout: see
            :class:`litseg.nets.rclicks.ClickabilityNet`.
        lr, optimizer, lr_scheduler, kwargs: :class:`lit_modules.base.LitSegModule` options; the
            defaults are RClicks' (Adam 0.01, no decay, 10% warm-up + per-step cosine to 0).
        eval_draws: bootstrap draws per full_stem for KS / PL1 / WD (100 upstream).
        eval_seed: seed of the per-full_stem bootstrap generator.
        eval_baselines: also score the UD and DT baselines in the test loop.
        ks_variant: the 2-D KS statistic behind KS: ``"rclicks"`` (default; ``ndtest.ks2d2s``
            as in RClicks' Table 3) or ``"textbook"`` (Fasano-Franceschini as in Numerical
            Recipes); see :mod:`litseg.metrics.click_distribution`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        fusion: Literal["stem", "early"] = "stem",
        decoder_channels: int = 128,
        backbone_weights: str | None = None,
        dropout: float = 0.1,
        eval_draws: int = BOOTSTRAP_DRAWS,
        eval_seed: int = 42,
        eval_baselines: bool = True,
        ks_variant: KSVariant = "rclicks",
        lr: float = 0.01,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = RCLICKS_SCHEDULE,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, optimizer=optimizer, lr_scheduler=lr_scheduler, **kwargs)
        self.save_hyperparameters()
        if eval_draws < 1:
            raise ValueError(f"eval_draws must be >= 1, got {eval_draws}")
        if ks_variant not in KS_VARIANTS:
            raise ValueError(f"ks_variant must be one of {KS_VARIANTS}, got {ks_variant!r}")
        self.net = ClickabilityNet(backbone=backbone, pretrained=pretrained, fusion=fusion,
                                   decoder_channels=decoder_channels, backbone_weights=backbone_weights,
                                   dropout=dropout)
        self.eval_draws = eval_draws
        self.eval_seed = eval_seed
        self.eval_baselines = eval_baselines
        self.ks_variant = ks_variant
        self.val_kld, self.val_cc, self.val_sim = SaliencyKLD(), SaliencyCC(), SaliencySIM()
        self.test_rows: list[dict[str, Any]] = []

    def forward(self, image: torch.Tensor, click_maps: torch.Tensor) -> torch.Tensor:
        return self.net(image, click_maps)

    # ------------------------------------------------------------------ fit
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        pred = self(batch["image"], batch["click_maps"])
        loss = kl_loss(pred, batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self(batch["image"], batch["click_maps"])
        target = batch["target"]
        n = pred.shape[0]
        self.log("val/loss", kl_loss(pred, target), batch_size=n, sync_dist=True)
        self.val_kld.update(pred, target)
        self.val_cc.update(pred, target)
        self.val_sim.update(pred, target)
        self.log("val/KLD", self.val_kld, batch_size=n)
        self.log("val/CC", self.val_cc, batch_size=n)
        self.log("val/SIM", self.val_sim, prog_bar=True, batch_size=n)

    # ------------------------------------------------------------------ test: Table 3 metrics
    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "letterbox" not in batch:
            raise RuntimeError("the clickability metrics need ClickMapDataModule's test split (full-resolution "
                               "masks and clicks); evaluate with --split test (it is the val stems of the "
                               "training dataset plus any test_datasets)")
        pred = self(batch["image"], batch["click_maps"])[0, 0].float().cpu()
        full = batch["letterbox"].invert(pred)
        maps = {MODEL_NAME: minmax_normalize(torch.from_numpy(full)[None]).numpy()[0]}
        if self.eval_baselines:
            maps["UD"] = uniform_baseline(batch["error"])
            maps["DT"] = distance_transform_baseline(batch["error"])
        for name, prob_map in maps.items():
            # The same draws for every model of a full_stem (common random numbers).
            rng = item_rng(self.eval_seed, batch["dataset"], batch["full_stem"])
            scores = click_distribution_scores(prob_map, batch["clicks_xy"], batch["gt"], rng, self.eval_draws,
                                               ks_variant=self.ks_variant)
            self.test_rows.append({"model": name, "dataset": batch["dataset"], "full_stem": batch["full_stem"],
                                   "click_type": batch["click_type"], "clicks": len(batch["clicks_xy"])} | scores)

    def on_test_epoch_end(self) -> None:
        rows = gather_rows(self.test_rows)
        order = {MODEL_NAME: 0, "UD": 1, "DT": 2}
        self.test_rows = sorted(rows, key=lambda r: (order.get(r["model"], 3), r["dataset"], r["full_stem"]))
        self.evaluation_rows = aggregate_scores(self.test_rows)
        for row in self.evaluation_rows:
            for metric in ("KS", "PL1", "WD", "NSS", "PDE"):
                self.log(f"test/{row['dataset']}/{row['model']}/{metric}", float(row[metric]), sync_dist=False)

    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """``results.csv`` / ``.md`` (Table 3: KS / PL1 / WD / NSS / PDE per model and dataset) and
        ``results_per_stem.csv`` (one row per model and full_stem); the KS column is named after
        ``ks_variant`` (e.g. ``KS (ndtest ks2d2s)``); with a W&B logger the table is logged as
        ``rclicks/summary``."""
        if not self.evaluation_rows:
            raise RuntimeError("ClickabilityModel: no evaluation results; run the test loop first")
        if self._trainer is not None and not self.trainer.is_global_zero:
            return self.evaluation_rows
        table = click_distribution_table(self.test_rows, Path(output_dir), name="results",
                                         ks_variant=self.ks_variant)
        self.log_report("rclicks", table)
        return table

