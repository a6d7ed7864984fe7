"""SAOM's network: a SAM whose decoder's IoU token also feeds a class head (SAOM, ICIP 2024).

SAOM code: ``per_segment_anything/samwrapperpano.py`` (``SamWrapper``) and its modified
``modeling/mask_decoder.py``, which returns the IoU-token output ``hs[:, 0]`` so that a
``Linear(256 -> C)`` classifier can read it. Here the token is captured with a forward pre-hook on
the installed package's ``mask_decoder.iou_prediction_head`` (its input *is* that token), so
segment_anything stays unedited and gradients flow through it.

What trains (SAOM, "what is frozen / trained"): the mask decoder (its IoU head gets no gradient:
no IoU loss, and the argmax selection is not differentiable), the prompt encoder's learned
point / not-a-point / no-mask embeddings, and the classifier. The image encoder is frozen, so an
image's embedding never changes and can be cached.

Preprocessing is SAM's own (``segment_anything/utils/transforms.py`` ``ResizeLongestSide`` and
``Sam.preprocess``: bilinear resize of the long side to the encoder size, SAM mean / std, zero
padding bottom / right), as the interactive benchmark's SAM predictor does; masks come back at
the original resolution through ``Sam.postprocess_masks``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score, remove_small_regions
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torchvision.ops import batched_nms

__all__ = ["Decoded", "EverythingConfig", "SAOMNet", "TRAINED_PROMPT_EMBEDDINGS", "everything_masks",
           "semantic_map"]

# The prompt-encoder parameters that SAOM's loss reaches (point labels, padding point, dense "no mask").
TRAINED_PROMPT_EMBEDDINGS = ("point_embeddings", "not_a_point_embed", "no_mask_embed")


@dataclass
class Decoded:
    """One decoder call for N single-point prompts: ``low_res`` N x 3 x h x w mask logits,
    ``iou`` N x 3 predicted IoU, ``class_logits`` N x C (None without a classifier)."""

    low_res: torch.Tensor
    iou: torch.Tensor
    class_logits: torch.Tensor | None


class SAOMNet(nn.Module):
    """SAM + ``Linear(transformer_dim -> num_classes)`` on the IoU token; encoder frozen."""

    def __init__(self, sam: Sam, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.sam = sam
        self.classifier = nn.Linear(sam.mask_decoder.transformer_dim, num_classes)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        for p in sam.image_encoder.parameters():
            p.requires_grad_(False)
        for name, p in sam.prompt_encoder.named_parameters():
            p.requires_grad_(name.startswith(TRAINED_PROMPT_EMBEDDINGS))
        self._token: torch.Tensor | None = None
        sam.mask_decoder.iou_prediction_head.register_forward_pre_hook(self._capture_token)

    def _capture_token(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._token = inputs[0]  # hs[:, 0]: N x transformer_dim

    def train(self, mode: bool = True) -> SAOMNet:
        super().train(mode)
        self.sam.image_encoder.eval()  # frozen: never in training mode (no dropout / stat updates)
        return self

    @property
    def img_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    def frozen_copy_of_prompting(self) -> tuple[nn.Module, nn.Module]:
        """The prompt encoder and mask decoder as they are now, frozen: the SAM baseline of the
        same protocol (SAOM compares fine-tuned against original SAM weights)."""
        parts = copy.deepcopy(self.sam.prompt_encoder), copy.deepcopy(self.sam.mask_decoder)
        for part in parts:
            part.requires_grad_(False)
            part.eval()
            part._forward_pre_hooks.clear()
            for m in part.modules():
                m._forward_pre_hooks.clear()
        return parts

    # ------------------------------------------------------------------ image side
    def preprocess(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 H x W x 3 -> 1 x 3 x S x S SAM input and the resized size (h', w')."""
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 image, got {tuple(image.shape)}")
        device = self.sam.pixel_mean.device
        x = image.to(device).permute(2, 0, 1)[None].float()
        x = self.transform.apply_image_torch(x)
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        return self.sam.preprocess(x), input_size

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image embedding 1 x C x h x w of a uint8 H x W x 3 image, and its resized size."""
        x, input_size = self.preprocess(image)
        return self.sam.image_encoder(x), input_size

    def to_input_frame(self, points_xy: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Original-pixel (x, y) -> the encoder's input frame, in float (SAM's ``apply_coords``)."""
        return self.transform.apply_coords_torch(points_xy.float(), original_size)

    # ------------------------------------------------------------------ prompt side
    def decode(self, features: torch.Tensor, points: torch.Tensor,
               parts: tuple[nn.Module, nn.Module] | None = None) -> Decoded:
        """N positive single-point prompts (``points`` N x 2, input frame) on one image's
        ``features``: 3 masks each (``multimask_output=True``), no box, no mask input."""
        prompt_encoder, mask_decoder = parts if parts is not None else (self.sam.prompt_encoder, self.sam.mask_decoder)
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
        sparse, dense = prompt_encoder(points=(points[:, None, :].to(features.dtype), labels), boxes=None, masks=None)
        self._token = None
        low_res, iou = mask_decoder(image_embeddings=features, image_pe=prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
        class_logits = None
        if parts is None:
            assert self._token is not None, "the IoU-token hook did not fire"
            class_logits = self.classifier(self._token.float())
        self._token = None
        return Decoded(low_res, iou, class_logits)

    def postprocess(self, low_res: torch.Tensor, input_size: tuple[int, int],
                    original_size: tuple[int, int]) -> torch.Tensor:
        """Low-resolution logits N x K x h x w -> N x K x H x W at the original size."""
        return self.sam.postprocess_masks(low_res.float(), input_size, original_size)


def best_by_predicted_iou(decoded: Decoded) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask with the highest *predicted* IoU of each prompt (SAOM supervises this one, not
    SAM's min-loss choice): low-res logits N x 1 x h x w and the chosen index (no gradient)."""
    k = decoded.iou.detach().argmax(1)
    rows = torch.arange(k.numel(), device=k.device)
    return decoded.low_res[rows, k][:, None], k


# ----------------------------------------------------------------------------- everything mode
@dataclass(frozen=True)
class EverythingConfig:
    """SAM's automatic-mask-generator settings as SAOM sets them (SAOM code:
    ``per_segment_anything/automatic_mask_generator.py``; upstream defaults 0.88 / 0.7 / 0)."""

    points_per_batch: int = 64
    pred_iou_thresh: float = 0.3
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.3
    min_mask_region_area: int = 150


@torch.no_grad()
def everything_masks(net: SAOMNet, features: torch.Tensor, input_size: tuple[int, int],
                     original_size: tuple[int, int], lattice_xy: np.ndarray,
                     cfg: EverythingConfig = EverythingConfig()) -> dict[str, torch.Tensor]:
    """SAM's everything mode over ``lattice_xy`` (original-pixel points), one crop layer, each mask
    carrying the class of the point that produced it.

    Follows ``segment_anything/automatic_mask_generator.py`` step by step (3 masks per point,
    predicted-IoU filter, stability score, box NMS on predicted IoU, small-region clean-up with a
    second NMS) on the cached embedding instead of re-encoding. The SAOM release assigns classes
    with ``repeat`` (class-major) while masks are point-major, so mask 3i+k got the class of point
    (3i+k) mod B; here each point's class is repeated for its own three masks
    (``repeat_interleave``). Returns CPU tensors ``masks`` K x H x W bool, ``iou`` K, ``classes`` K,
    ``points`` K x 2.
    """
    h, w = original_size
    masks, ious, classes, points = [], [], [], []
    device = features.device
    for start in range(0, len(lattice_xy), cfg.points_per_batch):
        pts = torch.as_tensor(lattice_xy[start:start + cfg.points_per_batch], dtype=torch.float32, device=device)
        decoded = net.decode(features, net.to_input_frame(pts, original_size))
        logits = net.postprocess(decoded.low_res, input_size, original_size).flatten(0, 1)  # point-major
        iou = decoded.iou.float().flatten()
        cls = decoded.class_logits.argmax(1).repeat_interleave(decoded.low_res.shape[1])
        pt = pts.repeat_interleave(decoded.low_res.shape[1], dim=0)
        keep = iou > cfg.pred_iou_thresh
        stability = calculate_stability_score(logits[keep], net.sam.mask_threshold, cfg.stability_score_offset)
        idx = keep.nonzero()[:, 0][stability >= cfg.stability_score_thresh]
        masks.append((logits[idx] > net.sam.mask_threshold).cpu())
        ious.append(iou[idx].cpu())
        classes.append(cls[idx].cpu())
        points.append(pt[idx].cpu())
    mask = torch.cat(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    iou, cls, pt = torch.cat(ious), torch.cat(classes), torch.cat(points)
    if len(mask):
        keep = batched_nms(batched_mask_to_box(mask).float(), iou, torch.zeros_like(iou), cfg.box_nms_thresh)
        mask, iou, cls, pt = mask[keep], iou[keep], cls[keep], pt[keep]
    if len(mask) and cfg.min_mask_region_area > 0:
        mask, iou, cls, pt = _clean_small_regions(mask, iou, cls, pt, cfg)
    return {"masks": mask, "iou": iou, "classes": cls, "points": pt}


def _clean_small_regions(mask: torch.Tensor, iou: torch.Tensor, cls: torch.Tensor, pt: torch.Tensor,
                         cfg: EverythingConfig) -> tuple[torch.Tensor, ...]:
    # As AMG.postprocess_small_regions: fill holes / drop islands below the area, prefer unchanged
    # masks in a second NMS (score 1 unchanged, 0 changed).
    cleaned, scores = [], []
    for m in mask.numpy():
        m, changed_holes = remove_small_regions(m, cfg.min_mask_region_area, mode="holes")
        m, changed_islands = remove_small_regions(m, cfg.min_mask_region_area, mode="islands")
        cleaned.append(torch.from_numpy(np.ascontiguousarray(m)))
        scores.append(float(not (changed_holes or changed_islands)))
    new = torch.stack(cleaned)
    score = torch.tensor(scores)
    keep = batched_nms(batched_mask_to_box(new).float(), score, torch.zeros_like(score), cfg.box_nms_thresh)
    return new[keep], iou[keep], cls[keep], pt[keep]


def semantic_map(masks: torch.Tensor, iou: torch.Tensor, classes: torch.Tensor, size: tuple[int, int],
                 background: int) -> torch.Tensor:
    """Paint class-labelled masks in ascending predicted IoU (the most confident lands on top),
    ``background`` where no mask is: an H x W int64 label map."""
    out = torch.full(size, background, dtype=torch.int64)
    for i in torch.argsort(iou, stable=True).tolist():
        out[masks[i]] = int(classes[i])
    return out


def gt_semantic_map(masks: torch.Tensor, labels: torch.Tensor, size: tuple[int, int], ignore: int) -> torch.Tensor:
    """Ground-truth instances as a label map (later instances on top), ``ignore`` elsewhere."""
    out = torch.full(size, ignore, dtype=torch.int64)
    for m, c in zip(masks, labels.tolist(), strict=True):
        out[m.cpu()] = int(c)
    return out


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x K x h x w logits (align_corners=False, as SAM)."""
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)
