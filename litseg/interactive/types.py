"""Click and predictor types shared by the simulated users, the predictors and the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Click:
    """One click in image pixel coordinates (row ``y``, column ``x``).

    ``index`` is the 0-based order of the click within its episode.
    """

    y: int
    x: int
    is_positive: bool
    index: int


@runtime_checkable
class InteractivePredictor(Protocol):
    """What the benchmark loop needs from an interactive segmenter.

    ``set_image`` is called once per image (encode the image there, once);
    ``reset`` once per instance episode (drop prompts / previous-mask state, keep the
    image embedding); ``predict`` once per click with *all* clicks so far, returning an
    ``H x W`` float32 probability map in [0, 1] at the image's resolution.
    ``threshold`` binarises it (``probs > threshold``): 0.49 RITM-style, 0.5 SAM family.
    """

    threshold: float

    def set_image(self, image: np.ndarray) -> None: ...

    def reset(self) -> None: ...

    def predict(self, clicks: list[Click]) -> np.ndarray: ...
