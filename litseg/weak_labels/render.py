"""Rendering weak labels into training targets, after geometric augmentation.

Points and scribbles are sparse: a 1-pixel label resized with nearest-neighbour
interpolation is lost or moved. So the datamodule sends point coordinates and
scribble vertices through albumentations as **keypoints** (the same ``Compose`` call
as the image and the dense masks) and draws the sparse target *afterwards*, at the
output resolution (:func:`flatten_keypoints` -> transform -> :func:`unflatten_keypoints`
-> :func:`render_sparse_target`). Box pseudo-masks are dense, so they are drawn at the
original resolution (:func:`render_box_target`) and transformed as a mask.

Coordinate convention: albumentations' own for ``"xy"`` keypoints and OpenCV's for
drawing: ``(x, y)`` is the *centre* of the pixel in column ``x``, row ``y``; fractional
values after a transform are rounded to the nearest pixel. The weak-label file stores
integer pixel indices in the same convention, so untransformed labels render as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from litseg.imaging import IGNORE_INDEX

KeypointKind = Literal["fg_point", "bg_point", "fg_scribble", "bg_scribble"]
KeypointLabel = tuple[KeypointKind, int]
Coordinate = Sequence[float]  # (x, y)

_KINDS: tuple[KeypointKind, ...] = ("fg_point", "bg_point", "fg_scribble", "bg_scribble")


@dataclass
class SparseKeypoints:
    """Points and scribbles of one image, in pixel coordinates ``(x, y)``."""

    fg_points: list[tuple[float, float]] = field(default_factory=list)
    bg_points: list[tuple[float, float]] = field(default_factory=list)
    fg_scribbles: list[list[tuple[float, float]]] = field(default_factory=list)
    bg_scribbles: list[list[tuple[float, float]]] = field(default_factory=list)


# ----------------------------------------------------------------------------- keypoints


def flatten_keypoints(
    fg_points: Sequence[Coordinate],
    bg_points: Sequence[Coordinate],
    fg_scribbles: Sequence[Sequence[Coordinate]],
    bg_scribbles: Sequence[Sequence[Coordinate]],
) -> tuple[np.ndarray, list[KeypointLabel]]:
    """Pack points and scribble vertices into one ``N x 2`` float32 keypoint array.

    Returns the array and a parallel list of ``(kind, index)`` labels: ``index`` is the
    point's index for points and the scribble's index for scribble vertices (whose order
    along the scribble is the order in the array). Pass the array as ``keypoints=`` with
    ``A.KeypointParams(format="xy", remove_invisible=False)`` so no keypoint is dropped,
    then :func:`unflatten_keypoints` with the same labels.
    """
    coords: list[Coordinate] = []
    labels: list[KeypointLabel] = []
    for kind, points in (("fg_point", fg_points), ("bg_point", bg_points)):
        for i, p in enumerate(points):
            coords.append(p)
            labels.append((kind, i))
    for kind, scribbles in (("fg_scribble", fg_scribbles), ("bg_scribble", bg_scribbles)):
        for i, scribble in enumerate(scribbles):
            if len(scribble) == 0:
                raise ValueError(f"{kind} {i} has no vertices")
            for p in scribble:
                coords.append(p)
                labels.append((kind, i))
    array = np.asarray(coords, dtype=np.float32).reshape(-1, 2) if coords else np.zeros((0, 2), np.float32)
    return array, labels


def unflatten_keypoints(keypoints: Sequence[Coordinate] | np.ndarray,
                        labels: Sequence[KeypointLabel]) -> SparseKeypoints:
    """Inverse of :func:`flatten_keypoints` on (transformed) keypoints.

    A different number of keypoints than labels means the transform dropped some
    (``remove_invisible`` left at True): that is an error, not something to paper over.
    """
    array = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2) if len(keypoints) else np.zeros((0, 2))
    if len(array) != len(labels):
        raise ValueError(
            f"{len(array)} keypoints for {len(labels)} labels: the transform dropped keypoints "
            "(use A.KeypointParams(format='xy', remove_invisible=False))"
        )
    out = SparseKeypoints()
    targets = {"fg_point": out.fg_points, "bg_point": out.bg_points,
               "fg_scribble": out.fg_scribbles, "bg_scribble": out.bg_scribbles}
    for (x, y), (kind, index) in zip(array.tolist(), labels, strict=True):
        if kind not in targets:
            raise ValueError(f"unknown keypoint kind {kind!r}; expected one of {_KINDS}")
        bucket = targets[kind]
        if kind.endswith("_point"):
            if index != len(bucket):
                raise ValueError(f"{kind} labels out of order: got index {index}, expected {len(bucket)}")
            bucket.append((x, y))
        else:
            if index == len(bucket):
                bucket.append([])
            elif index != len(bucket) - 1:
                raise ValueError(f"{kind} labels out of order: got index {index} after {len(bucket) - 1}")
            bucket[index].append((x, y))
    return out


# ----------------------------------------------------------------------------- drawing


def _to_pixels(coords: Sequence[Coordinate] | np.ndarray, height: int | None = None,
               width: int | None = None) -> np.ndarray:
    """Round ``(x, y)`` coordinates to pixel indices (half away from zero, the same for both
    flip directions; np.rint would round 0.5 to even).

    With a frame size, a coordinate less than one pixel outside the frame is moved onto
    the edge pixel: albumentations scales keypoints by ``x * s`` but flips them as pixel
    indices, so after down-scaling the last source column lands at ``(W - 1) * s``, which
    rounds to ``w``: without this, points on the image edge would be lost.
    """
    array = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(array).all():
        raise ValueError(f"non-finite coordinates in {array.tolist()}")
    if height is not None and width is not None:
        for axis, size in ((0, width), (1, height)):
            values = array[:, axis]
            near = (values > -1.0) & (values < size)
            values[near] = np.clip(values[near], 0.0, size - 1.0)
    return (np.sign(array) * np.floor(np.abs(array) + 0.5)).astype(np.int32)


def polyline_pixels(vertices: Sequence[Coordinate]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the 1-pixel-wide rasterisation of a polyline (OpenCV, 8-connected).

    This is exactly what :func:`render_sparse_target` paints for ``scribble_width=1``;
    the generator uses it to check that every segment stays inside its region.
    """
    pts = _to_pixels(vertices)
    if len(pts) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    origin = pts.min(axis=0)
    local = pts - origin
    canvas = np.zeros((int(local[:, 1].max()) + 1, int(local[:, 0].max()) + 1), np.uint8)
    cv2.polylines(canvas, [local.reshape(-1, 1, 2)], isClosed=False, color=1, thickness=1, lineType=cv2.LINE_8)
    canvas[local[:, 1], local[:, 0]] = 1  # a single-vertex polyline is its pixel
    ys, xs = np.nonzero(canvas)
    return ys + int(origin[1]), xs + int(origin[0])


