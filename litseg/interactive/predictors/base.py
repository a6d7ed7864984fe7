"""Predictor registry and the shared click handling of the interactive predictors.

The benchmark loop (``lit_modules/interactive.py``) only sees the
:class:`litseg.interactive.types.InteractivePredictor` protocol; :func:`build_predictor` turns a
config entry (``predictor: sam`` + ``predictor_args: {...}``) into such an object.
Built-in names map to import strings, so naming a predictor imports only its own
dependencies (``sam2`` claims the global Hydra instance on import, see ecosystem.md §6).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from litseg.interactive.types import Click, InteractivePredictor

PredictorFactory = Callable[..., InteractivePredictor]

# name -> factory, or "module:attribute" resolved on first use.
_REGISTRY: dict[str, PredictorFactory | str] = {
    "sam": "litseg.interactive.predictors.sam:SamClickPredictor",
    "sam2": "litseg.interactive.predictors.sam2:Sam2ClickPredictor",
    "grabcut": "litseg.interactive.predictors.classical:GrabCutPredictor",
    "sam_hq": "litseg.interactive.predictors.sam_hq:SamHQClickPredictor",
    "mobile_sam": "litseg.interactive.predictors.sam_hq:MobileSamClickPredictor",
    "ritm": "litseg.interactive.predictors.ritm:RITMClickPredictor",
    "simpleclick": "litseg.interactive.predictors.simpleclick:SimpleClickPredictor",
}


def register_predictor(name: str, factory: PredictorFactory | str, overwrite: bool = False) -> None:
    """Make ``build_predictor(name, **kwargs)`` call ``factory(**kwargs)``.

    ``factory`` is a class or function returning an :class:`InteractivePredictor`, or an
    import string ``"package.module:Factory"`` resolved when first built.
    """
    if not name or ":" in name or "." in name:
        raise ValueError(f"predictor name must be a plain word (no '.' or ':'), got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"predictor {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def available_predictors() -> list[str]:
    return sorted(_REGISTRY)


def _import_factory(spec: str) -> PredictorFactory:
    module_name, sep, attr = spec.partition(":")
    if not sep:  # also accept the dotted class_path form "package.module.Factory"
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"cannot read predictor import string {spec!r}; expected 'package.module:Factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for predictor {spec!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (predictor {spec!r})") from None


def predictor_factory(name: str) -> PredictorFactory:
    """The factory of a registered predictor name or of an import string ``"package.module:Factory"``;
    an unknown name lists the known ones (checked when the benchmark is configured, before any data)."""
    if name in _REGISTRY:
        factory = _REGISTRY[name]
        return _import_factory(factory) if isinstance(factory, str) else factory
    if ":" in name or "." in name:
        return _import_factory(name)
    raise ValueError(
        f"unknown predictor {name!r}; known: {', '.join(available_predictors())} "
        "(or give an import string 'package.module:Factory')"
    )


def build_predictor(name: str, **kwargs: Any) -> InteractivePredictor:
    """Build a registered predictor by name, or any factory given as ``"package.module:Factory"``."""
    predictor = predictor_factory(name)(**kwargs)
    if not isinstance(predictor, InteractivePredictor):
        raise TypeError(
            f"predictor {name!r} built a {type(predictor).__name__}, which lacks the InteractivePredictor "
            "members threshold / set_image / reset / predict"
        )
    return predictor


# ----------------------------------------------------------------------------- click helpers

MaskReset = Literal["first_click", "upstream_two_slots"]


def check_image(image: np.ndarray) -> np.ndarray:
    """Accept only the protocol's image format: ``H x W x 3`` uint8 RGB."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {desc}")
    return np.ascontiguousarray(image)


def clicks_to_points(clicks: Sequence[Click], image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clicks in click order as SAM-style prompts: ``(N, 2)`` float (x, y) and ``(N,)`` labels 1/0."""
    if not clicks:
        raise ValueError("predict() needs at least one click")
    height, width = image_hw
    ordered = sorted(clicks, key=lambda c: c.index)
    for c in ordered:
        if not (0 <= c.y < height and 0 <= c.x < width):
            raise ValueError(f"click {c} lies outside the {width}x{height} image")
    coords = np.array([[c.x, c.y] for c in ordered], dtype=np.float32)
    labels = np.array([1 if c.is_positive else 0 for c in ordered], dtype=np.int32)
    return coords, labels


def drops_previous_mask(clicks: Sequence[Click], policy: MaskReset) -> bool:
    """Whether the previous low-res logits are dropped before predicting for ``clicks``.

    ``first_click`` (ours): only the first click of an instance has no mask prompt.
    ``upstream_two_slots``: the RClicks SAM/SAM2 wrappers drop it whenever their padded
    point tensor has exactly two slots. Positives and negatives are padded to the same
    length (at least 1), so that is ``n_pos <= 1 and n_neg <= 1``: the first click, and
    also a negative second click (rclicks.md §4.6).
    """
    if policy not in ("first_click", "upstream_two_slots"):
        raise ValueError(f"unknown mask_reset {policy!r}; expected 'first_click' or 'upstream_two_slots'")
    if len(clicks) <= 1:
        return True
    if policy == "first_click":
        return False
    n_pos = sum(c.is_positive for c in clicks)
    return n_pos <= 1 and len(clicks) - n_pos <= 1


class ClickPredictor(ABC):
    """Optional base class for predictors: checks inputs so subclasses only do the model work.

    Subclasses implement ``_encode(image)`` (once per image), ``_reset_prompts()`` (once
    per instance) and ``_predict(clicks) -> H x W`` probabilities. ``predict`` checks the
    clicks and the output (shape, dtype float32, range [0, 1]).
    """

    threshold: float = 0.5

    def __init__(self) -> None:
        self._image: np.ndarray | None = None

    @property
    def image_hw(self) -> tuple[int, int]:
        if self._image is None:
            raise RuntimeError(f"{type(self).__name__}: call set_image() before predict()")
        return self._image.shape[0], self._image.shape[1]

    def set_image(self, image: np.ndarray) -> None:
        self._image = check_image(image)
        self._encode(self._image)
        self.reset()

    def reset(self) -> None:
        self._reset_prompts()

    def predict(self, clicks: list[Click]) -> np.ndarray:
        height, width = self.image_hw
        clicks_to_points(clicks, (height, width))  # validates
        probs = np.asarray(self._predict(list(clicks)), dtype=np.float32)
        if probs.shape != (height, width):
            raise RuntimeError(f"{type(self).__name__} returned shape {probs.shape}, expected {(height, width)}")
        low, high = float(probs.min()), float(probs.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise RuntimeError(f"{type(self).__name__} returned values in [{low}, {high}], expected probabilities")
        return probs

    @abstractmethod
    def _encode(self, image: np.ndarray) -> None: ...

    @abstractmethod
    def _reset_prompts(self) -> None: ...

    @abstractmethod
    def _predict(self, clicks: list[Click]) -> np.ndarray: ...
