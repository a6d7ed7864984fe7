"""SAOM: SAM fine-tuned for whole objects with nearest-neighbour point-grid prompts.

Khan et al., "Segment Any Object Model (SAOM)", ICIP 2024 (arXiv 2403.10780); SAOMv1 (32 x 32
grid), SAOMv2 (64 x 64) and PanoSAM (320 x 64) are this one module with another ``nx`` / ``ny``.

One training step = one image (SAOM code: ``finetuneSAM.py`` reads ``batch[0]``; here every image
of the batch is used and the loss is their mean). For each ground-truth instance of the image:

1. a PerSAM-F location prior (``litseg.saom.prompts.location_prior``) snapped to the nearest point
   of the ``nx x ny`` lattice: the prompt that SAM's everything mode would give that object;
2. SAM decodes 3 masks for that single positive point; the one with the highest *predicted* IoU is
   supervised at the original resolution;
3. loss = dice (summed over instances) + sigmoid focal (mean over pixels, summed over instances) +
   cross-entropy of the IoU-token classifier (mean), all weights 1 (SAOM code: ``misc.py``,
   ``finetuneSAM.py``; no IoU-prediction loss).

Instances whose mask covers no cell of the 64 x 64 embedding grid are dropped from the loss (as
SAOM does) and count as empty predictions in evaluation; their number is logged
(``*/instances_without_prior``). Several instances may snap to one lattice point: each keeps its
own target (as SAOM). An image with no usable instance contributes a zero loss that still touches
every trained parameter, so DDP ranks stay in step.

Evaluation is SAOM's GT-prompted protocol (``finetuneSAM.py --eval_only`` + ``eval_miou.py``): one
snapped prompt per ground-truth instance, top-predicted-IoU mask, logits > 0, the class of the
ground-truth instance; per-class IoU / Acc pooled over the split (``PooledClassIoU``), averaged
over the evaluated classes. With ``sam_baseline`` the same prompts run through the original SAM
prompt encoder / decoder (the encoder is shared and frozen), so the paper's SAM-vs-SAOM table
comes from one run. With ``everything_mode`` (test only) SAM's automatic mask generator runs over
the same lattice with SAOM's thresholds, every mask carrying its own point's class; the painted
semantic map is scored against the ground-truth instances as ``everything/mIoU`` (pixels of no
ground-truth instance are not scored).

DDP: Lightning synchronises gradients across ranks (effective batch = ranks x images). The SAOM
release wrapped the model in DDP but called it around ``forward``, so its 4 GPUs trained 4
unsynchronised replicas and saved rank 0's: a 1-GPU run over a random quarter of the data per
epoch. To reproduce that schedule, train on one device with ``limit_train_batches: 0.25``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import CatMetric

from lit_modules.base import LitSegModule
from litseg.distributed import gather_rows
from litseg.imaging import IGNORE_INDEX, overlay
from litseg.io import ConfigError, write_json, write_png, write_table
from litseg.losses import dice_loss, sigmoid_focal_loss
from litseg.metrics.masks import PooledClassIoU
from litseg.nets.sam import SAM_MODEL_TYPES, build_sam, load_sam_state_dict, tiny_sam
from litseg.nets.saom import (
    EverythingConfig,
    SAOMNet,
    best_by_predicted_iou,
    everything_masks,
    gt_semantic_map,
    semantic_map,
)
from litseg.saom.prompts import grid_lattice, inside_mask, location_prior, snap_to_lattice

MODEL_TYPES = (*SAM_MODEL_TYPES, "tiny")


class SAOM(LitSegModule):
    """SAM fine-tuning with nearest-neighbour point-grid prompts (SAOMv1 / SAOMv2 / PanoSAM).

    Args:
        num_classes: classifier outputs; must equal the data's class list (checked at setup).
        model_type: SAM image encoder ``vit_b`` (SAOM's choice), ``vit_l``, ``vit_h``; ``tiny`` is a
            random ~80k-parameter SAM for CPU demos and tests (``tiny_img_size`` input).
        checkpoint: upstream SAM weights (``sam_vit_b_01ec64.pth``) or a fine-tuned SAM state dict;
            null = random weights (tests only).
        nx, ny: lattice points along the width / height: 32 x 32 SAOMv1, 64 x 64 SAOMv2, 320 x 64
            PanoSAM. The same lattice serves training, prompted evaluation and everything mode.
        legacy_1024_lattice: the released code's frame (``int(grid * 1024)`` in original pixels
            whatever the image size) instead of the lattice scaled to the image (default).
        embedding_cache: keep each image's embedding and prompts (CPU memory; ~4 MB an image for
            ViT models) for the run: the encoder is frozen and there is no augmentation.
        sam_baseline: also evaluate the original prompt encoder / decoder on the same prompts.
        everything_mode: run everything mode at test time (slow: 3 masks per lattice point).
        everything: everything-mode thresholds (:class:`litseg.nets.saom.EverythingConfig` fields).
        num_overlays: everything-mode overlays written by ``evaluate.py`` (and logged to W&B).
        lr, weight_decay, kwargs: :class:`lit_modules.base.LitSegModule` (AdamW lr 1e-3, wd 0.01 as
            SAOM; the recipes add eps 1e-4 and the per-epoch cosine).
    """

    # What is evaluated, not what is trained: a checkpoint may be evaluated with other values.
    evaluation_args: ClassVar[tuple[str, ...]] = ("embedding_cache", "sam_baseline", "everything_mode", "everything",
                                                  "num_overlays")

    def __init__(
        self,
        num_classes: int,
        model_type: str = "vit_b",
        checkpoint: str | None = None,
        nx: int = 32,
        ny: int = 32,
        legacy_1024_lattice: bool = False,
        embedding_cache: bool = True,
        sam_baseline: bool = True,
        everything_mode: bool = False,
        everything: dict[str, float] | None = None,
        num_overlays: int = 4,
        tiny_img_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        if nx < 1 or ny < 1:
            raise ValueError(f"nx and ny must be positive, got {nx} x {ny}")
        self.save_hyperparameters()
        if model_type == "tiny":
            sam = tiny_sam(img_size=tiny_img_size)
            if checkpoint is not None:
                load_sam_state_dict(sam, checkpoint)
        else:  # a missing checkpoint stops here, naming the file, before anything is built
            sam = build_sam(model_type, checkpoint)
        self.net = SAOMNet(sam, num_classes).train()  # SAM builders return eval mode; the encoder stays in it
        self.num_classes = num_classes
        self.nx, self.ny, self.legacy_1024_lattice = nx, ny, legacy_1024_lattice
        self.embedding_cache = embedding_cache
        self.everything_mode = everything_mode
        self.everything_cfg = EverythingConfig(**(everything or {}))
        self.num_overlays = num_overlays
        # Not registered as submodules: not in the state dict, not trained; moved with the model.
        self._baseline = list(self.net.frozen_copy_of_prompting()) if sam_baseline else None
        self._cache: dict[str, tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor, int]] = {}
        self.class_names: list[str] = [str(i) for i in range(num_classes)]
        self.eval_classes: list[int] = list(range(num_classes))
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{model}": PooledClassIoU(num_classes)
            for stage in ("val", "test") for model in ("saom", "sam")})
        self.instances = torch.nn.ModuleDict({stage: CatMetric() for stage in ("val", "test")})  # GT class per instance
        self.everything_metric = PooledClassIoU(num_classes + 1, ignore_index=IGNORE_INDEX)
        self._overlays: list[tuple[str, np.ndarray]] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "classes"):
            return
        classes = list(dm.classes)
        if len(classes) != self.num_classes:
            raise ConfigError("model.init_args.num_classes",
                              f"is {self.num_classes} but the data has {len(classes)} classes ({', '.join(classes[:5])}"
                              f"{', ...' if len(classes) > 5 else ''})")
        self.class_names = classes
        self.eval_classes = list(dm.eval_class_indices)

    def _move_baseline(self) -> None:
        if self._baseline is not None:
            self._baseline = [part.to(self.device) for part in self._baseline]

    def on_validation_start(self) -> None:
        self._move_baseline()

    def on_test_start(self) -> None:
        self._move_baseline()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["saom_classes"] = list(self.class_names)  # the export carries them to the classifier file

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.net.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------------ prompts
    def prepare(self, item: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor, int]:
        """Embedding, resized size, prompts (K x 2, input frame), kept-instance mask (N,) and the
        number of priors outside their own mask, for one image; cached per ``key``."""
        key = item["key"]
        if self.embedding_cache and key in self._cache:
            features, input_size, points, keep, outside = self._cache[key]
            return features.to(self.device), input_size, points.to(self.device), keep.to(self.device), outside
        image, masks = item["image"], item["masks"]
        height, width = image.shape[:2]
        features, input_size = self.net.encode(image)
        priors, keep = location_prior(features[0], masks.to(features.device), input_size, self.net.img_size)
        keep = keep.to(torch.bool)
        kept = priors[keep].cpu().double().numpy()
        lattice = grid_lattice(self.nx, self.ny, height, width, legacy_1024_lattice=self.legacy_1024_lattice)
        snapped, _ = snap_to_lattice(kept, lattice)
        outside = int((~inside_mask(kept, masks[keep.cpu()].cpu().numpy())).sum()) if len(kept) else 0
        points = self.net.to_input_frame(torch.as_tensor(snapped, dtype=torch.float32, device=self.device),
                                         (height, width))
        if self.embedding_cache:
            self._cache[key] = (features.detach().cpu(), input_size, points.cpu(), keep.cpu(), outside)
        return features, input_size, points, keep, outside

    # ------------------------------------------------------------------ training
    def _image_loss(self, item: dict[str, Any]) -> tuple[torch.Tensor | None, dict[str, float]]:
        features, input_size, points, keep, outside = self.prepare(item)
        stats = {"instances": float(keep.numel()), "instances_without_prior": float((~keep).sum()),
                 "priors_outside_mask": float(outside)}
        if not bool(keep.any()):
            return None, stats
        size = tuple(item["image"].shape[:2])
        decoded = self.net.decode(features, points)
        low, _ = best_by_predicted_iou(decoded)
        logits = self.net.postprocess(low, input_size, size)[:, 0]
        target = item["masks"].to(self.device)[keep].float()
        dice = dice_loss(logits, target, reduction="sum")
        focal = sigmoid_focal_loss(logits, target, reduction="none").flatten(1).mean(1).sum()
        ce = F.cross_entropy(decoded.class_logits, item["labels"].to(self.device)[keep])
        stats |= {"dice": float(dice.detach()), "focal": float(focal.detach()), "ce": float(ce.detach())}
        return dice + focal + ce, stats

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        losses, totals = [], {}
        for item in batch:
            loss, stats = self._image_loss(item)
            if loss is not None:
                losses.append(loss)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        if losses:
            loss = torch.stack(losses).mean()
        else:  # zero, but every trained parameter is in the graph (DDP expects a gradient for each)
            loss = sum(p.sum() for p in self.net.parameters() if p.requires_grad) * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        for k, v in totals.items():
            self.log(f"train/{k}", v, batch_size=len(batch), reduce_fx="sum" if "instance" in k or "prior" in k
                     else "mean")
        self.log("train/images_without_instances", float(len(batch) - len(losses)), reduce_fx="sum",
                 batch_size=len(batch))
        return loss

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_instances(self, item: dict[str, Any], baseline: bool = False) -> dict[str, torch.Tensor]:
        """SAOM's GT-prompted protocol on one image: a binary mask (N x H x W, empty for dropped
        instances), the predicted class (-1 for dropped) and the prompt (x, y) of every instance."""
        features, input_size, points, keep, _ = self.prepare(item)
        size = tuple(item["image"].shape[:2])
        n = keep.numel()
        masks = torch.zeros(n, *size, dtype=torch.bool, device=self.device)
        classes = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        if bool(keep.any()):
            decoded = self.net.decode(features, points, parts=tuple(self._baseline) if baseline else None)
            low, _ = best_by_predicted_iou(decoded)
            masks[keep] = self.net.postprocess(low, input_size, size)[:, 0] > self.net.sam.mask_threshold
            if decoded.class_logits is not None:
                classes[keep] = decoded.class_logits.argmax(1)
        return {"masks": masks, "classes": classes}

    def _evaluate(self, batch: list[dict[str, Any]], stage: str) -> None:
        for item in batch:
            if item["masks"].shape[0] == 0:
                continue
            labels = item["labels"].to(self.device)
            gt = item["masks"].to(self.device)
            self.instances[stage].update(labels.float())
            self.metrics[f"{stage}_saom"].update(self.predict_instances(item)["masks"], gt, labels)
            if self._baseline is not None:
                self.metrics[f"{stage}_sam"].update(self.predict_instances(item, baseline=True)["masks"], gt, labels)
            if stage == "test" and self.everything_mode:
                self._everything(item)

    def _everything(self, item: dict[str, Any]) -> None:
        features, input_size, _, _, _ = self.prepare(item)
        height, width = item["image"].shape[:2]
        lattice = grid_lattice(self.nx, self.ny, height, width, legacy_1024_lattice=False)
        out = everything_masks(self.net, features, input_size, (height, width), lattice, self.everything_cfg)
        pred = semantic_map(out["masks"], out["iou"], out["classes"], (height, width), background=self.num_classes)
        gt = gt_semantic_map(item["masks"], item["labels"], (height, width), ignore=IGNORE_INDEX)
        self.everything_metric.update(pred[None].to(self.device), gt[None].to(self.device))
        if len(self._overlays) < self.num_overlays and self.global_rank == 0:
            # overlay() leaves label 0 unpainted: shift classes to 1..C, pixels of no mask to 0.
            labels = np.where(pred.numpy() == self.num_classes, 0, pred.numpy() + 1)
            self._overlays.append((item["key"], overlay(item["image"].cpu().numpy(), labels)))

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _scores(self, stage: str, model: str) -> dict[str, Any]:
        result = self.metrics[f"{stage}_{model}"].compute()
        iou, acc = result["IoU"][self.eval_classes], result["Acc"][self.eval_classes]
        return {"IoU": iou, "Acc": acc, "mIoU": torch.nanmean(iou), "mAcc": torch.nanmean(acc)}

    def _end(self, stage: str) -> dict[str, dict[str, Any]]:
        models = ["saom"] + (["sam"] if self._baseline is not None else [])
        scores = {m: self._scores(stage, m) for m in models}
        for m in models:
            prefix = f"{stage}/" if m == "saom" else f"{stage}/sam_"
            self.log(f"{prefix}mIoU", scores[m]["mIoU"].float(), sync_dist=False)
            self.log(f"{prefix}mAcc", scores[m]["mAcc"].float(), sync_dist=False)
        for m in models:
            self.metrics[f"{stage}_{m}"].reset()
        return scores

    def on_validation_epoch_end(self) -> None:
        self._end("val")
        self.instances["val"].reset()

    def on_test_epoch_end(self) -> None:
        labels = self.instances["test"].compute() if self.instances["test"].update_count else torch.zeros(0)
        counts = torch.bincount(labels.reshape(-1).long().cpu(), minlength=self.num_classes).tolist()
        scores = self._end("test")
        rows = []
        for j, c in enumerate(self.eval_classes):
            if counts[c] == 0:  # not in this split: not scored (SAOM averages over the classes present)
                continue
            row: dict[str, Any] = {"class": self.class_names[c], "instances": int(counts[c])}
            for m, label in (("saom", "SAOM"), ("sam", "SAM")):
                if m in scores:
                    row[f"{label} IoU %"] = 100 * float(scores[m]["IoU"][j])
                    row[f"{label} Acc %"] = 100 * float(scores[m]["Acc"][j])
            rows.append(row)
        self.per_class_rows = rows
        summary = []
        for m, label in (("saom", "SAOM"), ("sam", "SAM")):
            if m in scores:
                summary.append({"model": label, "mIoU %": 100 * float(scores[m]["mIoU"]),
                                "mAcc %": 100 * float(scores[m]["mAcc"]),
                                "classes": int((~torch.isnan(scores[m]["IoU"])).sum()),
                                "instances": int(sum(counts[c] for c in self.eval_classes))})
        if self.everything_mode:
            ev = self.everything_metric.compute()
            miou = torch.nanmean(ev["IoU"][self.eval_classes])
            macc = torch.nanmean(ev["Acc"][self.eval_classes])
            summary[0] |= {"everything mIoU %": 100 * float(miou), "everything mAcc %": 100 * float(macc)}
            self.log("test/everything_mIoU", miou.float(), sync_dist=False)
            self.everything_metric.reset()
        self.instances["test"].reset()
        self.evaluation_rows = summary

    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """``summary.csv`` / ``.md`` (SAOM vs SAM, mIoU / mAcc over the evaluated classes, everything
        mode), ``per_class.csv`` / ``.md`` and everything-mode ``overlays/<key>.png``."""
        if not self.evaluation_rows:
            raise RuntimeError("SAOM: no evaluation results; run the test loop first")
        output_dir = Path(output_dir)
        write_table(self.evaluation_rows, output_dir / "summary.csv", output_dir / "summary.md")
        write_table(self.per_class_rows, output_dir / "per_class.csv", output_dir / "per_class.md")
        images = self.write_pictures(output_dir / "overlays", [(Path(k).stem, p) for k, p in self._overlays],
                                     "everything")
        self.log_report("saom", self.evaluation_rows, images)
        self.log_report("saom_per_class", self.per_class_rows)
        return self.evaluation_rows

    # ------------------------------------------------------------------ predictions
    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            pred = self.predict_instances(item)
            out.append({"key": item["key"], "mask_names": list(item["mask_names"]),
                        "labels": item["labels"].cpu(), "gt": item["masks"].cpu(),
                        "masks": pred["masks"].cpu(), "classes": pred["classes"].cpu()})
        return out

    def write_predictions(self, outputs: list[list[dict[str, Any]]], folder: Path, split: str = "test") -> int:
        """SAOM's evaluation output (``finetuneSAM.py --eval_only``): ``pred/<image>-<mask>.png`` (red
        255 on black, original size) for every prompted GT instance, that instance's GT mask under the
        same name in ``gt/``, and ``DSmetadata-pred<split>.json`` in the metadata schema
        (``entity_indices`` = GT class, ``predicted_indices`` = the classifier's, -1 = no prompt)."""
        folder = Path(folder)
        records = []
        for batch in outputs:
            for item in batch:
                stem = Path(item["key"]).stem
                names = []
                for name, pred, gt in zip(item["mask_names"], item["masks"], item["gt"], strict=True):
                    file = f"{stem}-{name}.png" if not name.startswith(stem) else f"{name}.png"
                    for sub, mask in (("pred", pred), ("gt", gt)):
                        red = np.zeros((*mask.shape, 3), np.uint8)
                        red[..., 0] = mask.numpy().astype(np.uint8) * 255
                        write_png(folder / sub / file, red)
                    names.append(f"/pred/{file}")
                records.append({"image_name": item["key"], "entity_masks": names,
                                "entity_indices": item["labels"].tolist(),
                                "predicted_indices": item["classes"].tolist()})
        records = sorted(gather_rows(records), key=lambda r: r["image_name"])
        if self._trainer is None or self.trainer.is_global_zero:
            write_json(folder / f"DSmetadata-pred{split}.json",
                       {"entity classes": list(self.class_names), f"{split}_data": records})
        return sum(len(r["entity_masks"]) for r in records)
