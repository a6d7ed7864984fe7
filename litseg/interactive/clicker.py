"""Simulated users for the interactive-segmentation benchmark (RITM / RClicks protocol).

The RITM baseline user (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance",
2021; kept unchanged as the sign rule of RClicks, Antonov et al., NeurIPS 2024) looks at
the current errors and clicks at the pixel farthest from any error boundary:

* ``fn = gt & ~pred & ~ignore`` and ``fp = ~gt & pred & ~ignore``;
* each error map is padded with a 1-pixel zero border (so the image border counts as a
  boundary), put through an exact Euclidean distance transform, cropped back and
  multiplied by the not-clicked map (a pixel is never clicked twice);
* the click is positive iff ``max(DT_fn) > max(DT_fp)`` (strict: a tie is negative);
* it goes to the first pixel in row-major order where the chosen DT is maximal.

Every click strategy (the baseline, replayed real clicks, the clickability-model sampler)
implements :class:`ClickStrategy`. Samplers that only change *where* the user clicks
subclass :class:`ErrorDrivenStrategy`, which fixes the sign to RITM's rule and hands them
the full :class:`ErrorState` plus :func:`baseline_location` as the fallback.

Deliberate difference from RITM: when no un-clicked error pixel is left (perfect mask, or
every remaining error pixel already clicked), RITM takes the argmax of an all-zero map,
i.e. a *negative* click at ``(0, 0)``, which can damage a perfect mask. Here the simulated
user stops instead (:func:`baseline_location` returns ``None``); the episode loop keeps
the last prediction for the remaining clicks (see :mod:`litseg.interactive.episode`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from litseg.geometry import padded_distance_transform
from litseg.interactive.types import Click


@dataclass(frozen=True)
class ErrorState:
    """What a simulated user sees before its next click (all arrays ``H x W``).

    ``dt_fn`` / ``dt_fp`` are the padded exact L2 distance transforms of ``fn`` / ``fp``,
    already multiplied by ``not_clicked`` (0 on clicked pixels).
    """

    fn: np.ndarray  # bool: object pixels the prediction misses
    fp: np.ndarray  # bool: background pixels the prediction covers
    dt_fn: np.ndarray  # float32
    dt_fp: np.ndarray  # float32
    not_clicked: np.ndarray  # bool: False where a click was already placed
    is_positive: bool  # RITM's sign: max(dt_fn) > max(dt_fp), strictly

    @property
    def error(self) -> np.ndarray:
        """The error region of the chosen sign (``fn`` for a positive click, else ``fp``)."""
        return self.fn if self.is_positive else self.fp

    @property
    def dt(self) -> np.ndarray:
        """The distance transform of the chosen sign."""
        return self.dt_fn if self.is_positive else self.dt_fp

    @property
    def has_error(self) -> bool:
        """Whether any un-clicked error pixel is left (of either sign).

        Every error pixel has distance >= 1 (the zero padding bounds it), so a zero
        maximum means no un-clicked error at all; and the chosen sign is the one with the
        larger maximum, so checking it suffices.
        """
        return bool(self.dt.max(initial=0.0) > 0.0)


def error_state(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray, not_clicked: np.ndarray) -> ErrorState:
    """The RITM error analysis of a prediction (all inputs boolean ``H x W``)."""
    if not (gt.shape == pred.shape == ignore.shape == not_clicked.shape):
        raise ValueError(
            f"shape mismatch: gt {gt.shape}, pred {pred.shape}, ignore {ignore.shape}, not_clicked {not_clicked.shape}"
        )
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    valid = ~ignore.astype(bool)
    not_clicked = not_clicked.astype(bool)
    fn = gt & ~pred & valid
    fp = ~gt & pred & valid
    dt_fn = padded_distance_transform(fn) * not_clicked
    dt_fp = padded_distance_transform(fp) * not_clicked
    is_positive = bool(dt_fn.max(initial=0.0) > dt_fp.max(initial=0.0))
    return ErrorState(fn=fn, fp=fp, dt_fn=dt_fn, dt_fp=dt_fp, not_clicked=not_clicked, is_positive=is_positive)


def baseline_location(state: ErrorState) -> tuple[int, int] | None:
    """RITM's click location ``(y, x)``: the first row-major argmax of the chosen DT.

    ``None`` when no un-clicked error pixel is left (the user stops; RITM would return
    ``(0, 0)`` here, see the module docstring).
    """
    if not state.has_error:
        return None
    flat = int(np.argmax(state.dt))  # np.argmax returns the first maximum in C (row-major) order
    y, x = np.unravel_index(flat, state.dt.shape)
    return int(y), int(x)


# ----------------------------------------------------------------------------- strategies


class ClickStrategy(ABC):
    """A simulated user: decides every click of an instance episode.

    The episode loop calls :meth:`start_instance` once per instance, then
    :meth:`next_click` once per click with the current :class:`ErrorState`. Returning
    ``None`` ends the user's clicking for this instance.

    ``group`` is the :class:`litseg.metrics.noc.NoCMetric` group its trajectories are filed
    under: 0 for the baseline; the RClicks clicking groups use 1..10.
    """

    name: ClassVar[str] = ""
    group: int = 0

    def start_instance(self, image: np.ndarray, gt: np.ndarray, ignore: np.ndarray, rng: np.random.Generator) -> None:
        """Begin an instance: keep what a location sampler may need.

        ``rng`` is the per-image generator (``litseg.seeding.item_rng(seed, dataset,
        image_stem)``), shared by the instances of an image in their fixed order.
        """
        self.image = image
        self.gt = gt
        self.ignore = ignore
        self.rng = rng

    @abstractmethod
    def next_click(self, state: ErrorState, index: int) -> Click | None:
        """The click number ``index`` (0-based) of the episode, or ``None`` to stop."""


class ErrorDrivenStrategy(ClickStrategy):
    """A strategy whose sign is RITM's and whose location is chosen by :meth:`locate`.

    A sampler (e.g. the clickability-model click sampler) overrides only :meth:`locate`;
    it gets the whole :class:`ErrorState` (``fn``, ``fp``, DTs, ``not_clicked``, the
    chosen ``error`` region) and can fall back to ``baseline_location(state)``.
    """

    def next_click(self, state: ErrorState, index: int) -> Click | None:
        if not state.has_error:
            return None
        y, x = self.locate(state)
        return Click(y=int(y), x=int(x), is_positive=state.is_positive, index=index)

    @abstractmethod
    def locate(self, state: ErrorState) -> tuple[int, int]:
        """Where to click, given that ``state.has_error`` holds."""


STRATEGIES: dict[str, type[ClickStrategy]] = {}


def register_strategy(cls: type[ClickStrategy]) -> type[ClickStrategy]:
    """Class decorator: make a strategy buildable by its ``name`` (config value)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(name: str, **kwargs: object) -> ClickStrategy:
    """Build a registered strategy by name; an unknown name lists the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown click strategy '{name}'; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


@register_strategy
class BaselineClicker(ErrorDrivenStrategy):
    """The RITM baseline user: the centre (DT argmax) of the larger error."""

    name = "baseline"

    def locate(self, state: ErrorState) -> tuple[int, int]:
        loc = baseline_location(state)
        assert loc is not None  # next_click only asks when state.has_error
        return loc


class ReplayClicks(ClickStrategy):
    """Replays given clicks (e.g. real users' clicks) in order, then stops.

    ``clicks`` are ``(y, x, is_positive)`` in image pixel coordinates. The error state is
    ignored: a real user's click is taken as it was made.
    """

    name = "replay"

    def __init__(self, clicks: Sequence[tuple[int, int, bool]]) -> None:
        self.clicks = [(int(y), int(x), bool(pos)) for y, x, pos in clicks]

    def next_click(self, state: ErrorState, index: int) -> Click | None:
        if index >= len(self.clicks):
            return None
        y, x, pos = self.clicks[index]
        return Click(y=y, x=x, is_positive=pos, index=index)