def _draw_layer(height: int, width: int, points: Sequence[Coordinate], scribbles: Sequence[Sequence[Coordinate]],
                point_radius: int, scribble_width: int) -> np.ndarray:
    layer = np.zeros((height, width), np.uint8)
    for x, y in _to_pixels(points, height, width).tolist():
        # OpenCV clips to the canvas: a disk partly outside the frame paints its visible part.
        cv2.circle(layer, (x, y), point_radius, color=1, thickness=-1, lineType=cv2.LINE_8)
    for scribble in scribbles:
        pts = _to_pixels(scribble, height, width)
        if len(pts) == 1:
            cv2.circle(layer, tuple(pts[0].tolist()), scribble_width // 2, color=1, thickness=-1)
        elif len(pts) > 1:
            cv2.polylines(layer, [pts.reshape(-1, 1, 2)], isClosed=False, color=1,
                          thickness=scribble_width, lineType=cv2.LINE_8)
    return layer.astype(bool)


def render_sparse_target(
    height: int,
    width: int,
    fg_points: Sequence[Coordinate],
    bg_points: Sequence[Coordinate],
    fg_scribbles: Sequence[Sequence[Coordinate]],
    bg_scribbles: Sequence[Sequence[Coordinate]],
    fg_value: int,
    point_radius: int = 2,
    scribble_width: int = 3,
    ignore_value: int = IGNORE_INDEX,
) -> np.ndarray:
    """Draw a partial-cross-entropy target: ``H x W`` uint8.

    Background labels -> 0, foreground labels -> ``fg_value``, unlabelled -> ``ignore_value``.
    Points are filled disks of ``point_radius`` (0 = one pixel), scribbles polylines of
    ``scribble_width`` pixels. Coordinates are rounded to the nearest pixel; one less than
    a pixel outside the frame counts as on its edge (see ``_to_pixels``); anything
    farther out is clipped away, and a scribble partly outside is drawn for its visible
    part. A pixel labelled both foreground and background (possible only after strong
    down-scaling) is set to ``ignore_value``: contradictory labels teach nothing.
    """
    if not 0 < fg_value < 256 or fg_value == ignore_value:
        raise ValueError(f"fg_value must be in 1..255 and differ from ignore_value, got {fg_value}")
    if point_radius < 0 or scribble_width < 1:
        raise ValueError(f"point_radius must be >= 0 and scribble_width >= 1, got {point_radius}, {scribble_width}")
    fg = _draw_layer(height, width, fg_points, fg_scribbles, point_radius, scribble_width)
    bg = _draw_layer(height, width, bg_points, bg_scribbles, point_radius, scribble_width)
    target = np.full((height, width), ignore_value, np.uint8)
    target[bg & ~fg] = 0
    target[fg & ~bg] = fg_value
    return target


def _span(first: int, last: int) -> slice:
    """Slice of the inclusive range ``first..last`` clipped at 0 (negative ends must not wrap)."""
    if last < first or last < 0:
        return slice(0, 0)
    return slice(max(first, 0), last + 1)


def render_box_target(
    height: int,
    width: int,
    boxes: Sequence[Sequence[int]],
    fg_value: int,
    edge_ignore: int = 0,
    ignore_value: int = IGNORE_INDEX,
) -> np.ndarray:
    """Box pseudo-mask: ``H x W`` uint8, inside any box -> ``fg_value``, outside all boxes -> 0.

    Boxes are ``[x0, y0, x1, y1]`` with inclusive pixel coordinates. With ``edge_ignore > 0``
    the band of that many pixels just inside each box edge is ``ignore_value``: a tight box
    is certain about the outside (background) but its rim, and corners above all, mixes
    object and background. A pixel in the band of one box but the core of another is
    foreground. Render at the original resolution and transform it like a mask.
    """
    if edge_ignore < 0:
        raise ValueError(f"edge_ignore must be >= 0, got {edge_ignore}")
    inside = np.zeros((height, width), bool)
    core = np.zeros((height, width), bool)
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {list(box)} has x1 < x0 or y1 < y0")
        inside[_span(y0, y1), _span(x0, x1)] = True
        core[_span(y0 + edge_ignore, y1 - edge_ignore), _span(x0 + edge_ignore, x1 - edge_ignore)] = True
    target = np.zeros((height, width), np.uint8)
    target[inside] = ignore_value
    target[core] = fg_value
    return target
