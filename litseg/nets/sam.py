"""The one SAM / SAM2 builder, shared by the interactive benchmark, SAOM and ConverSeg.

* :func:`build_sam`: an upstream SAM architecture (``vit_b`` / ``vit_l`` / ``vit_h``), random or
  with an upstream checkpoint loaded safely (``weights_only=True``, :mod:`litseg.checkpoint`);
* :func:`load_sam_state_dict`: a fine-tuned SAM / SAM2 state dict into a built model (plain state
  dicts, upstream files, Lightning checkpoints whose keys carry a module prefix);
* :func:`build_sam2`: a ``sam2`` package config (+ Hydra overrides), random or with a checkpoint;
* tiny / random builders for tests and CPU timings: :func:`tiny_sam` (~80k parameters, 64 px),
  :func:`random_sam` (upstream-sized, any input size), :func:`tiny_sam2` (Hiera-T shrunk through
  :func:`tiny_sam2_overrides`). They seed ``torch`` first, so the same arguments give the same
  weights.

Packaging notes (ecosystem.md §6, offline_building_blocks.md): ``sam2`` is imported lazily because
``import sam2`` initialises the global Hydra instance; upstream ``build_sam2`` gets no checkpoint
(it would ``torch.load`` unsafely) and always ``device="cpu"`` (its default is ``cuda``), the model
is moved afterwards. ``apply_postprocessing=True`` (upstream's default) changes eval-mode
single-mask outputs; turn it off where train / eval parity matters. This lives under ``nets/``
because it only builds ``nn.Module`` s, like the other networks of the suite.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from litseg.checkpoint import extract_state_dict, load_checkpoint, load_weights
from litseg.io import DataError

__all__ = [
    "SAM_ENCODER_PRESETS", "SAM_MODEL_TYPES", "TINY_SAM2_CONFIG", "build_sam", "build_sam2", "load_sam_state_dict",
    "random_sam", "sam2_configs", "tiny_sam", "tiny_sam2", "tiny_sam2_overrides",
]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
# Upstream image-encoder presets: embed_dim, depth, num_heads, global-attention block indexes.
SAM_ENCODER_PRESETS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
PathLike = str | os.PathLike[str]


def _check_file(checkpoint: PathLike | None) -> None:
    """Fail before spending seconds building a network for a checkpoint that is not there."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise DataError(checkpoint, "checkpoint not found")


# ----------------------------------------------------------------------------- SAM


def build_sam(model_type: str, checkpoint: PathLike | None = None, device: str | torch.device = "cpu") -> Sam:
    """An upstream SAM architecture on ``device`` in eval mode: random weights, or ``checkpoint`` loaded
    with :func:`load_sam_state_dict` (upstream ``sam_vit_*.pth`` files and fine-tuned state dicts)."""
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model_type {model_type!r}; known: {', '.join(SAM_MODEL_TYPES)}")
    _check_file(checkpoint)
    # No checkpoint argument: upstream would torch.load it unsafely and onto the saving device.
    model = sam_model_registry[model_type]()
    if checkpoint is not None:
        load_sam_state_dict(model, checkpoint)
    return model.to(torch.device(device)).eval()


def _detect_prefix(keys: Iterable[str], model_keys: set[str]) -> str:
    """The module prefix a fine-tuned checkpoint puts before the model's own keys (``""`` if none).

    Lightning checkpoints store ``<attribute>.image_encoder...`` (e.g. ``sam.`` / ``model.sam.``);
    the most frequent prefix that turns keys into model keys wins.
    """
    keys = list(keys)
    if any(k in model_keys for k in keys):
        return ""
    roots = {k.split(".", 1)[0] + "." for k in model_keys}
    counts: Counter[str] = Counter()
    for key in keys:
        for root in roots:
            at = key.find("." + root)
            if at >= 0 and key[at + 1:] in model_keys:
                counts[key[:at + 1]] += 1
                break
    return counts.most_common(1)[0][0] if counts else ""


def load_sam_state_dict(model: nn.Module, path: PathLike, key: str | None = None, prefix: str | None = None,
                        strict: bool = True) -> None:
    """Load a (fine-tuned) SAM or SAM2 state dict from ``path`` into ``model``, safely.

    ``weights_only=True`` through :mod:`litseg.checkpoint`. ``key`` picks a nested dict
    (``None``: ``"state_dict"`` for Lightning, ``"model"`` for upstream SAM2, else the file itself);
    ``prefix`` is stripped from the keys (``None``: detected, e.g. ``"sam."`` of a LightningModule
    attribute). Any missing / unexpected key or shape mismatch (with ``strict``) raises
    :class:`~litseg.io.DataError` naming the file.
    """
    ckpt = load_checkpoint(path)
    if prefix is None:
        prefix = _detect_prefix(extract_state_dict(ckpt, key=key), set(model.state_dict()))
    load_weights(model, path, key=key, prefix=prefix, strict=strict, checkpoint=ckpt)


