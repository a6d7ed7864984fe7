"""SimpleClick (ViT-B / L / H, ``cocolvis_vit_{base,large,huge}.pth``) and CFR-ICL (same
architecture, other weights) driven click by click as RClicks evaluates them.

How the model is driven (``scripts/evaluate_model_simpleclick.py`` of RClicks, rclicks.md §4.5:
``get_predictor(model, 'NoBRS', ...)`` with ``zoom_in_params={'skip_clicks': -1, 'target_size':
(448, 448)}``, 672 for DAVIS, after ``interpolate_pos_embed_inference(model.backbone, target_size)``):

* **Image and clicks are encoded together.** The click maps (positive / negative disks of
  ``norm_radius`` = 5 px, plus the previous mask) get their own patch embedding whose tokens are
  added to the image tokens *before* the ViT, so ``set_image`` only stores the image and every
  ``predict`` runs the whole ViT (+ neck + head), twice with flip TTA. There is no image
  embedding to reuse, unlike the SAM family's encode-once. On an H200 / CPU that is the full
  ViT-B/L/H cost at 448 x 448 per click.
* **Input size**: the ViT has a fixed token grid. The position embedding is interpolated
  (bicubic) from the checkpoint's training size (``backbone_params['img_size']``, 448) to
  ``input_size`` (448; 672 for DAVIS) once, at construction.
* **Zoom-In from the first click** (``skip_clicks = -1``): at the first click the crop is the whole
  image; later the previous prediction ``> 0.5`` plus the positive clicks give a box expanded
  x1.4 (at least 200 px), kept until a positive click leaves it or its IoU with the new box drops
  under 0.5. The crop (image + previous mask) is resized to exactly ``input_size`` (aspect ratio
  not kept: a tuple target), the output resized back and pasted into zeros. ``zoom_in=False``
  resizes the whole image to ``input_size`` at every click (upstream has no such mode: without
  Zoom-In its model only accepts images of exactly the training size).
* **Previous mask** (``with_prev_mask``): the previous click's full-image probabilities, zeros at
  the first click of an instance; ``reset`` clears it.
* **Flip TTA** on (``get_predictor``'s default ``with_flip=True``): logits of the input and its
  mirror averaged, then ``sigmoid``.
* ``threshold = thresh`` = 0.49 (the RITM-family ``--thresh``, rclicks.md item 11); the Zoom-In
  box uses 0.5 (RClicks' ``get_predictor`` does not pass ``prob_thresh`` to ``ZoomIn``).

The Zoom-In transform, the network click layout and the flip handling are shared with the RITM
predictor (:mod:`litseg.interactive.predictors.ritm`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from litseg.interactive.predictors.ritm import IsegmClickPredictor, NetClick, ZoomIn
from litseg.interactive.types import Click
from litseg.nets.simpleclick import PlainVitModel, build_simpleclick, interpolate_pos_embed

__all__ = ["SimpleClickPredictor"]


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class SimpleClickPredictor(IsegmClickPredictor):
    """SimpleClick / CFR-ICL as an :class:`~litseg.interactive.types.InteractivePredictor`.

    Args:
        checkpoint: an isegm checkpoint (``cocolvis_vit_base.pth`` ..., CFR-ICL files), read with
            ``weights_only=True`` (:func:`litseg.nets.simpleclick.load_simpleclick_checkpoint`);
            the network is rebuilt from its stored config. Required unless ``model`` is given.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        thresh: binarisation threshold (0.49 as RClicks / RITM's ``--thresh``).
        zoom_in: Zoom-In from the first click (see module docstring).
        input_size: network input (and Zoom-In target) size, int or ``(h, w)``; 448 (672 for DAVIS).
            Each side is rounded down to a multiple of the patch size.
        with_flip: horizontal-flip TTA (upstream default on).
        expansion_ratio / min_crop_size / recompute_thresh_iou / zoom_prob_thresh: Zoom-In settings
            (upstream defaults 1.4 / 200 / 0.5 / 0.5).
        net_clicks_limit: keep only the first N clicks for the click maps (upstream default: all).
        model: an already-built :class:`~litseg.nets.simpleclick.PlainVitModel` (tests).
    """

    def __init__(self, checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu", thresh: float = 0.49,
                 zoom_in: bool = True, input_size: int | Sequence[int] = 448, with_flip: bool = True,
                 expansion_ratio: float = 1.4, min_crop_size: int = 200, recompute_thresh_iou: float = 0.5,
                 zoom_prob_thresh: float = 0.5, net_clicks_limit: int | None = None,
                 model: PlainVitModel | None = None) -> None:
        super().__init__()
        if model is None:
            if checkpoint is None:
                raise ValueError("SimpleClickPredictor needs a checkpoint (random weights give meaningless masks)")
            model = build_simpleclick(checkpoint)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        ph, pw = self.model.backbone.patch_embed.patch_size
        h, w = _size_pair(input_size)
        self.input_size = ((h // ph) * ph, (w // pw) * pw)
        interpolate_pos_embed(self.model.backbone, self.input_size)
        self.threshold = float(thresh)
        self.with_flip = with_flip
        self.net_clicks_limit = net_clicks_limit
        self.zoom_in = (ZoomIn(target_size=self.input_size, skip_clicks=-1, expansion_ratio=expansion_ratio,
                               min_crop_size=min_crop_size, recompute_thresh_iou=recompute_thresh_iou,
                               prob_thresh=zoom_prob_thresh) if zoom_in else None)
        self._image_nd: torch.Tensor | None = None
        self._prev: torch.Tensor | None = None

    def _forward(self, clicks: list[Click]) -> torch.Tensor:
        assert self._image_nd is not None and self._prev is not None
        x = torch.cat((self._image_nd, self._prev), dim=1)  # the prev mask follows the crop
        height, width = x.shape[2:]
        if self.zoom_in is not None:
            x, net_clicks = self.zoom_in.transform(x, clicks)
        else:  # whole image stretched to the network size
            sy, sx = self.input_size[0] / height, self.input_size[1] / width
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=True)
            net_clicks = [NetClick(c.y * sy, c.x * sx, c.is_positive, c.index) for c in clicks]
        x, points = self._flipped(x, net_clicks)
        probs = torch.sigmoid(self._unflipped(self.model(x[:, :3], x[:, 3:], points)))
        if self.zoom_in is not None:
            return self.zoom_in.inv_transform(probs)
        return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=True)
