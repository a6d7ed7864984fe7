"""RITM (Sofiiuk et al. 2021) HRNet ITER-M models driven click by click as RITM's evaluation does.

The network is rebuilt from the checkpoint's own stored ``config`` and ``state_dict``
(:mod:`litseg.nets.hrnet_ritm`): ``coco_lvis_h18s_itermask.pth`` / ``coco_lvis_h18_itermask.pth``
/ ``coco_lvis_h32_itermask.pth`` / ``sbd_h18_itermask.pth`` and the non-ITER-M HRNet baselines.

How the model is driven (``isegm/inference/predictors/base.py::BasePredictor`` with
``get_predictor(net, 'NoBRS', ...)``, rclicks.md §4.5):

* **Image and clicks are encoded together.** ``set_image`` only stores the image; every
  ``predict`` runs the whole HRNet on the image (or its Zoom-In crop) + the click maps + the
  previous mask. There is no per-image embedding to reuse, so the cost per click is a full
  forward pass (two with flip TTA), unlike the SAM family's encode-once.
* Click maps as trained: positive and negative disks of radius ``norm_radius`` (5 px for the
  ITER-M models) in the network's input frame (after Zoom-In), clicks padded to the same count.
* **Previous mask**: ITER-M models (``with_prev_mask``) receive the previous click's probability
  map (after the inverse transforms, i.e. full image) as a 4th input channel; zeros at the
  first click of an instance. ``reset`` clears it.
* **Zoom-In** (``zoom_in=True``, RITM's ``cvpr`` mode): from the second click (``skip_clicks=1``)
  the previous prediction ``> 0.5`` plus the positive clicks give a box, expanded x1.4
  (at least 200 px), clamped; it is reused until a positive click leaves it or the new box's IoU
  with it drops under 0.5. The crop (image + previous mask) is resized bilinearly so its longer
  side is ``target_size`` (400; 600 for DAVIS), the output pasted back into zeros.
  ``zoom_in={"skip_clicks": -1}`` crops from the first click (RClicks' TETRIS setting);
  ``zoom_in={"target_size": [h, w]}`` is RITM's ``fixed<h>`` crop; ``zoom_in=False`` runs the full image.
* **Flip TTA** (``with_flip=True``, the upstream ``get_predictor`` default): the input and its
  horizontal mirror run as a batch of two; logits are averaged, then ``sigmoid``.
* ``brs="NoBRS"`` only; ``threshold = thresh`` (0.49, ``evaluate_model.py --thresh``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from litseg.checkpoint import load_checkpoint
from litseg.interactive.predictors.base import ClickPredictor
from litseg.interactive.types import Click
from litseg.nets.hrnet_ritm import RITMHRNetModel, build_ritm_model

BRS_MODES_UPSTREAM = ("NoBRS", "RGB-BRS", "DistMap-BRS", "f-BRS-A", "f-BRS-B", "f-BRS-C")


@dataclass(frozen=True)
class NetClick:
    """A click in the network's input frame (float coordinates after Zoom-In / flip)."""

    y: float
    x: float
    is_positive: bool
    index: int


# ----------------------------------------------------------------------------- Zoom-In geometry

Box = tuple[int, int, int, int]  # rmin, rmax, cmin, cmax (inclusive)


