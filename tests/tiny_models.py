"""Tiny SAM / SAM2 click predictors for tests and config recipes (no weights downloaded).

The model builders live in the library, :mod:`litseg.nets.sam` (``tiny_sam``, ``tiny_sam2``,
``random_sam``); they are re-exported here for the tests and benchmarks that import them from
this module. The factories below are nameable in configs as ``tests.tiny_models:<name>``.
"""

from __future__ import annotations

from litseg.nets.sam import (  # noqa: F401  (re-exported)
    SAM_ENCODER_PRESETS,
    TINY_SAM2_CONFIG,
    random_sam,
    tiny_sam,
    tiny_sam2,
    tiny_sam2_overrides,
)


def tiny_sam_predictor(**kwargs):
    """A ``sam`` click predictor over :func:`tiny_sam` (drives the whole benchmark loop in tests)."""
    from litseg.interactive.predictors.sam import SamClickPredictor

    return SamClickPredictor(model=tiny_sam(), **kwargs)


def tiny_sam2_predictor(image_size: int = 128, **kwargs):
    """A ``sam2`` click predictor over :func:`tiny_sam2`."""
    from litseg.interactive.predictors.sam2 import Sam2ClickPredictor

    return Sam2ClickPredictor(model=tiny_sam2(image_size=image_size), **kwargs)


def tiny_ritm_predictor(**kwargs):
    """A ``ritm`` click predictor over the HRNet-18s ITER-M architecture at width 6 (Zoom-In at 64 px)."""
    import torch

    from litseg.interactive.predictors.ritm import RITMClickPredictor
    from litseg.nets.hrnet_ritm import RITM_PRESETS, RITMHRNetModel

    torch.manual_seed(0)
    model = RITMHRNetModel(**(RITM_PRESETS["hrnet18s_itermask"] | {"width": 6, "ocr_width": 8})).eval()
    kwargs.setdefault("zoom_in", {"target_size": 64, "skip_clicks": -1})
    return RITMClickPredictor(model=model, **kwargs)


def tiny_simpleclick_predictor(**kwargs):
    """A ``simpleclick`` click predictor over a 2-block, 32-d plain ViT at 64 px."""
    import torch

    from litseg.interactive.predictors.simpleclick import SimpleClickPredictor
    from litseg.nets.simpleclick import PlainVitModel

    torch.manual_seed(0)
    model = PlainVitModel(
        dict(img_size=(64, 64), patch_size=(16, 16), in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=4,
             qkv_bias=True),
        dict(in_dim=32, out_dims=[8, 16, 32, 64]),
        dict(in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3], channels=16, dropout_ratio=0.1, num_classes=1,
             align_corners=False, upsample="x1"),
        with_prev_mask=True, use_disks=True, norm_radius=5).eval()
    kwargs.setdefault("input_size", 64)
    return SimpleClickPredictor(model=model, **kwargs)
