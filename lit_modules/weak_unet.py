"""Weakly-supervised semantic segmentation with an EfficientNet-UNet ("EffUnet").

One network, many kinds of cheap annotation: image tags, points, scribbles, boxes, their
combinations with one weight per kind, and dense masks ("full") as the upper bound. The
study asks how much mIoU each kind buys (see configs/weak_unet/ and scripts/weak_label_study.py).

Losses per kind:
    tags       multi-label BCE on the classification head, plus cross-entropy of the decoder
               against CAM pseudo-masks (CAM thresholded; pixels between the thresholds ignored;
               CAMs are detached, so the classifier is trained only by the BCE).
    points     partial cross-entropy (unlabelled pixels ignored); optionally class-balanced
               (``class_balanced: [points]``: every labelled class weighs the same).
    scribbles  partial cross-entropy (optionally class-balanced, likewise).
    boxes      cross-entropy on the box pseudo-masks (inside = class, outside = background).
    full       cross-entropy on the dense trimap classes (border ignored).
    total      sum of lambda_kind * loss_kind (lambda 1.0 unless set).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_modules.base import LitSegModule
from litseg.imaging import IGNORE_INDEX
from litseg.losses import partial_cross_entropy
from litseg.metrics.segmentation import flatten_results, segmentation_metrics
from litseg.nets.weak_unet import EffUNet

SupervisionKind = Literal["tags", "points", "scribbles", "boxes", "full"]
SUPERVISION_KINDS: tuple[str, ...] = ("tags", "points", "scribbles", "boxes", "full")


def cam_pseudo_labels(cam: torch.Tensor, tags: torch.Tensor, fg_threshold: float, bg_threshold: float) -> torch.Tensor:
    """Pseudo-mask from class activation maps restricted to the image's tags.

    ``cam``: ``B x K x H x W`` in [0, 1] for the K foreground classes; ``tags``: ``B x K`` multi-hot.
    A pixel takes the tagged class with the largest CAM if that CAM >= ``fg_threshold``, is
    background if every tagged CAM < ``bg_threshold``, and is ignored in between.
    """
    masked = cam * tags[:, :, None, None]
    score, cls = masked.max(dim=1)
    target = torch.full_like(cls, IGNORE_INDEX)
    target[score < bg_threshold] = 0
    target[score >= fg_threshold] = cls[score >= fg_threshold] + 1
    return target


class WeakLabelUNet(LitSegModule):
    """EffUNet trained from one or more supervision kinds.

    Args:
        num_classes: classes including background (2 binary, 3 species, 38 breed); must match the data.
        supervision: the kinds of labels to train from, e.g. ``[points]`` or ``[tags, points]`` (hybrid).
        lambdas: weight per kind (default 1.0 each); keys must be among ``supervision``.
        encoder_name: smp encoder (EfficientNet family).
        encoder_weights: ``imagenet`` in real use; ``null`` offline / in tests.
        encoder_bn_momentum: BatchNorm momentum of the encoder (see :class:`litseg.nets.weak_unet.EffUNet`;
            ``null`` keeps smp's 0.01, too slow for a few dozen steps from scratch).
        cam_fg_threshold, cam_bg_threshold: CAM pseudo-mask thresholds (tags only).
        cam_loss_weight: weight of the decoder's CAM pseudo-mask loss inside the tags loss.
        class_balanced: kinds whose partial cross-entropy is class-balanced (every labelled class
            weighs the same, see :func:`partial_cross_entropy`), e.g. ``[points]``.
        weight_decay, kwargs: :class:`lit_modules.base.LitSegModule` options (``lr``, ``optimizer``,
            ``lr_scheduler``, ``scheduler_interval``, ``init_weights``); weight decay 1e-4 by default.
    """

    def __init__(
        self,
        num_classes: int = 2,
        supervision: list[SupervisionKind] | None = None,
        lambdas: dict[str, float] | None = None,
        encoder_name: str = "efficientnet-b0",
        encoder_weights: str | None = None,
        encoder_bn_momentum: float | None = 0.1,
        cam_fg_threshold: float = 0.5,
        cam_bg_threshold: float = 0.2,
        cam_loss_weight: float = 1.0,
        class_balanced: list[SupervisionKind] | None = None,
        weight_decay: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(weight_decay=weight_decay, **kwargs)
        supervision = list(supervision or ["full"])
        unknown = [k for k in supervision if k not in SUPERVISION_KINDS]
        if unknown:
            raise ValueError(f"unknown supervision kind(s) {unknown}; choose from {list(SUPERVISION_KINDS)}")
        if len(set(supervision)) != len(supervision):
            raise ValueError(f"supervision lists a kind twice: {supervision}")
        lambdas = dict(lambdas or {})
        stray = [k for k in lambdas if k not in supervision]
        if stray:
            raise ValueError(f"lambdas given for kinds not in supervision {supervision}: {stray}")
        class_balanced = list(class_balanced or [])
        stray = [k for k in class_balanced if k not in supervision or k == "tags"]
        if stray:
            raise ValueError(f"class_balanced lists kinds that are not pixel-supervised kinds of {supervision}: "
                             f"{stray}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.supervision = supervision
        self.lambdas = {k: float(lambdas.get(k, 1.0)) for k in supervision}
        self.cam_fg_threshold = cam_fg_threshold
        self.cam_bg_threshold = cam_bg_threshold
        self.cam_loss_weight = cam_loss_weight
        self.class_balanced = set(class_balanced)
        self.net = EffUNet(num_classes=num_classes, encoder_name=encoder_name, encoder_weights=encoder_weights,
                           encoder_bn_momentum=encoder_bn_momentum)
        if "tags" not in supervision:
            self.net.classifier.requires_grad_(False)  # unused by the loss: DDP needs every trained param used
        self.val_metrics = segmentation_metrics(num_classes, prefix="val/")
        self.test_metrics = segmentation_metrics(num_classes, prefix="test/")

    @property
    def run_name(self) -> str:
        return "+".join(self.supervision)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        n = getattr(dm, "num_classes", None)
        if n is not None and n != self.num_classes:
            raise ValueError(f"model.num_classes={self.num_classes} but the data's label set "
                             f"'{getattr(dm, 'label_set', '?')}' has {n} classes; "
                             f"set --model.init_args.num_classes {n}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)["logits"]

    # ------------------------------------------------------------------ training
    def supervision_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.net(batch["image"], return_cam="tags" in self.supervision)
        logits = out["logits"]
        losses: dict[str, torch.Tensor] = {}
        for kind in self.supervision:
            if kind == "tags":
                bce = F.binary_cross_entropy_with_logits(out["class_logits"], batch["tags"])
                pseudo = cam_pseudo_labels(out["cam"].detach(), batch["tags"], self.cam_fg_threshold,
                                           self.cam_bg_threshold)
                losses[kind] = bce + self.cam_loss_weight * partial_cross_entropy(logits, pseudo)
            else:  # full (dense trimap), points, scribbles, boxes: label maps with 255 = unlabelled
                target = batch["mask"] if kind == "full" else batch[kind]
                losses[kind] = partial_cross_entropy(logits, target, class_balanced=kind in self.class_balanced)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.supervision_losses(batch)
        total = sum(self.lambdas[k] * v for k, v in losses.items())
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k, v in losses.items():
            self.log(f"train/loss_{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return total

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], metrics) -> dict[str, torch.Tensor]:
        preds = self(batch["image"]).argmax(dim=1)
        metrics.update(preds, batch["mask"])
        return {"preds": preds}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.test_metrics)

    def _class_names(self) -> list[str]:
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        return list(names) if names else [f"class{i}" for i in range(self.num_classes)]

    def _log_epoch(self, metrics) -> dict[str, float]:
        # Metric states are synced across ranks inside compute(); the values are global already.
        flat = flatten_results(metrics.compute(), self._class_names())
        metrics.reset()
        for key, value in flat.items():
            self.log(key, value, sync_dist=False, prog_bar=key.endswith("/mIoU"))
        return flat

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        flat = self._log_epoch(self.test_metrics)
        row: dict[str, Any] = {"supervision": self.run_name}
        row |= {k.removeprefix("test/"): v for k, v in flat.items()}
        self.evaluation_rows = [row]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Label maps at each image's original size (logits resized bilinearly, then argmax)."""
        logits = self(batch["image"])
        preds = []
        for i, (h, w) in enumerate(batch["orig_size"].tolist()):
            up = F.interpolate(logits[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
            preds.append(up.argmax(dim=1)[0].to(torch.uint8).cpu())
        return {"stem": list(batch["stem"]), "pred": preds}
