"""Tiny random SAM and SAM2 models for tests and CPU benchmarks (no weights downloaded).

``tiny_sam()`` follows the confirmed construction in ``shared/specs/ecosystem.md`` §6
(64-px input, 16-px patches, 32-d embedding, 2 blocks, ~80k parameters); its keyword
arguments let the speed benchmark grow the image encoder to a realistic share of the cost.
``tiny_sam2()`` is the SAM2.1 Hiera-T config shrunk through Hydra overrides (smaller input,
narrower / shallower trunk, 64-d heads) so ``set_image`` + ``predict`` run in well under a
second on CPU. Both seed ``torch`` before building, so the same arguments give the same
weights.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn


def tiny_sam(
    img_size: int = 64,
    patch_size: int = 16,
    embed_dim: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    window_size: int = 2,
    global_attn_indexes: tuple[int, ...] = (1,),
    prompt_dim: int = 32,
    seed: int = 0,
) -> nn.Module:
    """A random ``segment_anything.modeling.Sam`` in eval mode.

    Constraints of the SAM architecture: the image embedding is ``img_size // patch_size``
    wide, and ``prompt_dim`` (encoder ``out_chans`` == prompt embedding == decoder
    transformer width) must be divisible by 8 for the decoder's upscaling convolutions.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
    if prompt_dim % 8:
        raise ValueError(f"prompt_dim {prompt_dim} must be divisible by 8")
    torch.manual_seed(seed)
    grid = img_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=2,
            iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


# Shrinks the SAM2.1 Hiera-T config: a small input (feature maps /4, /8, /16), a 16-d trunk
# with one or two blocks per stage and a 64-d neck / SAM heads. The memory modules are only
# used for video, never by the image predictor, so they are shrunk just enough to build fast.
TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def tiny_sam2_overrides(image_size: int = 128) -> list[str]:
    """Hydra overrides that turn the Hiera-T config into a tiny CPU model of ``image_size``."""
    if image_size % 32:
        raise ValueError(f"image_size {image_size} must be a multiple of 32 (Hiera stride x neck)")
    mem = image_size // 16
    return [
        f"++model.image_size={image_size}",
        "++model.image_encoder.trunk.embed_dim=16",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        "++model.image_encoder.neck.d_model=64",
        "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
        "++model.image_encoder.neck.position_encoding.num_pos_feats=64",
        "++model.memory_attention.num_layers=1",
        "++model.memory_attention.layer.dim_feedforward=256",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{mem},{mem}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{mem},{mem}]",
        "++model.memory_encoder.fuser.num_layers=1",
    ]


def tiny_sam2(image_size: int = 128, seed: int = 0, device: str = "cpu") -> nn.Module:
    """A random SAM2.1 (``SAM2Base``) built from Hiera-T with :func:`tiny_sam2_overrides`."""
    from sam2.build_sam import build_sam2  # lazy: importing sam2 claims the global Hydra instance

    torch.manual_seed(seed)
    return build_sam2(TINY_SAM2_CONFIG, ckpt_path=None, device=device,
                      hydra_overrides_extra=tiny_sam2_overrides(image_size))


# Upstream image-encoder presets: embed_dim, depth, num_heads, global-attention block indexes.
SAM_ENCODER_PRESETS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def random_sam(encoder: str = "vit_b", img_size: int = 1024, seed: int = 0) -> nn.Module:
    """The upstream SAM architecture with random weights, at any input size (for timings).

    At ``img_size=1024`` this is exactly ``sam_model_registry[encoder]()``; a smaller input
    keeps the real 256-d prompt encoder and mask decoder and an upstream-sized ViT, so the
    encoder / decoder cost ratio stays realistic on CPU.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if encoder not in SAM_ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {encoder!r}; known: {', '.join(SAM_ENCODER_PRESETS)}")
    if img_size % 16:
        raise ValueError(f"img_size {img_size} must be a multiple of 16")
    embed_dim, depth, num_heads, global_attn = SAM_ENCODER_PRESETS[encoder]
    torch.manual_seed(seed)
    grid = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4,
            out_chans=256, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=14, global_attn_indexes=global_attn,
        ),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def tiny_sam_predictor(**kwargs):
    """A ``sam`` click predictor over :func:`tiny_sam`, nameable in configs as
    ``tests.tiny_models:tiny_sam_predictor`` (drives the whole benchmark loop in tests)."""
    from litseg.interactive.predictors.sam import SamClickPredictor

    return SamClickPredictor(model=tiny_sam(), **kwargs)


def tiny_sam2_predictor(image_size: int = 128, **kwargs):
    """A ``sam2`` click predictor over :func:`tiny_sam2` (``tests.tiny_models:tiny_sam2_predictor``)."""
    from litseg.interactive.predictors.sam2 import Sam2ClickPredictor

    return Sam2ClickPredictor(model=tiny_sam2(image_size=image_size), **kwargs)
