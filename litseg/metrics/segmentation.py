"""Semantic-segmentation metrics as benchmarks define them (dataset-level accumulation).

mIoU = per-class intersection and union accumulated over the whole split, then the mean
over classes (mmseg / Cityscapes convention), i.e. torchmetrics
``MulticlassJaccardIndex(average="macro", ignore_index=255)``. Not the per-image mean of
``torchmetrics.segmentation.MeanIoU``, which gives different numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from litseg.imaging import IGNORE_INDEX


def segmentation_metrics(num_classes: int, prefix: str, ignore_index: int = IGNORE_INDEX) -> MetricCollection:
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy, all ignoring ``ignore_index``.

    Update with ``preds`` (``B x H x W`` class ids) and ``target`` (``B x H x W``).
    """
    common = {"num_classes": num_classes, "ignore_index": ignore_index}
    return MetricCollection(
        {
            "mIoU": MulticlassJaccardIndex(average="macro", **common),
            "IoU": MulticlassJaccardIndex(average="none", **common),
            "pixel_acc": MulticlassAccuracy(average="micro", multidim_average="global", **common),
            "mAcc": MulticlassAccuracy(average="macro", multidim_average="global", **common),
        },
        prefix=prefix,
    )


def flatten_results(results: dict[str, torch.Tensor], class_names: Sequence[str]) -> dict[str, float]:
    """Turn the per-class ``IoU`` vector into ``<prefix>IoU/<class>`` scalars for logging and tables."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        if value.ndim == 0:
            flat[key] = float(value)
        else:
            for name, v in zip(class_names, value.tolist(), strict=True):
                flat[f"{key}/{name}"] = float(v)
    return flat
