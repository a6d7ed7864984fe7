"""RClicks ground-truth click maps, error masks and the 416x416 letterbox (RClicks, NeurIPS 2024).

A training target for the clickability model is built from all real clicks of one
"full_stem" (image x instance x click type): a Gaussian around every click (sigma
relative to a Full-HD diagonal), normalised by its maximum, times the error region
blurred by a small radius (spec note 1.5). Inputs are letterboxed to 416x416 after
ImageNet normalisation, so the padding is 0 in normalised space (note 1.2), and
:func:`unletterbox` maps a prediction back to the image frame exactly (both from the one
letterbox, :mod:`litseg.letterbox`, re-exported here).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from litseg.io import DataError, atomic_path
from litseg.letterbox import Letterbox, unletterbox  # noqa: F401  (re-exported: the shared one, centred at 416)

ClickType = Literal["first", "fn", "fp"]
CLICK_TYPES: tuple[str, ...] = ("first", "fn", "fp")
FULL_HD_DIAGONAL = math.hypot(1080, 1920)
DEFAULT_SIZE = 416


# ----------------------------------------------------------------------------- error masks


def error_mask(click_type: str, gt_mask: np.ndarray, previous_mask: np.ndarray | None = None) -> np.ndarray:
    """Where the user is expected to click (float32 0/1, note 1.2).

    ``first``: the whole object; ``fn``: object pixels the previous mask missed;
    ``fp``: background pixels the previous mask covered.
    """
    gt = (np.asarray(gt_mask) > 0).astype(np.float32)
    if click_type == "first":
        return gt
    if click_type not in ("fn", "fp"):
        raise ValueError(f"click_type must be one of {CLICK_TYPES}, got {click_type!r}")
    if previous_mask is None:
        raise ValueError(f"a '{click_type}' click needs the previous mask")
    if previous_mask.shape != gt.shape:
        raise ValueError(f"previous mask {previous_mask.shape} and GT mask {gt.shape} differ in size")
    prev = (np.asarray(previous_mask) > 0).astype(np.float32)
    return gt * (1.0 - prev) if click_type == "fn" else (1.0 - gt) * prev


# ----------------------------------------------------------------------------- GT click maps


def sigma_in_pixels(sigma: float, height: int, width: int) -> float:
    """The paper's sigma is relative to a 1920x1080 diagonal; scale it to this image."""
    return sigma * math.hypot(height, width) / FULL_HD_DIAGONAL


def gaussian_kernel_size(sigma_px: float) -> int:
    """``ceil(7 sigma)`` rounded up to the next odd number (OpenCV needs odd kernels)."""
    size = max(1, math.ceil(7.0 * sigma_px))
    return size if size % 2 == 1 else size + 1


def click_radius(height: int, width: int) -> int:
    """Blur radius of the error prior: 5 px per 500x500 diagonal, truncated (0 for small images)."""
    return int(5 * math.hypot(height, width) / (500 * math.sqrt(2)))


