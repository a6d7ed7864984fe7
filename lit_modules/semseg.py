"""SemSeg: open-set instance segmentation with class-semantics modulation (Yang et al., RA-L 2024).

The network (``litseg/nets/semseg.py``, heads in ``litseg/nets/semseg_heads.py``) is Openset R-CNN on
torchvision parts: an OLN classification-free RPN (no NMS after it), a class-agnostic box head with
IoU prediction, objectness = sqrt(IoU x centerness), a 256-d embedding with learnable class
prototypes (hinge losses, cosine distance), a softmax classifier for the known labels and a mask
head whose last layer is a 1x1 convolution generated from each instance's own embedding. A
detection whose embedding lies farther than ``unknown_threshold`` (0.085) from every prototype is
"unknown" (COCO category 1000).

Training: the 7 loss terms of the note's table, plain sum; SGD with warm-up and step decay per
optimiser update. The learning rate is given for the upstream global batch (``base_batch_size``, 4
images) and scaled linearly with the run's global batch (batch size x ranks x accumulation).

Evaluation (``OpenSetCocoMetric``, exact under DDP): AP_k, AR_unk@10/30/100, AP_unk and AOSE for segm
and bbox, computed with pycocotools arrays. ``evaluate.py`` writes the model-zoo-shaped table, the
detections as ``coco_instances_results.json`` (unknown = category 1000) and overlays with known and
unknown detections in different colours; ``evaluate.py --detections FILE`` scores an existing results
file on the same ground truth without running a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from lit_modules.base import LitSegModule
from litseg.io import ConfigError, write_json, write_table
from litseg.metrics.open_set import OpenSetCocoMetric, evaluate_open_set, read_detections
from litseg.nets.semseg import SemSegNet
from litseg.nets.semseg_heads import PostprocessConfig
from litseg.readers.coco import encode_mask
from litseg.semseg.open_set import UNKNOWN_ID

LOSS_TERMS = ("loss_rpn_loc", "loss_rpn_ctr", "loss_box_reg", "loss_iou", "loss_dml", "loss_cls", "loss_mask")
# The README's model-zoo columns (upstream README of SemSeg), then the extras.
TABLE_COLUMNS = ("AOSE", "AP_k", "AR_unk@10", "AR_unk@30", "AR_unk@100", "AP_unk", "AP50_k", "AP75_k")
KNOWN_COLOUR = (30, 144, 255)
UNKNOWN_COLOUR = (255, 140, 0)


class SemSeg(LitSegModule):
    """Open-set instance segmentation (SemSeg) on torchvision detection parts.

    Args:
        num_known: known classes (20 VOC classes on COCO, 28 on GraspNet-OS); must equal the data's list.
        backbone_name: torchvision ResNet of the FPN backbone (``resnet50``; ``resnet18`` for CPU demos).
        backbone_weights: a local ImageNet state dict for the ResNet (nothing downloads); null = random.
        min_size, max_size: GeneralizedRCNNTransform sizes (training picks a short side from
            ``min_size`` per image, evaluation uses the last; 640..800 / 1333 upstream).
        dml_weight, cls_weight: loss weights of the embedding and classifier terms (2 / 1 COCO, 3 / 2 GraspNet).
        class_agnostic_mask: the CA-Mask ablation (a plain 1-channel mask predictor, no modulation).
        unknown_threshold: cosine distance to the nearest prototype above which a detection is unknown.
        postprocess: other :class:`litseg.nets.semseg_heads.PostprocessConfig` fields (thresholds, NMS, top-k).
        base_batch_size: the global batch ``lr`` is given for; the run scales it linearly.
        iou_types: evaluated IoU types (``segm``, ``bbox``).
        num_overlays: test images drawn with their detections by ``evaluate.py`` (and logged to W&B).
        lr, weight_decay, kwargs: :class:`lit_modules.base.LitSegModule` (SGD momentum 0.9, lr 0.005,
            wd 1e-4 upstream; the recipes add warm-up and step decay per step).
    """

    # What is evaluated, not what is trained: a checkpoint may be evaluated with other values.
    evaluation_args: ClassVar[tuple[str, ...]] = ("unknown_threshold", "postprocess", "iou_types", "num_overlays",
                                                  "min_size", "max_size")

    def __init__(
        self,
        num_known: int = 20,
        backbone_name: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"] = "resnet50",
        backbone_weights: str | None = None,
        min_size: list[int] | None = None,
        max_size: int = 1333,
        dml_weight: float = 2.0,
        cls_weight: float = 1.0,
        class_agnostic_mask: bool = False,
        unknown_threshold: float = 0.085,
        postprocess: dict[str, float] | None = None,
        base_batch_size: int = 4,
        iou_types: list[str] | None = None,
        num_overlays: int = 4,
        lr: float = 0.005,
        weight_decay: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        if num_known < 1:
            raise ValueError(f"num_known must be positive, got {num_known}")
        if base_batch_size < 1:
            raise ValueError(f"base_batch_size must be positive, got {base_batch_size}")
        self.iou_types = tuple(iou_types or ("segm", "bbox"))
        if not set(self.iou_types) <= {"segm", "bbox"} or not self.iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of segm, bbox; got {list(self.iou_types)}")
        self.save_hyperparameters()
        post = PostprocessConfig(**({"unknown_threshold": unknown_threshold} | (postprocess or {})))
        self.net = SemSegNet(num_known=num_known, backbone_name=backbone_name, backbone_weights=backbone_weights,
                             min_size=tuple(min_size or (640, 672, 704, 736, 768, 800)), max_size=max_size,
                             dml_weight=dml_weight, cls_weight=cls_weight, class_agnostic_mask=class_agnostic_mask,
                             postprocess=post)
        self.num_known = num_known
        self.base_batch_size = base_batch_size
        self.num_overlays = num_overlays
        self.known_ids: list[int] = []
        self.known_names: list[str] = []
        self.metric: OpenSetCocoMetric | None = None
        self._distances: list[torch.Tensor] = []
        self._overlays: list[tuple[str, np.ndarray]] = []
        self.detections: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "known_ids"):
            return
        if dm.num_known != self.num_known:
            raise ConfigError("model.init_args.num_known",
                              f"is {self.num_known} but data.init_args.known_ids lists {dm.num_known} classes")
        self.known_ids, self.known_names = list(dm.known_ids), list(dm.known_names)

    def _new_metric(self, split: str) -> None:
        dm = self.trainer.datamodule
        self.metric = OpenSetCocoMetric(dm.eval_gt(split), self.known_ids, iou_types=self.iou_types).to(self.device)
        self._distances, self._overlays = [], []

    def global_batch(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = int(getattr(dm, "batch_size", self.base_batch_size))
        return per_device * int(self.trainer.world_size) * int(self.trainer.accumulate_grad_batches)

    def param_groups(self) -> list[dict[str, Any]]:
        # One group, everything decayed: the FrozenBatchNorm of the torchvision backbone has no
        # parameters (detectron2 decays biases too). lr scaled linearly with the global batch.
        scale = self.global_batch() / self.base_batch_size if self._trainer is not None else 1.0
        return [{"params": self.trainable_parameters(), "lr_scale": scale}]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[list[torch.Tensor], list[dict[str, Any]]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.net(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
        loss = sum(losses[k] for k in LOSS_TERMS)
        n = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k in LOSS_TERMS:
            self.log(f"train/{k}", losses[k].detach(), batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation
    def to_coco_rows(self, output: dict[str, torch.Tensor], image_id: int) -> list[dict[str, Any]]:
        """One image's detections as COCO results rows (known index -> its COCO id, unknown -> 1000)."""
        rows = []
        boxes = output["boxes"].detach().cpu().double()
        masks = output["masks"][:, 0].detach().cpu() > 0.5 if "masks" in output else None
        for i, (box, score, label) in enumerate(zip(boxes, output["scores"].tolist(), output["labels"].tolist(),
                                                    strict=True)):
            x0, y0, x1, y1 = box.tolist()
            row = {"image_id": int(image_id), "category_id": UNKNOWN_ID if label < 0 else self.known_ids[label],
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
            if masks is not None:
                row["segmentation"] = encode_mask(masks[i].numpy())
            rows.append(row)
        return rows

    def _evaluate(self, batch: tuple[list[torch.Tensor], list[dict[str, Any]]]) -> None:
        images, targets = batch
        outputs = self.net(images)
        assert self.metric is not None
        for image, target, output in zip(images, targets, outputs, strict=True):
            self.metric.update(int(target["image_id"]), self.to_coco_rows(output, int(target["image_id"])))
            if "dmin" in output:
                self._distances.append(output["dmin"].detach().cpu())
            if len(self._overlays) < self.num_overlays and self.global_rank == 0:
                self._overlays.append((str(int(target["image_id"])), draw_detections(image, output)))

    def on_validation_epoch_start(self) -> None:
        self._new_metric("val")

    def on_test_epoch_start(self) -> None:
        self._new_metric("test")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch)

    def _end(self, stage: str) -> dict[str, float]:
        assert self.metric is not None
        scores = {k: float(v) for k, v in self.metric.compute().items()}
        for key, value in scores.items():
            self.log(f"{stage}/{key}", value, sync_dist=False)
        self._log_distance_histogram(stage)
        return scores

    def _log_distance_histogram(self, stage: str) -> None:
        """The nearest-prototype distance of every kept detection: where the unknown threshold cuts."""
        if not self._distances:
            return
        d = torch.cat(self._distances).numpy()
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if type(logger).__name__ == "WandbLogger":
                import wandb

                experiment.log({f"{stage}/prototype_distance": wandb.Histogram(d)})
        self.distance_histogram = np.histogram(d, bins=np.linspace(0.0, 2.0, 81))

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_epoch_end(self) -> None:
        scores = self._end("test")
        assert self.metric is not None
        self.detections = self.metric.detections()
        self.evaluation_rows = zoo_rows(scores, self.iou_types)

    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """``results.csv`` / ``.md`` (the model-zoo table, one row per IoU type),
        ``coco_instances_results.json``, ``prototype_distance.csv`` and ``overlays/<image_id>.png``."""
        if not self.evaluation_rows:
            raise RuntimeError("SemSeg: no evaluation results; run the test loop first")
        output_dir = Path(output_dir)
        write_table(self.evaluation_rows, output_dir / "results.csv", output_dir / "results.md", float_format="{:.1f}")
        write_json(output_dir / "coco_instances_results.json", self.detections)
        if getattr(self, "distance_histogram", None) is not None:
            counts, edges = self.distance_histogram
            write_table([{"from": float(a), "to": float(b), "detections": int(c)}
                         for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)],
                        output_dir / "prototype_distance.csv")
        images = self.write_pictures(output_dir / "overlays", self._overlays, "overlay")
        self.log_report("semseg", self.evaluation_rows, images)
        return self.evaluation_rows

    def score_detections(self, path: str | Path, datamodule: Any, split: str = "test") -> list[dict[str, Any]]:
        """Score an existing COCO results file (any method's) on the open-set ground truth of ``split``."""
        datamodule.setup("test" if split == "test" else "validate")
        if datamodule.num_known != self.num_known:
            raise ConfigError("model.init_args.num_known",
                              f"is {self.num_known} but data.init_args.known_ids lists {datamodule.num_known} classes")
        self.known_ids, self.known_names = list(datamodule.known_ids), list(datamodule.known_names)
        gt = datamodule.eval_gt(split)
        detections = read_detections(path)
        image_ids = {int(im["id"]) for im in gt["images"]}
        strays = sorted({int(d["image_id"]) for d in detections} - image_ids)
        if strays:
            from litseg.io import DataError

            raise DataError(path, f"{len(strays)} image id(s) not in the evaluated split, e.g. {strays[:5]}")
        return zoo_rows(evaluate_open_set(gt, detections, self.known_ids, iou_types=self.iou_types), self.iou_types)


