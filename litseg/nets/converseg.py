"""The SAM2 half of ConverSeg-Net: a frozen SAM2 image encoder and a trained SAM2 mask decoder that takes
a VLM's prompt embeddings directly (converseg.md §1.5-1.7, §3.3, §4.1, §4.4).

* :class:`Sam2Segmenter`: :meth:`~Sam2Segmenter.encode` runs the frozen encoder as ``SAM2ImagePredictor.set_image``
  does (``forward_image`` -> ``_prepare_backbone_features`` -> ``+ no_mem_embed`` on the lowest-resolution level),
  with an optional in-memory feature cache (:meth:`~Sam2Segmenter.encode_cached`);
  :meth:`~Sam2Segmenter.decode` feeds the VLM's sparse tokens and dense vector to ``sam_mask_decoder``
  (the prompt encoder is never called, only its ``get_dense_pe``).
* :func:`select_masks`: the three inference mask selections (token 0 / eval.py's multimask argmax / SAM2's
  dynamic stability fallback).
* :func:`converseg_loss`: BCE + 0.25 x soft dice on mask token 0 at the low-res size.
* :func:`logits_to_original`: low-res logits -> original image frame, letterbox (training / demo.py) or
  stretch (eval.py) geometry.

Sizes follow the SAM2 model, never fixed constants: upstream's 1024 input is ``sam2.image_size``, its 64 x 64
embedding grid ``sam2.sam_image_embedding_size`` (``image_size / 16``), its 256 x 256 low-res masks
``image_size / 4`` and its 256 prompt width ``sam2.hidden_dim`` (so a ``tiny_sam2(image_size=128)`` has 32 x 32
masks, an 8 x 8 grid and 64-d prompts).

Image normalisation: :meth:`~Sam2Segmenter.encode` takes ``B x 3 x S x S`` float images already normalised
with the ImageNet mean / std on [0, 1] RGB (``litseg.imaging.normalize``, ``Letterbox.image``), which is what
SAM2's ``SAM2Transforms`` (ToTensor -> Resize -> Normalize(0.485/0.456/0.406, 0.229/0.224/0.225)) produces.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from litseg.letterbox import Letterbox
from litseg.losses import dice_loss

__all__ = [
    "MASK_SELECTIONS", "Sam2Segmenter", "converseg_loss", "logits_to_original", "select_masks", "stability_scores",
]

MaskSelection = Literal["token0", "multimask_argmax", "dynamic_stability"]
MASK_SELECTIONS: tuple[str, ...] = ("token0", "multimask_argmax", "dynamic_stability")
Geometry = Literal["letterbox", "stretch"]
# {"image_embed": B x C x E x E, "high_res_feats": [B x C/8 x 4E x 4E, B x C/4 x 2E x 2E]}
Features = dict[str, torch.Tensor | list[torch.Tensor]]
# SAM2 mask_decoder.py defaults, also what build_sam2(apply_postprocessing=True) sets (converseg.md §1.5).
STABILITY_DELTA = 0.05
STABILITY_THRESH = 0.98
# ConverSeg train.py L289-295: dice eps 1e-6 (not SAM's smooth 1), dice weight 0.25.
DICE_EPS = 1e-6
DICE_WEIGHT = 0.25


class Sam2Segmenter(nn.Module):
    """A SAM2 (``SAM2Base`` from :func:`litseg.nets.sam.build_sam2` / ``tiny_sam2``) used as ConverSeg's segmenter.

    Only ``sam2.sam_mask_decoder`` is trainable (converseg.md §1.7, train.py L187-211); the image encoder,
    ``no_mem_embed``, the prompt encoder and the video memory modules are frozen. ``conv_s0`` / ``conv_s1``
    belong to the decoder but run inside the no-grad :meth:`encode` (as upstream), so they never get a
    gradient. The image encoder stays in eval mode whatever :meth:`train` is called with.

    ``cache_features``: :meth:`encode_cached` keeps each sample's features on the CPU (the encoder is frozen and
    ConverSeg has no augmentation, §8), ``cache_dtype`` optionally storing them smaller (e.g. ``torch.float16``;
    ``None`` keeps the encoder's dtype, exact). For hiera-L at 1024 a sample is ~4.2 M values (16.8 MB fp32).
    """

    def __init__(self, sam2: nn.Module, cache_features: bool = False, cache_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.sam2 = sam2
        self.cache_features = cache_features
        self.cache_dtype = cache_dtype
        self._cache: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        for name, param in sam2.named_parameters():
            param.requires_grad_(name.startswith("sam_mask_decoder."))
        sam2.image_encoder.eval()

    # ------------------------------------------------------------------ sizes
    @property
    def image_size(self) -> int:
        """Square input side (upstream 1024)."""
        return int(self.sam2.image_size)

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (upstream 64 = image_size / 16)."""
        return int(self.sam2.sam_image_embedding_size)

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-res masks (upstream 256 = image_size / 4): the decoder upscales 4x."""
        return 4 * self.embedding_size

    @property
    def prompt_dim(self) -> int:
        """Width of the sparse / dense prompt embeddings (upstream 256 = ``transformer_dim``)."""
        return int(self.sam2.sam_prompt_embed_dim)

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam2.sam_mask_decoder

    def train(self, mode: bool = True) -> Sam2Segmenter:
        super().train(mode)
        self.sam2.image_encoder.eval()  # frozen, encoded without grad: never in training mode
        return self

    # ------------------------------------------------------------------ encoder
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Features:
        """``B x 3 x S x S`` normalised images (``S = image_size``) -> ``image_embed`` ``B x C x E x E`` and
        ``high_res_feats`` ``[B x C/8 x 4E x 4E, B x C/4 x 2E x 2E]``, exactly as ``SAM2ImagePredictor.set_image``.

        No grad (train.py L269: the encoder, conv_s0 / conv_s1 included, is run under ``torch.no_grad``).
        """
        size = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(f"expected B x 3 x {size} x {size} images, got {tuple(images.shape)}")
        backbone_out = self.sam2.forward_image(images)
        _, vision_feats, _, feat_sizes = self.sam2._prepare_backbone_features(backbone_out)
        # sam2_image_predictor.py set_image: no_mem_embed is added to the lowest-resolution level
        # (directly_add_no_mem_embed: true in every image config).
        if self.sam2.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.sam2.no_mem_embed
        batch = images.shape[0]
        # HW x B x C -> B x C x H x W per level, highest resolution first.
        feats = [f.permute(1, 2, 0).reshape(batch, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def encode_cached(self, ids: Sequence[Hashable], images: torch.Tensor) -> Features:
        """:meth:`encode` with each sample's features remembered under its id (CPU storage).

        Every image is encoded on its own: convolution sums depend (in their last bits) on the batch
        an image shares, so per-sample encoding makes features independent of batch composition: the
        cache gives the same numbers as no cache, and a resumed run (other batches, empty cache) the
        same as an uninterrupted one. The encoder is frozen, so this costs nothing after the first
        epoch with the cache. The result is on ``images``' device.
        """
        if len(ids) != images.shape[0]:
            raise ValueError(f"{len(ids)} ids for {images.shape[0]} images")
        if not self.cache_features:
            parts = [self.encode(images[i:i + 1]) for i in range(images.shape[0])]
            return {"image_embed": torch.cat([p["image_embed"] for p in parts]),
                    "high_res_feats": [torch.cat([p["high_res_feats"][lv] for p in parts])
                                       for lv in range(len(parts[0]["high_res_feats"]))]}
        for index, key in enumerate(ids):
            if key in self._cache:
                continue
            fresh = self.encode(images[index:index + 1])
            levels = [fresh["image_embed"], *fresh["high_res_feats"]]
            dtype = self.cache_dtype or levels[0].dtype
            # clone: a per-sample copy, not a view
            self._cache[key] = tuple(lv[0].detach().to("cpu", dtype).clone() for lv in levels)
        device, dtype = images.device, self.sam2.no_mem_embed.dtype
        stacked = [torch.stack([self._cache[key][lv] for key in ids]).to(device, dtype)
                   for lv in range(len(self._cache[ids[0]]))]
        return {"image_embed": stacked[0], "high_res_feats": stacked[1:]}

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------------ decoder
    def decode(self, features: Features, sparse: torch.Tensor,
               sparse_mask: torch.Tensor | None, dense: torch.Tensor, multimask: bool = False,
               per_sample: bool = False) -> dict[str, torch.Tensor]:
        """Run ``sam_mask_decoder`` with the VLM's prompts in place of point / box / mask embeddings.

        ``sparse`` ``B x T x C`` (padded), ``sparse_mask`` ``B x T`` (True = real token), ``dense`` ``B x C``
        (broadcast over the embedding grid in place of ``no_mask_embed``, §1.4). Returns
        ``low_res_logits`` ``B x K x L x L`` and ``iou`` ``B x K`` (``K = 3`` tokens 1-3 with ``multimask``, else
        ``K = 1`` token 0), plus ``all_low_res_logits`` / ``all_iou`` (all four mask tokens, for
        :func:`select_masks`) and ``object_score_logits`` ``B x 1`` (unused upstream).

        Padding: upstream (train.py L269-289) passes the zero-padded, adapter-projected batch as it is; SAM's
        decoder has no key-padding mask, so padded slots join the attention (§1.4, item 4). ``per_sample=False``
        does the same. ``per_sample=True`` decodes each sample with only its real tokens (``sparse_mask``),
        which is what upstream's batch-1 eval.py / demo.py see; the two agree when nothing is padded.

        The decoder's ``predict_masks`` (the body of ``MaskDecoder.forward``) is called so the token choice is
        ours: ``forward`` would swap token 0 for the best of tokens 1-3 in eval mode when the model was built with
        ``apply_postprocessing=True`` (§1.6); use ``select_masks(..., "dynamic_stability")`` for that rule.
        """
        image_embed = features["image_embed"]
        high_res = list(features["high_res_feats"])
        batch, dim = image_embed.shape[:2]
        if sparse.dim() != 3 or sparse.shape[0] != batch or sparse.shape[2] != dim:
            raise ValueError(f"sparse must be {batch} x T x {dim}, got {tuple(sparse.shape)}")
        if dense.shape != (batch, dim):
            raise ValueError(f"dense must be {batch} x {dim}, got {tuple(dense.shape)}")
        if sparse_mask is not None and sparse_mask.shape != sparse.shape[:2]:
            raise ValueError(f"sparse_mask {tuple(sparse_mask.shape)} does not match sparse {tuple(sparse.shape)}")
        if per_sample:
            if sparse_mask is None:
                raise ValueError("per_sample decoding needs sparse_mask")
            outs = [self._decode(image_embed[b:b + 1], [h[b:b + 1] for h in high_res],
                                 sparse[b:b + 1, sparse_mask[b]], dense[b:b + 1]) for b in range(batch)]
            masks, iou, obj = (torch.cat(parts) for parts in zip(*outs))
        else:
            masks, iou, obj = self._decode(image_embed, high_res, sparse, dense)
        # MaskDecoder.forward: multimask -> tokens 1-3, single -> token 0
        chosen = slice(1, None) if multimask else slice(0, 1)
        return {"low_res_logits": masks[:, chosen], "iou": iou[:, chosen], "all_low_res_logits": masks,
                "all_iou": iou, "object_score_logits": obj}

    def predict(self, features: Features, sparse: torch.Tensor, sparse_mask: torch.Tensor | None,
                dense: torch.Tensor, mask_selection: MaskSelection = "token0",
                per_sample: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: :meth:`decode` then :func:`select_masks` -> ``B x 1 x L x L`` logits and ``B`` predicted IoUs.

        ``per_sample=False`` by default as in training; set it when a batch mixes prompt lengths and the result
        must equal upstream's batch-1 eval.py / demo.py.
        """
        out = self.decode(features, sparse, sparse_mask, dense, multimask=mask_selection != "token0",
                          per_sample=per_sample)
        return select_masks(out["all_low_res_logits"], out["all_iou"], mask_selection)

    def _decode(self, image_embed: torch.Tensor, high_res: list[torch.Tensor], sparse: torch.Tensor,
                dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        decoder = self.sam2.sam_mask_decoder
        param = next(decoder.parameters())
        grid = image_embed.shape[-2:]
        # eval.py L194-226: prompts cast to the decoder's dtype / device; dense expanded to the grid (§1.4).
        sparse = sparse.to(param.device, param.dtype)
        dense_map = dense.to(param.device, param.dtype)[:, :, None, None].expand(-1, -1, *grid)
        image_pe = self.sam2.sam_prompt_encoder.get_dense_pe()  # 1 x C x E x E, a constant
        masks, iou, _, obj = decoder.predict_masks(
            image_embeddings=image_embed, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense_map, repeat_image=False,
            high_res_features=high_res if self.sam2.use_high_res_features_in_sam else None,
        )
        return masks, iou, obj

    def forward(self, features: Features, sparse: torch.Tensor,
                sparse_mask: torch.Tensor | None, dense: torch.Tensor, multimask: bool = False,
                per_sample: bool = False) -> dict[str, torch.Tensor]:
        return self.decode(features, sparse, sparse_mask, dense, multimask=multimask, per_sample=per_sample)


# ----------------------------------------------------------------------------- mask selection


def stability_scores(logits: torch.Tensor, delta: float = STABILITY_DELTA) -> torch.Tensor:
    """SAM2 ``_get_stability_scores``: area(logit > delta) / area(logit > -delta) per mask (1 if empty)."""
    flat = logits.flatten(-2)
    inner = (flat > delta).sum(-1).float()
    outer = (flat > -delta).sum(-1).float()
    return torch.where(outer > 0, inner / outer.clamp_min(1), torch.ones_like(outer))


def select_masks(all_logits: torch.Tensor, all_iou: torch.Tensor, mode: MaskSelection = "token0",
                 delta: float = STABILITY_DELTA, thresh: float = STABILITY_THRESH) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one mask per sample from all four mask tokens (``B x 4 x L x L``, ``B x 4``) -> ``B x 1 x L x L``, ``B``.

    * ``token0``: SAM's single-mask token, the one train.py supervises (§1.6) — the default;
    * ``multimask_argmax``: eval.py / demo.py, tokens 1-3 and the highest predicted IoU;
    * ``dynamic_stability``: SAM2 ``_dynamic_multimask_via_stability`` (what upstream's in-training validation
      gets from ``apply_postprocessing=True``): token 0 unless its stability score < ``thresh``, then the
      ``multimask_argmax`` mask.
    """
    if mode not in MASK_SELECTIONS:
        raise ValueError(f"mask_selection must be one of {MASK_SELECTIONS}, got {mode!r}")
    if all_logits.dim() != 4 or all_logits.shape[1] != 4 or all_iou.shape != all_logits.shape[:2]:
        raise ValueError(f"expected B x 4 x L x L logits and B x 4 iou, got {tuple(all_logits.shape)}, "
                         f"{tuple(all_iou.shape)}")
    rows = torch.arange(all_logits.shape[0], device=all_logits.device)
    best = all_iou[:, 1:].argmax(dim=1) + 1
    if mode == "token0":
        token = torch.zeros_like(best)
    elif mode == "multimask_argmax":
        token = best
    else:
        stable = stability_scores(all_logits[:, 0], delta) >= thresh
        token = torch.where(stable, torch.zeros_like(best), best)
    return all_logits[rows, token][:, None], all_iou[rows, token]


# ----------------------------------------------------------------------------- loss


def converseg_loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """ConverSeg's loss on mask token 0 at the low-res size (train.py L289-296, §3.3): ``B x 1 x L x L`` each.

    ``bce`` = BCE-with-logits averaged over all pixels of the batch; ``dice`` = batch mean of the per-sample soft
    dice ``1 - (2 sum(p g) + 1e-6) / (sum(p) + sum(g) + 1e-6)`` (unweighted); ``loss = bce + 0.25 dice``.
    Upstream's division by the accumulation factor belongs to the trainer.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = dice_loss(logits, target, smooth=DICE_EPS)
    return {"loss": bce + DICE_WEIGHT * dice, "bce": bce, "dice": dice}


# ----------------------------------------------------------------------------- geometry


def logits_to_original(low_res: torch.Tensor, letterboxes: Sequence[Letterbox],
                       mode: Geometry = "letterbox") -> list[torch.Tensor]:
    """Low-res logits ``B x 1 x L x L`` -> one ``H x W`` float32 logit map per sample (CPU), threshold at 0.

    * ``letterbox`` (training preprocessing, demo.py §4.4, item 13): bilinear to the letterbox square
      (``Letterbox.size``, upstream 1024), crop the image region, resize to H x W (``Letterbox.invert``);
    * ``stretch`` (eval.py §4.1: the image was resized to the square without padding): bilinear straight to
      H x W (``SAM2Transforms.postprocess_masks``, align_corners=False); only the record's H and W are used.
    """
    if mode not in ("letterbox", "stretch"):
        raise ValueError(f"geometry must be 'letterbox' or 'stretch', got {mode!r}")
    if low_res.dim() != 4 or low_res.shape[1] != 1:
        raise ValueError(f"expected B x 1 x L x L logits, got {tuple(low_res.shape)}")
    if len(letterboxes) != low_res.shape[0]:
        raise ValueError(f"{len(letterboxes)} letterbox records for {low_res.shape[0]} masks")
    out = []
    for logits, box in zip(low_res.detach().float().cpu(), letterboxes):
        if mode == "stretch":
            full = F.interpolate(logits[None], size=(box.height, box.width), mode="bilinear", align_corners=False)
            out.append(full[0, 0])
        else:
            square = F.interpolate(logits[None], size=(box.size, box.size), mode="bilinear", align_corners=False)
            out.append(torch.from_numpy(box.invert(square[0, 0])))
    return out
