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