def bbox_from_mask(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(box: Box, ratio: float, min_size: float | None = None) -> Box:
    rmin, rmax, cmin, cmax = box
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    height, width = ratio * (rmax - rmin + 1), ratio * (cmax - cmin + 1)
    if min_size is not None:
        height, width = max(height, min_size), max(width, min_size)
    return (int(round(rc - 0.5 * height)), int(round(rc + 0.5 * height)),
            int(round(cc - 0.5 * width)), int(round(cc + 0.5 * width)))


def box_iou(a: Box, b: Box) -> float:
    def seg(s1: tuple[int, int], s2: tuple[int, int]) -> float:
        inter = max(0, min(s1[1], s2[1]) - max(s1[0], s2[0]) + 1)
        return inter / max(1e-6, max(s1[1], s2[1]) - min(s1[0], s2[0]) + 1)

    return seg(a[:2], b[:2]) * seg(a[2:], b[2:])


def object_roi(pred_mask: np.ndarray, clicks: Sequence[Click], expansion_ratio: float, min_crop_size: float) -> Box:
    """Box of the predicted mask plus the positive clicks, expanded and clamped to the image."""
    mask = pred_mask.copy()
    for c in clicks:
        if c.is_positive:
            mask[int(c.y), int(c.x)] = True
    rmin, rmax, cmin, cmax = expand_bbox(bbox_from_mask(mask), expansion_ratio, min_crop_size)
    h, w = mask.shape
    return max(0, rmin), min(h - 1, rmax), max(0, cmin), min(w - 1, cmax)


class ZoomIn:
    """RITM's ``ZoomIn`` transform (same defaults), for one image and batch size 1."""

    def __init__(self, target_size: int | Sequence[int] = 400, skip_clicks: int = 1, expansion_ratio: float = 1.4,
                 min_crop_size: int = 200, recompute_thresh_iou: float = 0.5, prob_thresh: float = 0.5) -> None:
        self.target_size = tuple(target_size) if isinstance(target_size, Sequence) else int(target_size)
        self.skip_clicks = skip_clicks
        self.expansion_ratio = expansion_ratio
        self.min_crop_size = min_crop_size
        self.recompute_thresh_iou = recompute_thresh_iou
        self.prob_thresh = prob_thresh
        self.reset()

    def reset(self) -> None:
        self.roi: Box | None = None
        self.prev_probs: np.ndarray | None = None  # full-image probabilities of the last prediction
        self.input_hw: tuple[int, int] | None = None

    def crop_size(self, box: Box) -> tuple[int, int]:
        height, width = box[1] - box[0] + 1, box[3] - box[2] + 1
        if isinstance(self.target_size, tuple):
            return self.target_size
        scale = self.target_size / max(height, width)
        return int(round(height * scale)), int(round(width * scale))

    def transform(self, image_nd: torch.Tensor, clicks: list[Click]) -> tuple[torch.Tensor, list[NetClick]]:
        as_net = [NetClick(float(c.y), float(c.x), c.is_positive, c.index) for c in clicks]
        if len(clicks) <= self.skip_clicks:
            return image_nd, as_net
        self.input_hw = (image_nd.shape[2], image_nd.shape[3])
        current = None
        if self.prev_probs is not None:
            pred_mask = self.prev_probs > self.prob_thresh
            if pred_mask.any():
                current = object_roi(pred_mask, clicks, self.expansion_ratio, self.min_crop_size)
        if current is None:
            if self.skip_clicks >= 0:
                return image_nd, as_net
            current = (0, image_nd.shape[2] - 1, 0, image_nd.shape[3] - 1)
        if (self.roi is None or not _clicks_inside(self.roi, clicks)
                or box_iou(current, self.roi) < self.recompute_thresh_iou):
            self.roi = current
        rmin, rmax, cmin, cmax = self.roi
        size = self.crop_size(self.roi)
        crop = F.interpolate(image_nd[:, :, rmin:rmax + 1, cmin:cmax + 1], size=size, mode="bilinear",
                             align_corners=True)
        out = [NetClick(size[0] * (c.y - rmin) / (rmax - rmin + 1), size[1] * (c.x - cmin) / (cmax - cmin + 1),
                        c.is_positive, c.index) for c in clicks]
        return crop, out

    def inv_transform(self, probs: torch.Tensor) -> torch.Tensor:
        if self.roi is None:
            self.prev_probs = probs[0, 0].cpu().numpy()
            return probs
        rmin, rmax, cmin, cmax = self.roi
        probs = F.interpolate(probs, size=(rmax - rmin + 1, cmax - cmin + 1), mode="bilinear", align_corners=True)
        if self.prev_probs is not None:
            full = probs.new_zeros((1, 1, *self.prev_probs.shape))
            full[:, :, rmin:rmax + 1, cmin:cmax + 1] = probs
            probs = full
        self.prev_probs = probs[0, 0].cpu().numpy()
        return probs

    def needs_recalculation(self) -> bool:
        """Upstream ``check_possible_recalculation`` (only with ``skip_clicks <= 0``)."""
        if self.prev_probs is None or self.roi is not None or self.skip_clicks > 0:
            return False
        pred_mask = self.prev_probs > self.prob_thresh
        if pred_mask.any():
            possible = object_roi(pred_mask, [], self.expansion_ratio, self.min_crop_size)
            assert self.input_hw is not None
            image_box = (0, self.input_hw[0] - 1, 0, self.input_hw[1] - 1)
            return box_iou(possible, image_box) < 0.5
        return False


def _clicks_inside(box: Box, clicks: Sequence[Click]) -> bool:
    return all(box[0] <= c.y < box[1] and box[2] <= c.x < box[3] for c in clicks if c.is_positive)


def points_tensor(clicks_lists: Sequence[Sequence[NetClick]], net_clicks_limit: int | None = None) -> torch.Tensor:
    """``B x 2N x 3`` network points: positives then negatives as ``(y, x, index)``, padded with -1."""
    n = max(max(sum(c.is_positive for c in cl), sum(not c.is_positive for c in cl)) for cl in clicks_lists)
    if net_clicks_limit is not None:
        n = min(net_clicks_limit, n)
    n = max(1, n)
    rows = []
    for cl in clicks_lists:
        cl = list(cl)[:net_clicks_limit]
        pos = [(c.y, c.x, c.index) for c in cl if c.is_positive]
        neg = [(c.y, c.x, c.index) for c in cl if not c.is_positive]
        rows.append(pos + [(-1, -1, -1)] * (n - len(pos)) + neg + [(-1, -1, -1)] * (n - len(neg)))
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- predictor

def load_ritm_model(checkpoint: str | os.PathLike[str]) -> RITMHRNetModel:
    """Load an official RITM checkpoint (``weights_only=True``) and rebuild its network, weights checked."""
    return build_ritm_model(load_checkpoint(checkpoint), checkpoint)


class IsegmClickPredictor(ClickPredictor):
    """The evaluation loop of the isegm code base (RITM, SimpleClick: isegm/inference/predictors/base.py).

    Nothing is encoded once per image: image, click maps and the previous probabilities go through the
    whole network at every click. Zoom-In may ask for a second pass on a recomputed crop; flip TTA
    averages the logits of the image and its mirror. Subclasses set ``model``, ``device``, ``zoom_in``,
    ``with_flip``, ``net_clicks_limit`` and write :meth:`_forward`.
    """

    zoom_in: ZoomIn | None
    with_flip: bool
    net_clicks_limit: int | None
    device: torch.device
    _image_nd: torch.Tensor | None = None
    _prev: torch.Tensor | None = None  # 1 x 1 x H x W probabilities of the last click

    def _encode(self, image: np.ndarray) -> None:
        self._image_nd = (torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0).contiguous()

    def _reset_prompts(self) -> None:
        if self.zoom_in is not None:
            self.zoom_in.reset()
        self._prev = None if self._image_nd is None else self._image_nd.new_zeros((1, 1, *self._image_nd.shape[2:]))

    @torch.no_grad()
    def _predict(self, clicks: list[Click]) -> np.ndarray:
        clicks = sorted(clicks, key=lambda c: c.index)
        probs = self._forward(clicks)
        if self.zoom_in is not None and self.zoom_in.needs_recalculation():  # never with skip_clicks=-1
            probs = self._forward(clicks)
        self._prev = probs
        return probs[0, 0].clamp(0, 1).float().cpu().numpy()

    def _forward(self, clicks: list[Click]) -> torch.Tensor:
        raise NotImplementedError

    def _flipped(self, x: torch.Tensor, net_clicks: list[NetClick]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network batch (with its mirror under flip TTA) and its click tensor."""
        lists = [net_clicks]
        if self.with_flip:
            width = x.shape[3]
            x = torch.cat([x, torch.flip(x, dims=[3])], dim=0)
            lists.append([NetClick(c.y, width - c.x - 1, c.is_positive, c.index) for c in net_clicks])
        return x, points_tensor(lists, self.net_clicks_limit).to(self.device)

    def _unflipped(self, logits: torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3])) if self.with_flip else logits


class RITMClickPredictor(IsegmClickPredictor):
    """RITM HRNet (ITER-M) as an :class:`~litseg.interactive.types.InteractivePredictor`.

    Args:
        checkpoint: official RITM file (``{'config': ..., 'state_dict': ...}``); the architecture is
            rebuilt from its stored config. Required unless ``model`` is given.
        device: ``cpu`` / ``cuda`` / ``cuda:1``.
        thresh: binarisation threshold (``probs > thresh``), upstream ``--thresh`` 0.49.
        zoom_in: ``True`` (RITM defaults: target 400, skip 1 click, x1.4, min crop 200, recompute
            IoU 0.5), ``False``, or a dict overriding those (``target_size``, ``skip_clicks``,
            ``expansion_ratio``, ``min_crop_size``, ``recompute_thresh_iou``, ``prob_thresh``).
        with_flip: horizontal-flip TTA (upstream default on).
        brs: only ``"NoBRS"`` (the BRS variants optimise inputs/features per click; not implemented).
        net_clicks_limit: feed only the first N clicks to the network (upstream ``--clicks-limit``).
        model: an already-built :class:`RITMHRNetModel` (tests).
    """

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", thresh: float = 0.49,
                 zoom_in: bool | Mapping[str, Any] = True, with_flip: bool = True, brs: str = "NoBRS",
                 net_clicks_limit: int | None = None, model: RITMHRNetModel | None = None) -> None:
        super().__init__()
        if brs != "NoBRS":
            known = ", ".join(BRS_MODES_UPSTREAM)
            raise ValueError(f"RITM brs={brs!r} is not implemented; only 'NoBRS' (upstream modes: {known})")
        if model is None:
            if checkpoint is None:
                raise ValueError("RITMClickPredictor needs a checkpoint (e.g. coco_lvis_h18_itermask.pth)")
            model = load_ritm_model(checkpoint)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.threshold = float(thresh)
        if zoom_in is True:
            self.zoom_in: ZoomIn | None = ZoomIn()
        elif zoom_in is False or zoom_in is None:
            self.zoom_in = None
        else:
            self.zoom_in = ZoomIn(**dict(zoom_in))
        self.with_flip = with_flip
        self.net_clicks_limit = net_clicks_limit
        self._image_nd: torch.Tensor | None = None
        self._prev: torch.Tensor | None = None  # 1 x 1 x H x W probabilities of the last click

    def _forward(self, clicks: list[Click]) -> torch.Tensor:
        assert self._image_nd is not None and self._prev is not None
        x = self._image_nd
        if self.model.with_prev_mask:
            x = torch.cat((x, self._prev), dim=1)
        if self.zoom_in is not None:
            x, net_clicks = self.zoom_in.transform(x, clicks)
        else:
            net_clicks = [NetClick(float(c.y), float(c.x), c.is_positive, c.index) for c in clicks]
        x, points = self._flipped(x, net_clicks)
        logits = self.model(x, points)["instances"]
        logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)
        probs = torch.sigmoid(self._unflipped(logits))
        if self.zoom_in is not None:
            probs = self.zoom_in.inv_transform(probs)
        return probs
