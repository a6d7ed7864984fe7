"""SAM 2 / SAM 2.1 (Ravi et al., 2024) image predictor driven click by click as in RClicks.

How the model is driven (rclicks.md §4.7, ``isegm/model/is_sam2_model.py``): all clicks so
far as point prompts (click order, label 1/0, (x, y) in image pixels),
``multimask_output=False``, the previous low-resolution logits fed back as ``mask_input``;
the output is ``sigmoid`` of the upsampled logits, ``threshold = 0.5``.

As for SAM (``litseg/interactive/predictors/sam.py``) the image is encoded once per image, not at every
click as upstream (``encode_every_click=True`` reproduces that), and the previous mask is
dropped only on the first click unless ``mask_reset="upstream_two_slots"``.

The model is built by :func:`litseg.nets.sam.build_sam2` (lazy ``sam2`` import, safe checkpoint
loading; see its packaging notes). ``SAM2ImagePredictor`` hard-codes the feature sizes of a
1024-px input, so they are set from ``model.image_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from litseg.interactive.predictors.base import ClickPredictor, MaskReset, clicks_to_points, drops_previous_mask
from litseg.interactive.types import Click
from litseg.nets.sam import build_sam2, load_sam_state_dict


class Sam2ClickPredictor(ClickPredictor):
    """SAM2 / SAM2.1 as an :class:`~litseg.interactive.types.InteractivePredictor`.

    Args:
        config: a ``sam2`` package config, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``.
        checkpoint: weights file (e.g. ``sam2.1_hiera_tiny.pt``). Required unless ``model``
            is given.
        hydra_overrides: extra Hydra overrides for the config (e.g. ``++model.image_size=512``).
        device: where the model runs.
        model: an already-built ``SAM2Base`` (tests, fine-tuned models).
        mask_reset: when the previous low-res logits are dropped.
        encode_every_click: re-encode the image at every click like upstream (slow; same masks).
    """

    threshold = 0.5

    def __init__(
        self,
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        checkpoint: str | None = None,
        hydra_overrides: list[str] | None = None,
        device: str = "cpu",
        model: Any = None,
        mask_reset: MaskReset = "first_click",
        encode_every_click: bool = False,
    ) -> None:
        super().__init__()
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        if model is None:
            if checkpoint is None:
                raise ValueError("Sam2ClickPredictor needs a checkpoint (random SAM2 weights give meaningless masks)")
            model = build_sam2(config, checkpoint, hydra_overrides or [], device)
        else:
            if checkpoint is not None:
                load_sam_state_dict(model, checkpoint)
            model = model.to(torch.device(device)).eval()
        drops_previous_mask([], mask_reset)  # validates the policy name now
        self.model = model
        self.sam2_predictor = SAM2ImagePredictor(model)
        # Backbone feature maps are at strides 4, 8 and 16 of the square model input.
        size = int(model.image_size)
        self.sam2_predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self.mask_reset = mask_reset
        self.encode_every_click = encode_every_click
        self._prev_low_res: np.ndarray | None = None  # 1 x h x w logits of the previous prediction

    def _encode(self, image: np.ndarray) -> None:
        self.sam2_predictor.set_image(image)

    def _reset_prompts(self) -> None:
        self._prev_low_res = None

    @torch.no_grad()
    def _predict(self, clicks: list[Click]) -> np.ndarray:
        if self.encode_every_click:
            self._encode(self._image)
        if drops_previous_mask(clicks, self.mask_reset):
            self._prev_low_res = None
        coords, labels = clicks_to_points(clicks, self.image_hw)
        logits, _, low_res = self.sam2_predictor.predict(
            point_coords=coords,
            point_labels=labels,
            mask_input=self._prev_low_res,
            multimask_output=False,
            return_logits=True,
        )
        self._prev_low_res = low_res
        return torch.sigmoid(torch.from_numpy(logits[0])).numpy()
