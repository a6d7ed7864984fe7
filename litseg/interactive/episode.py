"""The interactive-segmentation evaluation loop (RITM ``evaluate_sample``, as run by RClicks).

Per instance: start from an empty prediction; for ``k = 1..max_clicks`` the simulated
user places one click from the current errors, the predictor answers with a probability
map given *all* clicks so far, ``pred = probs > predictor.threshold`` and the IoU (ignore
pixels excluded) is recorded. There is no early stop (RClicks' ``--iou-analysis``): every
curve has ``max_clicks`` points. If the user stops because no un-clicked error pixel is
left (see :mod:`litseg.interactive.clicker`), the remaining points repeat the last IoU with no
click and no predictor call.

Each image is encoded once (``predictor.set_image``); ``predictor.reset()`` starts each
instance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from litseg.interactive.clicker import ClickStrategy, error_state
from litseg.interactive.types import Click, InteractivePredictor
from litseg.metrics.masks import np_mask_iou as mask_iou  # (gt, pred, ignore) -> float, exact (eps 0)


@dataclass(frozen=True)
class ClickRecord:
    """One point of an instance's IoU curve."""

    k: int  # 1-based click number
    click: Click | None  # None: the user had stopped; the prediction is unchanged
    iou: float
    seconds: float  # wall time of predictor.predict for this click (0.0 without a click)


def run_episode(
    predictor: InteractivePredictor,
    image: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray,
    strategy: ClickStrategy,
    rng: np.random.Generator,
    max_clicks: int = 20,
) -> list[ClickRecord]:
    """Run one instance episode; ``predictor.set_image(image)`` must have been called.

    Args:
        image: the ``H x W x 3`` uint8 image (handed to the strategy, not re-encoded).
        gt, ignore: boolean ``H x W`` instance mask and ignore mask.
        rng: the per-image generator the strategy may draw from.
    Returns:
        ``max_clicks`` records, ``k = 1..max_clicks``.
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    gt = gt.astype(bool)
    ignore = ignore.astype(bool)
    height, width = gt.shape
    predictor.reset()
    strategy.start_instance(image, gt, ignore, rng)

    pred = np.zeros_like(gt)
    not_clicked = np.ones_like(gt)
    clicks: list[Click] = []
    iou = mask_iou(gt, pred, ignore)
    stopped = False
    records: list[ClickRecord] = []
    for index in range(max_clicks):
        click = None
        if not stopped:
            click = strategy.next_click(error_state(gt, pred, ignore, not_clicked), index)
            stopped = click is None
        if click is None:
            records.append(ClickRecord(k=index + 1, click=None, iou=iou, seconds=0.0))
            continue
        if not (0 <= click.y < height and 0 <= click.x < width):
            raise ValueError(
                f"{type(strategy).__name__} clicked at (y={click.y}, x={click.x}), outside the {width}x{height} image"
            )
        clicks.append(click)
        not_clicked[click.y, click.x] = False
        start = time.perf_counter()
        probs = predictor.predict(list(clicks))
        seconds = time.perf_counter() - start
        if probs.shape != gt.shape:
            raise ValueError(
                f"{type(predictor).__name__}.predict returned shape {probs.shape}, expected {gt.shape}"
            )
        pred = probs > predictor.threshold
        iou = mask_iou(gt, pred, ignore)
        records.append(ClickRecord(k=index + 1, click=click, iou=iou, seconds=seconds))
    return records


def run_image(
    predictor: InteractivePredictor,
    image: np.ndarray,
    instances: Sequence[np.ndarray],
    ignore: np.ndarray,
    strategy: ClickStrategy,
    rng: np.random.Generator,
    max_clicks: int = 20,
) -> list[list[ClickRecord]]:
    """Encode ``image`` once and run an episode per instance mask, in order."""
    predictor.set_image(image)
    return [run_episode(predictor, image, gt, ignore, strategy, rng, max_clicks) for gt in instances]


def iou_curve(records: Sequence[ClickRecord]) -> np.ndarray:
    """The IoU per click of an episode as a float64 vector."""
    return np.array([r.iou for r in records], dtype=np.float64)
