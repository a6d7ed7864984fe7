"""RClicks clicking groups: sample a click from a band of a clickability map's probability mass.

RClicks (Antonov et al., NeurIPS 2024, spec notes 2.2-2.5) restricts the clickability map
to the current error region and the not-yet-clicked pixels, sorts its values, and keeps
the pixels whose values lie between the thresholds that cut the cumulative mass at
``low`` and ``high``. Clicking group G_k uses the band ``[(k-1)/10, k/10]``: G1 holds the
*least* likely pixels (bottom 10% of the mass), G10 the *most* likely. A click is one
draw proportional to the map value inside the band (the band is not made uniform). An
empty band (or an all-zero map) falls back to RITM's baseline click.

:class:`ClickabilityStrategy` is the simulated user of the benchmark built on this: the
sign of each click is RITM's, its location is drawn from the clickability map of the
trained network (or of the UD / DT baselines) for the current error region.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from litseg.interactive.clicker import ErrorDrivenStrategy, ErrorState, baseline_location, register_strategy
from litseg.nets.rclicks import load_clickability_net
from litseg.rclicks.maps import DEFAULT_SIZE, distance_transform_baseline, predict_clickability, uniform_baseline

GROUP_COUNT = 10
SAMPLE_GROUP = 11  # NoCMetric group id of unsliced sampling (band [0, 1], RClicks' "Sample")
ClickabilitySource = Literal["network", "uniform", "distance_transform"]


def group_band(group: int, count: int = GROUP_COUNT) -> tuple[float, float]:
    """``(low, high)`` of clicking group ``G_group`` (1-based): ``((group-1)/count, group/count)``."""
    if not 1 <= group <= count:
        raise ValueError(f"clicking group must be in 1..{count}, got {group}")
    return (group - 1) / count, group / count


def check_band(low: float, high: float) -> None:
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")


def band_thresholds(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The value thresholds ``(t_lo, t_hi)`` that cut the cumulative mass at ``low`` and ``high``.

    ``v`` = all values sorted ascending (zeros included; they add no mass), ``c`` = its
    cumulative sum, ``S`` = the total. ``i_lo`` = first index with ``c >= low S``
    (searchsorted left), ``i_hi`` = first index with ``c > high S`` (searchsorted right),
    clamped to the last index.
    """
    check_band(low, high)
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    c = np.cumsum(v)
    total = c[-1]
    i_lo = min(int(np.searchsorted(c, low * total, side="left")), len(v) - 1)
    i_hi = min(int(np.searchsorted(c, high * total, side="right")), len(v) - 1)
    return float(v[i_lo]), float(v[i_hi])


