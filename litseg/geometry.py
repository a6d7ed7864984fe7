"""Mask geometry shared by the click simulator and the weak-label generator."""

from __future__ import annotations

import cv2
import numpy as np


def padded_distance_transform(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each ``mask`` pixel to the nearest non-mask pixel or
    to the outside of the image (1-pixel zero padding), as float32.

    ``cv2.DIST_MASK_PRECISE`` is the exact algorithm (Felzenszwalb & Huttenlocher), equal
    to ``scipy.ndimage.distance_transform_edt`` (tested) and about 8x faster.
    """
    padded = np.pad(mask.astype(np.uint8), 1, mode="constant")
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]