def _assemble_sam(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, window_size: int,
                  global_attn_indexes: Sequence[int], prompt_dim: int, mask_in_chans: int, decoder_depth: int,
                  decoder_mlp_dim: int, decoder_heads: int, iou_head_depth: int) -> Sam:
    """SAM's modules wired as upstream's ``_build_sam``, with every size a parameter (eval mode)."""
    grid = img_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4.0, out_chans=prompt_dim, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=window_size, global_attn_indexes=tuple(global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim,
                                          num_heads=decoder_heads),
            transformer_dim=prompt_dim, iou_head_depth=iou_head_depth, iou_head_hidden_dim=prompt_dim,
        ),
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return sam.eval()


def tiny_sam(img_size: int = 64, patch_size: int = 16, embed_dim: int = 32, depth: int = 2, num_heads: int = 2,
             window_size: int = 2, global_attn_indexes: tuple[int, ...] = (1,), prompt_dim: int = 32,
             seed: int = 0) -> Sam:
    """A random tiny SAM in eval mode (ecosystem.md §6: 64-px input, 16-px patches, 32-d, 2 blocks).

    The keyword arguments let a speed benchmark grow the image encoder. Constraints of the
    architecture: the image embedding is ``img_size // patch_size`` wide, and ``prompt_dim``
    (encoder ``out_chans`` == prompt embedding == decoder width) must be divisible by 8.
    """
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
    if prompt_dim % 8:
        raise ValueError(f"prompt_dim {prompt_dim} must be divisible by 8")
    torch.manual_seed(seed)
    return _assemble_sam(img_size, patch_size, embed_dim, depth, num_heads, window_size, global_attn_indexes,
                         prompt_dim, mask_in_chans=4, decoder_depth=1, decoder_mlp_dim=2 * prompt_dim,
                         decoder_heads=2, iou_head_depth=2)


def random_sam(encoder: str = "vit_b", img_size: int = 1024, seed: int = 0) -> Sam:
    """The upstream SAM architecture with random weights, at any input size (for timings).

    At ``img_size=1024`` this is exactly ``sam_model_registry[encoder]()``; a smaller input keeps
    the real 256-d prompt encoder and mask decoder and an upstream-sized ViT, so the encoder /
    decoder cost ratio stays realistic on CPU.
    """
    if encoder not in SAM_ENCODER_PRESETS:
        raise ValueError(f"unknown encoder {encoder!r}; known: {', '.join(SAM_ENCODER_PRESETS)}")
    if img_size % 16:
        raise ValueError(f"img_size {img_size} must be a multiple of 16")
    embed_dim, depth, num_heads, global_attn = SAM_ENCODER_PRESETS[encoder]
    torch.manual_seed(seed)
    return _assemble_sam(img_size, 16, embed_dim, depth, num_heads, 14, global_attn, 256, mask_in_chans=16,
                         decoder_depth=2, decoder_mlp_dim=2048, decoder_heads=8, iou_head_depth=3)


# ----------------------------------------------------------------------------- SAM2


def sam2_configs() -> list[str]:
    """Config names :func:`build_sam2` accepts (relative to the installed ``sam2`` package)."""
    import sam2

    root = Path(sam2.__path__[0])
    configs = (root / "configs").rglob("*.yaml")
    return sorted(str(p.relative_to(root)) for p in configs if "training" not in p.parent.name)


def build_sam2(config: str, checkpoint: PathLike | None = None, hydra_overrides: Sequence[str] = (),
               device: str | torch.device = "cpu", apply_postprocessing: bool = True) -> nn.Module:
    """A ``sam2`` config (e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``) on ``device`` in eval mode.

    Built on CPU with the extra ``hydra_overrides`` (e.g. ``++model.image_size=512``), then
    ``checkpoint`` (upstream files keep weights under ``"model"``; fine-tuned state dicts work
    too) is loaded with :func:`load_sam_state_dict`.
    """
    from hydra.errors import MissingConfigException
    from sam2.build_sam import build_sam2 as upstream_build_sam2  # lazy, see module docstring

    _check_file(checkpoint)
    try:
        model = upstream_build_sam2(config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(hydra_overrides),
                                    apply_postprocessing=apply_postprocessing)
    except MissingConfigException as err:
        raise ValueError(f"unknown SAM2 config {config!r}; known: {', '.join(sam2_configs())}") from err
    if checkpoint is not None:
        load_sam_state_dict(model, checkpoint)
    return model.to(torch.device(device)).eval()


# Shrinks the SAM2.1 Hiera-T config: a small input (feature maps /4, /8, /16), a 16-d trunk with
# one or two blocks per stage and a 64-d neck / SAM heads. The memory modules are only used for
# video, never by the image predictor, so they are shrunk just enough to build fast.
TINY_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def tiny_sam2_overrides(image_size: int = 128) -> list[str]:
    """Hydra overrides that turn the Hiera-T config into a tiny CPU model of ``image_size``.

    A global-attention block must not be the first block of a stage (upstream ZeroDivisionError).
    """
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
    torch.manual_seed(seed)
    return build_sam2(TINY_SAM2_CONFIG, None, tiny_sam2_overrides(image_size), device=device)