def zoo_rows(scores: dict[str, float], iou_types: Sequence[str]) -> list[dict[str, Any]]:
    """The upstream README's table: AOSE (a count), AP_k, AR_unk@10/30/100, AP_unk (percent), per IoU type."""
    rows = []
    for t in iou_types:
        row: dict[str, Any] = {"iou_type": t}
        for col in TABLE_COLUMNS:
            value = scores.get(f"{t}/{col}", float("nan"))
            row[col] = int(value) if col == "AOSE" and value == value else 100.0 * value if col != "AOSE" else value
        rows.append(row)
    return rows


def draw_detections(image: torch.Tensor, output: dict[str, torch.Tensor], score_threshold: float = 0.3) -> np.ndarray:
    """The image (3 x H x W in [0, 1]) with its detections: known in blue, unknown in orange."""
    import cv2

    picture = (image.detach().cpu().permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8).copy()
    keep = output["scores"].detach().cpu() >= score_threshold
    masks = output["masks"][:, 0].detach().cpu()[keep] > 0.5 if "masks" in output else None
    for i, (box, label) in enumerate(zip(output["boxes"].detach().cpu()[keep], output["labels"].cpu()[keep],
                                         strict=True)):
        colour = UNKNOWN_COLOUR if int(label) < 0 else KNOWN_COLOUR
        if masks is not None:
            m = masks[i].numpy()
            picture[m] = (0.5 * picture[m] + 0.5 * np.array(colour)).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in box.tolist())
        cv2.rectangle(picture, (x0, y0), (x1, y1), colour, 2)
    return picture
