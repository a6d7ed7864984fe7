"""The one letterbox: fit an image into a ``size x size`` square without distorting it.

The longer side becomes ``size`` (integer division for the shorter one, at least 1 px), and the
resized image sits either centred (``anchor="centre"``: RClicks at 416, ConverSeg at 1024) or in
the top-left corner (``anchor="top_left"``: SAM-style 1024 inputs, SAOM). Everything outside the
image is ``pad_value``. Images resize bilinearly by default; ``interpolation="area_down_linear_up"``
(ConverSeg's training letterbox) uses INTER_AREA when the image shrinks and INTER_LINEAR when it
grows or keeps its size. :meth:`Letterbox.invert` crops the valid region of a ``size x size`` map
and resizes it back to the image frame, so predictions return to the image exactly.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from litseg.imaging import normalize

Anchor = Literal["centre", "top_left"]
ANCHORS: tuple[str, ...] = ("centre", "top_left")
Interpolation = Literal["linear", "area_down_linear_up"]
INTERPOLATIONS: tuple[str, ...] = ("linear", "area_down_linear_up")


class Letterbox(NamedTuple):
    """Where an ``height x width`` image sits inside the ``size x size`` letterbox.

    A NamedTuple (immutable, and passes through Lightning's batch transfer unchanged). Build it
    with :meth:`fit`.
    """

    height: int
    width: int
    size: int
    top: int
    left: int
    inner_height: int
    inner_width: int
    pad_value: float = 0.0

    @classmethod
    def fit(cls, height: int, width: int, size: int, anchor: Anchor = "centre", pad_value: float = 0.0) -> Letterbox:
        """The longer side becomes ``size`` (the shorter: integer division, >= 1 px), placed at ``anchor``."""
        if height < 1 or width < 1:
            raise ValueError(f"cannot letterbox an empty {width}x{height} image")
        if size < 1:
            raise ValueError(f"letterbox size must be positive, got {size}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if height > width:
            inner_h, inner_w = size, max(1, width * size // height)
        else:
            inner_h, inner_w = max(1, height * size // width), size
        top, left = ((size - inner_h) // 2, (size - inner_w) // 2) if anchor == "centre" else (0, 0)
        return cls(height, width, size, top, left, inner_h, inner_w, float(pad_value))

    @property
    def valid(self) -> tuple[slice, slice]:
        """Row / column slices of the image inside the letterbox."""
        return slice(self.top, self.top + self.inner_height), slice(self.left, self.left + self.inner_width)

    @property
    def shrinks(self) -> bool:
        """True when the image is made smaller (its longer side exceeds ``size``)."""
        return max(self.height, self.width) > self.size

    def cv2_interpolation(self, interpolation: Interpolation = "linear") -> int:
        """The OpenCV flag of an image ``interpolation``: ``linear`` -> INTER_LINEAR;
        ``area_down_linear_up`` -> INTER_AREA when :attr:`shrinks`, else INTER_LINEAR."""
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if interpolation == "area_down_linear_up" and self.shrinks:
            return cv2.INTER_AREA
        return cv2.INTER_LINEAR

    def _resize(self, array: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        if array.shape[:2] != (self.height, self.width):
            raise ValueError(f"array {array.shape[:2]} does not match the letterbox source {(self.height, self.width)}")
        return cv2.resize(array, (self.inner_width, self.inner_height), interpolation=interpolation)

    def array(self, array: np.ndarray, nearest: bool = False, interpolation: Interpolation = "linear") -> np.ndarray:
        """H x W (x C) array -> size x size (x C), same dtype: resized (bilinear, or nearest for label
        maps; ``interpolation`` as in :meth:`cv2_interpolation` when not ``nearest``), padded with
        ``pad_value``."""
        array = np.asarray(array)
        flag = cv2.INTER_NEAREST if nearest else self.cv2_interpolation(interpolation)
        out = np.full((self.size, self.size, *array.shape[2:]), self.pad_value, dtype=array.dtype)
        out[self.valid] = self._resize(array, flag).reshape(
            self.inner_height, self.inner_width, *array.shape[2:])
        return out

    def image(self, image_uint8: np.ndarray, interpolation: Interpolation = "linear") -> torch.Tensor:
        """RGB uint8 H x W x 3 -> 3 x size x size: resized (bilinear by default, see
        :meth:`cv2_interpolation`; uint8 as cv2 reads it), then ImageNet-normalised, then padded with
        ``pad_value`` (0 = the ImageNet mean)."""
        out = torch.full((3, self.size, self.size), self.pad_value)
        flag = self.cv2_interpolation(interpolation)
        # Resizing before normalising costs a tenth on large images and differs by < 0.5 grey levels.
        out[(slice(None), *self.valid)] = normalize(self._resize(np.asarray(image_uint8, dtype=np.uint8), flag))
        return out

    def mask(self, array: np.ndarray, pad_value: float = 0.0) -> np.ndarray:
        """H x W float map -> size x size float32 (bilinear resize; padding ``pad_value``, 0 by default
        whatever the image padding is)."""
        out = np.full((self.size, self.size), pad_value, dtype=np.float32)
        out[self.valid] = self._resize(np.asarray(array, dtype=np.float32))
        return out

    def invert(self, letterboxed: np.ndarray | torch.Tensor) -> np.ndarray:
        """size x size map -> H x W float32: crop the valid region, resize it back (bilinear)."""
        t = torch.as_tensor(letterboxed, dtype=torch.float32)
        if t.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected a {self.size}x{self.size} map, got {tuple(t.shape)}")
        crop = t.reshape(1, 1, self.size, self.size)[(..., *self.valid)]
        # antialias=True matches torchvision's Resize (used upstream) when shrinking; no effect when enlarging.
        out = F.interpolate(crop, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=True)
        return out[0, 0].numpy()


def unletterbox(letterboxed: np.ndarray | torch.Tensor, box: Letterbox) -> np.ndarray:
    """Exact inverse of the letterbox geometry: the model's map in the image frame (H x W)."""
    return box.invert(letterboxed)