def band_map(prob_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """The map with values outside ``[t_lo, t_hi]`` zeroed (inclusive: ties at both ends stay).

    The thresholds are taken over the positive values only: zeros add no mass, so they can
    only move ``t_lo`` down to 0, which keeps the same (zero-valued) pixels out of the band's
    mass. The band is identical to slicing over all pixels (tested) and the sort is over the
    error region only, not the whole image.
    """
    prob_map = np.asarray(prob_map, dtype=np.float64)
    positive = prob_map[prob_map > 0]
    if positive.size == 0:
        return np.zeros_like(prob_map)
    t_lo, t_hi = band_thresholds(positive, low, high)
    return prob_map * ((prob_map >= t_lo) & (prob_map <= t_hi))


def restrict_map(raw: np.ndarray, error: np.ndarray, not_clicked: np.ndarray) -> np.ndarray:
    """``raw * error * not_clicked`` (note 2.2): clicks go into the current error region, never twice."""
    raw = np.asarray(raw, dtype=np.float64)
    if not (raw.shape == error.shape == not_clicked.shape):
        raise ValueError(f"shape mismatch: map {raw.shape}, error {error.shape}, not_clicked {not_clicked.shape}")
    if not np.isfinite(raw).all() or (raw < 0).any():
        raise ValueError("a clickability map must be finite and non-negative")
    return raw * (np.asarray(error) > 0) * (np.asarray(not_clicked) > 0)


def sample_from_band(prob_map: np.ndarray, low: float, high: float,
                     rng: np.random.Generator) -> tuple[int, int] | None:
    """One ``(y, x)`` drawn proportionally to the band of ``prob_map``; ``None`` if the band has no mass.

    The draw is ``rng.choice`` over the band's non-zero pixels in row-major order, which picks
    the same pixel as a draw over all pixels (zero-probability entries leave the cumulative
    distribution unchanged) at a fraction of the cost.
    """
    band = band_map(prob_map, low, high).ravel()
    support = np.flatnonzero(band)
    if support.size == 0:
        return None
    weights = band[support]
    index = int(support[rng.choice(support.size, p=weights / weights.sum())])
    y, x = np.unravel_index(index, prob_map.shape)
    return int(y), int(x)


def sample_click_location(raw: np.ndarray, error: np.ndarray, not_clicked: np.ndarray, low: float, high: float,
                          rng: np.random.Generator, fallback: tuple[int, int] | None) -> tuple[int, int] | None:
    """Notes 2.2-2.4 in one call: restrict the map, sample from the band, else ``fallback``
    (the caller's RITM baseline click, the first row-major argmax of the error's DT)."""
    location = sample_from_band(restrict_map(raw, error, not_clicked), low, high, rng)
    return location if location is not None else fallback


@register_strategy
class ClickabilityStrategy(ErrorDrivenStrategy):
    """RClicks' simulated user: RITM's sign, location sampled from a clickability map.

    At every click the map is recomputed for the current error region ``E`` of the chosen
    sign (the whole fn or fp mask, note 2.2), restricted to ``E`` and the not-clicked
    pixels, band-sliced and sampled with the per-image generator; an empty band falls
    back to the baseline click (2.4).

    Args:
        clickability: ``network`` (a trained model, ``checkpoint`` or ``net``), or the
            ``uniform`` (UD) / ``distance_transform`` (DT) baselines.
        checkpoint: Lightning checkpoint of ``ClickabilityModel`` (``network`` only).
        clicking_group: ``k`` in 1..10 samples from the band ``[(k-1)/10, k/10]`` and files
            the trajectories under NoCMetric group ``k``. ``None`` samples from the whole
            map (``band``, default [0, 1]: the "Sample" mode), filed under group 11.
        band: explicit ``(low, high)`` when ``clicking_group`` is None.
        input_size: letterbox size of the network input (416 upstream).
        device: where the network runs (``auto``: CUDA when available).
        net: an already built network (tests, notebooks) instead of ``checkpoint``.
    """

    name = "clickability"

    def __init__(
        self,
        clickability: ClickabilitySource = "network",
        checkpoint: str | None = None,
        clicking_group: int | None = None,
        band: tuple[float, float] | None = None,
        input_size: int = DEFAULT_SIZE,
        device: str = "cpu",
        net: torch.nn.Module | None = None,
    ) -> None:
        if clicking_group is not None:
            if band is not None:
                raise ValueError("give either clicking_group or band, not both")
            self.low, self.high = group_band(clicking_group)
            self.group = clicking_group
        else:
            self.low, self.high = band if band is not None else (0.0, 1.0)
            check_band(self.low, self.high)
            self.group = SAMPLE_GROUP
        if clickability not in ("network", "uniform", "distance_transform"):
            raise ValueError(f"unknown clickability source {clickability!r}")
        self.clickability = clickability
        self.input_size = input_size
        self.net = None
        if clickability == "network":
            if (net is None) == (checkpoint is None):
                raise ValueError("the 'network' clickability needs exactly one of checkpoint or net")
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.net = (net if net is not None else load_clickability_net(checkpoint)).to(device).eval()

    def clickability_map(self, error: np.ndarray) -> np.ndarray:
        """The raw map for error region ``error`` of the current instance (H x W, [0, 1])."""
        if self.net is not None:
            return predict_clickability(self.net, self.image, self.gt, error, self.input_size)
        if self.clickability == "uniform":
            return uniform_baseline(error)
        return distance_transform_baseline(error)

    def locate(self, state: ErrorState) -> tuple[int, int]:
        error = state.error
        location = sample_click_location(self.clickability_map(error), error, state.not_clicked, self.low, self.high,
                                         self.rng, fallback=baseline_location(state))
        assert location is not None  # the baseline location exists whenever state.has_error
        return location