def clip_clicks(clicks_xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Round (x, y) click coordinates to pixels and clip them into the image (N x 2 int64)."""
    xy = np.rint(np.asarray(clicks_xy, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    xy[:, 0] = np.clip(xy[:, 0], 0, width - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, height - 1)
    return xy


def click_gaussians(clicks_xy: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Max-normalised sum of Gaussians around the clicks (steps 1-4 of note 1.5), float32 H x W."""
    xy = clip_clicks(clicks_xy, height, width)
    if len(xy) == 0:
        raise ValueError("a click map needs at least one click")
    impulses = np.zeros((height, width), dtype=np.float32)
    # Equal weight per click; coinciding clicks accumulate. The weight's scale cancels in step 4.
    np.add.at(impulses, (xy[:, 1], xy[:, 0]), 1.0 / len(xy))
    sigma_px = sigma_in_pixels(sigma, height, width)
    k = gaussian_kernel_size(sigma_px)
    blurred = cv2.GaussianBlur(impulses, (k, k), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_CONSTANT)
    peak = float(blurred.max())
    if peak <= 0:  # cannot happen with >= 1 click inside the image, but never divide by zero
        raise ValueError("click map is all zero after blurring")
    return blurred / peak


def soft_error_prior(error: np.ndarray) -> np.ndarray:
    """The error mask blurred by :func:`click_radius` (scipy, reflect borders); radius 0 = unchanged."""
    error = np.asarray(error, dtype=np.float32)
    radius = click_radius(*error.shape[:2])
    return gaussian_filter(error, sigma=radius, mode="reflect") if radius > 0 else error.copy()


def gt_click_map(clicks_xy: np.ndarray, error: np.ndarray, sigma: float) -> np.ndarray:
    """Ground-truth clickability map of one full_stem: soft error prior x click Gaussians (note 1.5).

    Not renormalised: the KL loss normalises it to sum 1.
    """
    height, width = error.shape[:2]
    return (soft_error_prior(error) * click_gaussians(clicks_xy, height, width, sigma)).astype(np.float32)


# ----------------------------------------------------------------------------- clickability maps


def uniform_baseline(error: np.ndarray) -> np.ndarray:
    """UD baseline: every error pixel equally likely (``error / max``), float32."""
    error = np.asarray(error, dtype=np.float32)
    peak = float(error.max(initial=0.0))
    return error / peak if peak > 0 else np.zeros_like(error)


def distance_transform_baseline(error: np.ndarray) -> np.ndarray:
    """DT baseline: exact L2 distance to the error region's boundary / max (no border padding)."""
    dt = cv2.distanceTransform((np.asarray(error) > 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    peak = float(dt.max(initial=0.0))
    return dt / peak if peak > 0 else np.zeros_like(dt)


@torch.no_grad()
def predict_clickability(net: torch.nn.Module, image: np.ndarray, target_mask: np.ndarray, error: np.ndarray,
                         size: int = DEFAULT_SIZE) -> np.ndarray:
    """The network's clickability map of one image in the image frame (H x W float32, [0, 1]).

    Letterbox image and ``[target_mask, error]`` to ``size``, run ``net`` (in whatever mode
    and on whatever device it is), unletterbox and min-max normalise once more (note 1.4).
    """
    box = Letterbox.fit(*target_mask.shape[:2], size)
    device = next(net.parameters()).device
    image_t = box.image(image)[None].to(device)
    maps = torch.from_numpy(np.stack([box.mask(target_mask), box.mask(error)]))[None].to(device)
    full = box.invert(net(image_t, maps)[0, 0].float().cpu())
    lo, hi = float(full.min()), float(full.max())
    return ((full - lo) / (hi - lo + 1e-9)).astype(np.float32)


# ----------------------------------------------------------------------------- cache

_SAFE_STEM = re.compile(r"^[A-Za-z0-9._\-]+$")


class ClickMapCache:
    """GT click maps cached as ``.npy`` files named ``<full_stem>_sigma=<sigma>.npy``.

    Computing a map at full resolution costs two large blurs; caching them (like upstream's
    ``generate_click_maps.py``) makes later epochs cheap. No pickle is involved.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, full_stem: str, sigma: float) -> Path:
        if not _SAFE_STEM.match(full_stem):
            raise ValueError(f"full_stem {full_stem!r} cannot be used as a file name")
        return self.folder / f"{full_stem}_sigma={sigma:g}.npy"

    def get(self, full_stem: str, sigma: float, shape: tuple[int, int],
            compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached map, or ``compute()`` written to the cache; a cached map of the wrong shape is an error."""
        path = self.path(full_stem, sigma)
        if path.is_file():
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise DataError(path, f"cannot read cached click map ({err})") from err
            if arr.shape != tuple(shape):
                raise DataError(path, f"cached click map has shape {arr.shape}, expected {tuple(shape)}; delete it")
            return arr.astype(np.float32, copy=False)
        arr = np.asarray(compute(), dtype=np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        return arr
