"""SAM-HQ (Ke et al., NeurIPS 2023) and MobileSAM (Zhang et al., 2023) driven click by click.

Both are driven exactly like :class:`~litseg.interactive.predictors.sam.SamClickPredictor`
(rclicks.md §4.6: all clicks in click order as point prompts, ``multimask_output=True``, the
highest-IoU mask, its low-res logits fed back as ``mask_input``, sigmoid, ``threshold = 0.5``),
with the image encoded once per image and the same ``mask_reset`` policies.

**SAM-HQ** (``sam_hq_vit_b.pth`` / ``sam_hq_vit_l.pth`` / ``sam_hq_vit_h.pth``, and the HQ
TinyViT ``sam_hq_vit_tiny.pth``) is built by the official ``segment-anything-hq`` package
(``segment_anything_hq.sam_model_registry``, no checkpoint argument: upstream would
``torch.load`` it unsafely and ``strict=False``). Its ``MaskDecoderHQ`` with
``multimask_output=True`` already picks the SAM mask with the highest predicted IoU among the
three multimask outputs and returns one mask:

* ``hq_token_only=False`` (default): that SAM mask's logits **plus** the HQ-token logits. This is
  what RClicks evaluates (``is_samhq_model.py`` calls ``predict_torch`` without the argument,
  whose default is ``False``), and what the HQ-SAM authors use for their quantitative COCO /
  DAVIS / UVO / LVIS evaluations;
* ``hq_token_only=True``: the HQ-token logits alone (HQ-SAM's suggestion for single-object images).

The returned single mask is also the one fed back as ``mask_input``.

**MobileSAM** (``mobile_sam.pt``) is a TinyViT-5M image encoder with SAM's *original* prompt
encoder and mask decoder: ``image_encoder.*`` (TinyViT), ``prompt_encoder.*``, ``mask_decoder.*``
(plain SAM decoder, no HQ token). The TinyViT definition is reused from ``segment-anything-hq``
(``segment_anything_hq.modeling.TinyViT``, the same module as the MobileSAM repository's), the
prompt encoder / decoder from ``segment_anything``; the official file loads unchanged (strict).

Checkpoints are read with ``weights_only=True`` (:func:`litseg.checkpoint.load_checkpoint`); a file
of the wrong family or with missing keys raises :class:`~litseg.io.DataError` naming the file and
the first missing keys before any weight is copied.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Literal

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn


def _import_segment_anything_hq() -> None:
    """Import ``segment_anything_hq`` without its side effects on ``timm``.

    Its ``tiny_vit_sam`` module imports deprecated ``timm.models.layers`` (FutureWarnings) and
    re-registers ``tiny_vit_5m_224`` & co. in timm's global model registry with its SAM variant
    (1024-px only), which would change what ``timm.create_model("tiny_vit_5m_224")`` builds for the
    rest of the suite. The registry is restored after the import and those warnings are silenced.
    """
    import sys
    import warnings

    if "segment_anything_hq" in sys.modules:
        return
    try:
        from timm.models import _registry as reg

        tables = [getattr(reg, n) for n in ("_model_entrypoints", "_model_to_module", "_model_has_pretrained",
                                              "_model_default_cfgs", "_model_pretrained_cfgs",
                                              "_module_to_models", "_model_with_tags")]
        saved = [{k: (set(v) if isinstance(v, set) else list(v) if isinstance(v, list) else v) for k, v in t.items()}
                 if isinstance(t, dict) else set(t) for t in tables]
    except (ImportError, AttributeError):  # another timm layout: import as is
        tables, saved = [], []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecated|Overwriting tiny_vit).*")
        import segment_anything_hq  # noqa: F401
    for table, old in zip(tables, saved):
        table.clear()
        table.update(old)


_import_segment_anything_hq()

from segment_anything_hq import SamPredictor as HQSamPredictor  # noqa: E402
from segment_anything_hq import sam_model_registry as hq_model_registry  # noqa: E402
from segment_anything_hq.modeling import ImageEncoderViT as HQImageEncoderViT  # noqa: E402
from segment_anything_hq.modeling import MaskDecoderHQ, TinyViT  # noqa: E402
from segment_anything_hq.modeling import PromptEncoder as HQPromptEncoder  # noqa: E402
from segment_anything_hq.modeling import Sam as HQSam  # noqa: E402
from segment_anything_hq.modeling import TwoWayTransformer as HQTwoWayTransformer  # noqa: E402

from litseg.checkpoint import extract_state_dict, load_checkpoint, load_weights  # noqa: E402
from litseg.interactive.predictors.base import MaskReset  # noqa: E402
from litseg.interactive.predictors.sam import SamClickPredictor  # noqa: E402
from litseg.io import DataError  # noqa: E402
from litseg.nets.sam import PIXEL_MEAN, PIXEL_STD, _check_file, _detect_prefix  # noqa: E402

__all__ = [
    "SAM_HQ_MODEL_TYPES", "MobileSamClickPredictor", "SamHQClickPredictor", "build_mobile_sam", "build_sam_hq",
    "load_family_state_dict", "mobile_sam", "tiny_mobile_sam_predictor", "tiny_sam_hq", "tiny_sam_hq_predictor",
]

SAM_HQ_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_tiny")
PathLike = str | os.PathLike[str]
# Keys only SAM-HQ's MaskDecoderHQ has: a plain SAM / MobileSAM file lacks exactly these.
_HQ_ONLY = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


# ----------------------------------------------------------------------------- loading


def load_family_state_dict(model: nn.Module, path: PathLike, family: str) -> None:
    """Load an upstream ``family`` checkpoint (plain state dict, or a fine-tuned one with a module
    prefix) into ``model``, ``weights_only=True`` and strict.

    Checks the key names first, so a file of another family names the file, the family and
    the first missing keys (e.g. a plain SAM file for SAM-HQ lacks ``mask_decoder.hf_token.weight``)
    instead of failing on a shape mismatch; then :func:`litseg.checkpoint.load_weights`
    (shape mismatches, unexpected keys).
    """
    _check_file(path)
    ckpt = load_checkpoint(path)
    model_keys = list(model.state_dict())
    sd = extract_state_dict(ckpt)
    prefix = _detect_prefix(sd, set(model_keys))
    missing = [k for k in model_keys if prefix + k not in sd]
    if missing:
        hint = ""
        if family.startswith("SAM-HQ") and all(any(t in k for t in _HQ_ONLY) for k in missing):
            hint = " (a plain SAM / MobileSAM checkpoint? it has no HQ-token decoder)"
        elif missing[0].startswith("image_encoder."):
            hint = " (an image encoder of another family?)"
        raise DataError(
            path,
            f"not a {family} checkpoint{hint}: {len(missing)} of {len(model_keys)} keys missing, first "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}",
        )
    load_weights(model, path, prefix=prefix, strict=True, checkpoint=ckpt)


# ----------------------------------------------------------------------------- SAM-HQ


def build_sam_hq(model_type: str, checkpoint: PathLike | None = None, device: str | torch.device = "cpu") -> HQSam:
    """The official SAM-HQ architecture (``segment_anything_hq.sam_model_registry``) in eval mode:
    random, or with ``checkpoint`` (``sam_hq_vit_*.pth``) loaded by :func:`load_family_state_dict`."""
    if model_type not in SAM_HQ_MODEL_TYPES:
        raise ValueError(f"unknown SAM-HQ model_type {model_type!r}; known: {', '.join(SAM_HQ_MODEL_TYPES)}")
    _check_file(checkpoint)
    model = hq_model_registry[model_type]()  # no checkpoint: upstream loads it unsafely, strict=False
    if checkpoint is not None:
        load_family_state_dict(model, checkpoint, f"SAM-HQ {model_type}")
    return model.to(torch.device(device)).eval()


def tiny_sam_hq(img_size: int = 64, patch_size: int = 16, embed_dim: int = 32, depth: int = 2, num_heads: int = 2,
                window_size: int = 2, global_attn_indexes: tuple[int, ...] = (1,), prompt_dim: int = 32,
                seed: int = 0) -> HQSam:
    """A random tiny SAM-HQ from the package's modules, sized like :func:`litseg.nets.sam.tiny_sam`
    (same arguments and sub-sizes, so a ``tiny_sam`` file has all its keys except the HQ ones).

    The HQ decoder reads the output of the first global-attention block, so
    ``global_attn_indexes`` must not be empty.
    """
    if img_size % patch_size or prompt_dim % 8 or not global_attn_indexes:
        raise ValueError("need img_size % patch_size == 0, prompt_dim % 8 == 0 and a global-attention block")
    torch.manual_seed(seed)
    grid = img_size // patch_size
    model = HQSam(
        image_encoder=HQImageEncoderViT(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4.0, out_chans=prompt_dim, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=window_size, global_attn_indexes=tuple(global_attn_indexes),
        ),
        prompt_encoder=HQPromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                       input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=HQTwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=prompt_dim, vit_dim=embed_dim,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return model.eval()


class SamHQClickPredictor(SamClickPredictor):
    """SAM-HQ as an :class:`~litseg.interactive.types.InteractivePredictor`.

    Args:
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` (``sam_hq_vit_*.pth``) or ``vit_tiny``
            (HQ-MobileSAM, ``sam_hq_vit_tiny.pth``).
        checkpoint: the weights file, loaded ``weights_only=True``; required unless ``model`` is given.
        device: where the model runs.
        hq_token_only: ``False`` (default, as RClicks and HQ-SAM's quantitative evaluations): the
            best-IoU SAM mask plus the HQ mask; ``True``: the HQ mask alone (module docstring).
        model: an already-built SAM-HQ (tests); ``checkpoint`` then optionally loads into it.
        mask_reset / encode_every_click: as :class:`SamClickPredictor`.
    """

    threshold = 0.5

    def __init__(
        self,
        model_type: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"] = "vit_b",
        checkpoint: str | None = None,
        device: str = "cpu",
        hq_token_only: bool = False,
        model: HQSam | None = None,
        mask_reset: MaskReset = "first_click",
        encode_every_click: bool = False,
    ) -> None:
        if model is None:
            if checkpoint is None:
                raise ValueError("SamHQClickPredictor needs a checkpoint (random weights give meaningless masks)")
            model = build_sam_hq(model_type, checkpoint)
        elif checkpoint is not None:
            load_family_state_dict(model, checkpoint, "SAM-HQ")
        if not isinstance(model.mask_decoder, MaskDecoderHQ):
            raise TypeError(f"SamHQClickPredictor needs a SAM-HQ model (MaskDecoderHQ), got "
                            f"{type(model.mask_decoder).__name__}")
        super().__init__(model_type="vit_b", checkpoint=None, device=device, model=model, mask_reset=mask_reset,
                         encode_every_click=encode_every_click)
        self.sam_predictor = HQSamPredictor(self.model)  # also keeps the early ViT features
        self.hq_token_only = bool(hq_token_only)

    def _decode(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        # multimask_output=True: the HQ decoder itself keeps the best-IoU SAM mask (and adds the HQ mask
        # unless hq_token_only), so exactly one low-res mask comes back.
        chosen, _ = self.model.mask_decoder(
            image_embeddings=self.sam_predictor.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            hq_token_only=self.hq_token_only,
            interm_embeddings=self.sam_predictor.interm_features,
        )
        return chosen


# ----------------------------------------------------------------------------- MobileSAM


class _SamTinyViT(TinyViT):
    """The package's TinyViT (MobileSAM's image encoder, same parameter names) returning only the
    256-d image embedding, as ``segment_anything``'s ``Sam`` / ``SamPredictor`` expect.

    Upstream hard-codes a 64 x 64 embedding (1024-px input); here the grid follows the input
    (``img_size // 16``), so the same weights also run at a smaller ``img_size`` (tests, timings).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        batch, tokens, chans = x.shape
        grid = self.img_size // 16
        x = x.view(batch, grid, grid, chans).permute(0, 3, 1, 2)
        return self.neck(x)


def mobile_sam(img_size: int = 1024, seed: int | None = None) -> Sam:
    """MobileSAM as published (``mobile_sam/build_sam.py::build_sam_vit_t``), random, eval mode.

    TinyViT-5M (embed dims 64/128/160/320, depths 2/2/6/2) + SAM's prompt encoder and plain mask
    decoder (256-d). ``img_size`` other than 1024 keeps every parameter shape (the official file
    loads unchanged) and shrinks the embedding to ``img_size // 16``; it must be a multiple of 64.
    """
    if img_size % 64:
        raise ValueError(f"img_size {img_size} must be a multiple of 64")
    if seed is not None:
        torch.manual_seed(seed)
    grid = img_size // 16
    model = Sam(
        image_encoder=_SamTinyViT(
            img_size=img_size, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
            use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return model.eval()


def build_mobile_sam(checkpoint: PathLike | None = None, device: str | torch.device = "cpu",
                     img_size: int = 1024) -> Sam:
    """:func:`mobile_sam` with ``checkpoint`` (``mobile_sam.pt``) loaded by :func:`load_family_state_dict`."""
    _check_file(checkpoint)
    model = mobile_sam(img_size)
    if checkpoint is not None:
        load_family_state_dict(model, checkpoint, "MobileSAM")
    return model.to(torch.device(device)).eval()


class MobileSamClickPredictor(SamClickPredictor):
    """MobileSAM as an :class:`~litseg.interactive.types.InteractivePredictor`: SAM's driving
    (:class:`SamClickPredictor`) over the TinyViT encoder.

    Args:
        checkpoint: ``mobile_sam.pt`` (or a fine-tuned state dict), loaded ``weights_only=True``;
            required unless ``model`` is given.
        device: where the model runs.
        model: an already-built MobileSAM (:func:`mobile_sam`); ``checkpoint`` then optionally loads into it.
        mask_reset / encode_every_click: as :class:`SamClickPredictor`.
    """

    threshold = 0.5

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str = "cpu",
        model: Sam | None = None,
        mask_reset: MaskReset = "first_click",
        encode_every_click: bool = False,
    ) -> None:
        if model is None:
            if checkpoint is None:
                raise ValueError("MobileSamClickPredictor needs a checkpoint (random weights give meaningless masks)")
            model = build_mobile_sam(checkpoint)
        elif checkpoint is not None:
            load_family_state_dict(model, checkpoint, "MobileSAM")
        super().__init__(model_type="vit_b", checkpoint=None, device=device, model=model, mask_reset=mask_reset,
                         encode_every_click=encode_every_click)


# ----------------------------------------------------------------------------- tiny factories (tests / recipes)


def tiny_sam_hq_predictor(**kwargs) -> SamHQClickPredictor:
    """A ``sam_hq`` click predictor over :func:`tiny_sam_hq` (nameable in configs)."""
    kwargs.pop("model_type", None)
    return SamHQClickPredictor(model=tiny_sam_hq(), **kwargs)


def tiny_mobile_sam_predictor(img_size: int = 128, **kwargs) -> MobileSamClickPredictor:
    """A ``mobile_sam`` click predictor over the real MobileSAM architecture at a small input."""
    return MobileSamClickPredictor(model=mobile_sam(img_size, seed=0), **kwargs)
