"""Segment Anything (Kirillov et al., ICCV 2023) driven click by click as in RClicks / RITM.

How the model is driven (rclicks.md §4.6, ``isegm/model/is_sam_model.py``):

* every click so far becomes a point prompt, in click order, label 1 (positive) / 0
  (negative), as (x, y) scaled into the encoder frame by ``SamPredictor.transform``;
* ``multimask_output=True``; the mask with the highest predicted IoU is kept;
* its low-resolution logits are fed back as ``mask_input`` with the next click;
* the output is ``sigmoid`` of those logits upsampled to the image; ``threshold = 0.5``.

Differences from the upstream wrapper, both deliberate:

* **Encode once.** The image embedding is computed in ``set_image`` and reused for every
  click of every instance. Upstream re-encodes the unchanged image at every click, which
  gives the same masks at ~20x the encoder cost (``encode_every_click=True`` reproduces it,
  for timing comparisons; see ``benchmarks/interactive_speed.py``).
* **Previous-mask reset.** Upstream drops the mask prompt whenever its padded point tensor
  has two slots, i.e. on the first click *and* when the second click is negative. We drop
  it only on the first click of an instance (``mask_reset="first_click"``);
  ``mask_reset="upstream_two_slots"`` reproduces the upstream behaviour.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from litseg.interactive.predictors.base import ClickPredictor, MaskReset, clicks_to_points, drops_previous_mask
from litseg.interactive.types import Click
from litseg.nets.sam import build_sam, load_sam_state_dict


class SamClickPredictor(ClickPredictor):
    """SAM as an :class:`~litseg.interactive.types.InteractivePredictor`.

    Args:
        model_type: upstream architecture (``vit_b`` / ``vit_l`` / ``vit_h``).
        checkpoint: weights file (e.g. ``sam_vit_b_01ec64.pth``, or a fine-tuned state dict),
            loaded with ``weights_only=True`` (:func:`litseg.nets.sam.build_sam`). Required
            unless ``model`` is given.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
        model: an already-built ``Sam`` (tests, fine-tuned models); ``checkpoint`` then
            optionally loads weights into it.
        mask_reset: when the previous low-res logits are dropped (see module docstring).
        encode_every_click: re-encode the image at every click like upstream (slow; same masks).
    """

    threshold = 0.5

    def __init__(
        self,
        model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b",
        checkpoint: str | None = None,
        device: str = "cpu",
        model: Sam | None = None,
        mask_reset: MaskReset = "first_click",
        encode_every_click: bool = False,
    ) -> None:
        super().__init__()
        if model is None:
            if checkpoint is None:
                raise ValueError("SamClickPredictor needs a checkpoint (random SAM weights give meaningless masks)")
            model = build_sam(model_type, checkpoint)
        elif checkpoint is not None:
            load_sam_state_dict(model, checkpoint)
        drops_previous_mask([], mask_reset)  # validates the policy name now, not at the first click
        self.model = model.to(torch.device(device)).eval()
        self.sam_predictor = SamPredictor(self.model)
        self.mask_reset = mask_reset
        self.encode_every_click = encode_every_click
        self._prev_low_res: torch.Tensor | None = None  # 1 x 1 x h x w logits of the chosen mask

    def _encode(self, image: np.ndarray) -> None:
        self.sam_predictor.set_image(image, image_format="RGB")

    def _reset_prompts(self) -> None:
        self._prev_low_res = None

    @torch.no_grad()
    def _predict(self, clicks: list[Click]) -> np.ndarray:
        sp = self.sam_predictor
        if self.encode_every_click:
            self._encode(self._image)
        if drops_previous_mask(clicks, self.mask_reset):
            self._prev_low_res = None
        coords, labels = clicks_to_points(clicks, self.image_hw)
        device = self.model.device
        coords_t = torch.as_tensor(sp.transform.apply_coords(coords, sp.original_size), dtype=torch.float,
                                   device=device)[None]
        labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)[None]
        # The same prompt-encoder / decoder calls as SamPredictor.predict_torch, but only the
        # chosen mask is upsampled to the image (a third of the postprocessing work).
        sparse, dense = self.model.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=self._prev_low_res)
        chosen = self._decode(sparse, dense)
        self._prev_low_res = chosen
        logits = self.model.postprocess_masks(chosen, sp.input_size, sp.original_size)
        return torch.sigmoid(logits[0, 0]).float().cpu().numpy()

    def _decode(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The mask decoder on the prompts: the 1 x 1 x h x w low-res logits of the highest-IoU mask of 3."""
        low_res, iou_pred = self.model.mask_decoder(
            image_embeddings=self.sam_predictor.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        best = int(iou_pred[0].argmax())
        return low_res[:, best : best + 1]
