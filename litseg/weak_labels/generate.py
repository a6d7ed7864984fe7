"""Weak-label generator for the weakly-supervised segmentation (WSSS) study on Oxford-IIIT Pet.

Simulates cheap annotations from the dense trimaps (1 = pet, 2 = background,
3 = border / unsure), once, deterministically under a seed:

* **objects** = connected components (8-connectivity) of the pet region with an area of at
  least ``min_object_fraction`` of the image (default 0.5 %: the pets' detached
  parts such as a tail behind a leg are kept, the specks of a few pixels that the
  label maps contain are not); if no component reaches it, the largest one.
* **point**: per object, the maximum of its distance transform (pixels outside the
  object and outside the image count as boundary), i.e. the pixel deepest inside.
  Chosen over the centroid the plan mentions, because a centroid can fall outside a
  non-convex (C-shaped, curled-up) pet. Ties: the first pixel in row-major order.
* **background points**: ``n_background_points`` pixels drawn uniformly, without
  replacement, from background pixels at least ``bg_margin`` px from any pet or
  border pixel, with ``litseg.seeding.item_rng(seed, stem)`` (order-independent).
  If no pixel is that far, the farthest background pixels are used instead.
* **scribble**: per object (and per background component of at least
  ``min_object_fraction``, the largest ``max_background_scribbles`` of them; the largest
  alone if none is that large) the region is eroded by ``scribble_erosion``
  px (halved until something is left), skeletonised
  (``skimage.morphology.skeletonize``), the longest geodesic path of the largest
  skeleton piece is found (two Dijkstra passes: exact for tree-shaped skeletons), its
  central ``scribble_length_fraction`` of arc length is kept, and it is simplified to
  vertices joined by straight segments whose rasterisation is checked to stay inside the
  eroded region (with the renderer's own :func:`litseg.weak_labels.render.polyline_pixels`), so a
  scribble drawn a few pixels wide still stays inside its region.
* **box**: per object, its tight box ``[x0, y0, x1, y1]`` in inclusive pixel coordinates.
* **tags** are implied: an image's objects (always >= 1) are its pet; labels are
  class-agnostic ("fg" = the image's pet), the datamodule maps fg to a class id of the
  chosen label set, so one file serves binary / species / breed.

All coordinates are integer pixel indices ``[x, y]`` (column, row). The file format is
described in :mod:`litseg.weak_labels.format`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from skimage.morphology import skeletonize

from litseg.geometry import padded_distance_transform
from litseg.io import DataError, index_by_stem, list_images, read_stem_list, write_json
from litseg.readers.oxford_pet import TRIMAP_VALUES, read_trimap
from litseg.seeding import item_rng
from litseg.weak_labels.format import FORMAT_NAME, FORMAT_VERSION
from litseg.weak_labels.render import polyline_pixels

PET, BACKGROUND, BORDER = TRIMAP_VALUES
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the simulated annotator (all recorded in the output file).

    Args:
        seed: seed of the background-point sampling (the only random choice).
        min_object_fraction: smallest pet (or background) component kept, as a fraction of
            the image area; if none is that large, the largest component alone.
        n_background_points: background points per image.
        bg_margin: background points keep at least this distance (px) from pet and border.
        scribble_erosion: scribbles follow the skeleton of the region eroded by this many px.
        scribble_length_fraction: central share of the longest skeleton path kept.
        max_background_scribbles: one scribble per background component, largest first, at most this many.
    """

    seed: int = 0
    min_object_fraction: float = 0.005
    n_background_points: int = 5
    bg_margin: int = 5
    scribble_erosion: int = 5
    scribble_length_fraction: float = 0.6
    max_background_scribbles: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_object_fraction < 1.0:
            raise ValueError(f"min_object_fraction must be in [0, 1), got {self.min_object_fraction}")
        if not 0.0 < self.scribble_length_fraction <= 1.0:
            raise ValueError(f"scribble_length_fraction must be in (0, 1], got {self.scribble_length_fraction}")
        for name in ("n_background_points", "bg_margin", "scribble_erosion", "max_background_scribbles"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- geometry


def connected_regions(mask: np.ndarray, min_fraction: float) -> list[np.ndarray]:
    """8-connected components of ``mask`` with area >= ``min_fraction`` of the image.

    Largest first (ties: first pixel in row-major order). If none is large enough, the
    largest alone; an empty mask gives ``[]``.
    """
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = sorted(range(count), key=lambda i: -areas[i])  # stable: label order is row-major
    keep = [i for i in order if areas[i] >= min_fraction * mask.size] or order[:1]
    return [labels == i + 1 for i in keep]


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the distance-transform maximum of a non-empty mask (first in row-major order)."""
    y, x = np.unravel_index(int(np.argmax(padded_distance_transform(mask))), mask.shape)
    return int(x), int(y)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` inclusive bounds of a non-empty mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _longest_skeleton_path(skeleton: np.ndarray) -> np.ndarray:
    """Ordered ``(y, x)`` pixels of the longest geodesic path in the largest skeleton piece."""
    coords = np.argwhere(skeleton)
    index = np.full(skeleton.shape, -1, np.int64)
    index[coords[:, 0], coords[:, 1]] = np.arange(len(coords))
    h, w = skeleton.shape
    rows, cols, weights = [], [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # half the 8-neighbourhood; made symmetric below
        ny, nx = coords[:, 0] + dy, coords[:, 1] + dx
        ok = (ny < h) & (nx >= 0) & (nx < w)
        neighbour = np.full(len(coords), -1, np.int64)
        neighbour[ok] = index[ny[ok], nx[ok]]
        has = neighbour >= 0
        rows.append(np.nonzero(has)[0])
        cols.append(neighbour[has])
        weights.append(np.full(int(has.sum()), np.hypot(dy, dx)))
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((np.concatenate([wt, wt]), (np.concatenate([r, c]), np.concatenate([c, r]))),
                       shape=(len(coords), len(coords))).tocsr()
    _, piece = connected_components(graph, directed=False)
    largest = int(np.argmax(np.bincount(piece)))
    start = int(np.nonzero(piece == largest)[0][0])
    dist = dijkstra(graph, directed=False, indices=start)
    end_a = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    dist, pred = dijkstra(graph, directed=False, indices=end_a, return_predecessors=True)
    end_b = int(np.argmax(np.where(np.isfinite(dist), dist, -1)))
    path = [end_b]
    while path[-1] != end_a:
        path.append(int(pred[path[-1]]))
    return coords[path[::-1]]


def _simplify_inside(path_yx: np.ndarray, region: np.ndarray) -> list[tuple[int, int]]:
    """Vertices ``(x, y)`` along an 8-connected path joined by straight segments whose
    rasterisation stays inside ``region``.

    From each vertex the next one is pushed as far along the path as a galloping search
    finds a segment that stays inside (consecutive path pixels always qualify, so this
    terminates); every kept segment has been checked.
    """
    def inside(i: int, j: int) -> bool:
        ys, xs = polyline_pixels([(path_yx[i, 1], path_yx[i, 0]), (path_yx[j, 1], path_yx[j, 0])])
        return bool(region[ys, xs].all())

    last = len(path_yx) - 1
    out = [(int(path_yx[0, 1]), int(path_yx[0, 0]))]
    i = 0
    while i < last:
        good, step = i + 1, 1
        while good < last and inside(i, min(good + step, last)):  # gallop: 1, 2, 4, ... ahead
            good = min(good + step, last)
            step *= 2
        bad = min(good + step, last + 1)
        while bad - good > 1:  # then bisect between the last good and the first failing end
            mid = (good + bad) // 2
            if inside(i, mid):
                good = mid
            else:
                bad = mid
        out.append((int(path_yx[good, 1]), int(path_yx[good, 0])))
        i = good
    return out


def region_scribble(region: np.ndarray, erosion: int, length_fraction: float) -> list[tuple[int, int]]:
    """A scribble ``[(x, y), ...]`` inside a non-empty region (see the module docstring).

    Always at least two vertices (equal for a one-pixel skeleton), so it draws as a line.
    """
    # Work on the region's bounding box (plus a 1-pixel frame): same result, much less work.
    x0, y0, x1, y1 = tight_box(region)
    top, left = max(y0 - 1, 0), max(x0 - 1, 0)
    crop = region[top:y1 + 2, left:x1 + 2]
    depth = padded_distance_transform(crop)
    e = erosion
    while e > 0 and not (depth > e).any():
        e //= 2
    core = depth > e if e > 0 else crop
    path = _longest_skeleton_path(skeletonize(core))
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    cut = (1.0 - length_fraction) / 2.0 * arc[-1]
    central = path[(arc >= cut - 1e-9) & (arc <= arc[-1] - cut + 1e-9)]
    if len(central) == 0:  # a fraction shorter than one step: the pixel nearest the middle
        central = path[[int(np.argmin(np.abs(arc - arc[-1] / 2)))]]
    vertices = [(x + left, y + top) for x, y in _simplify_inside(central, core)]
    return vertices if len(vertices) > 1 else vertices * 2


def background_points(trimap: np.ndarray, n: int, margin: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` background pixels ``(x, y)`` at >= ``margin`` px from pet and border pixels."""
    background = trimap == BACKGROUND
    if n == 0 or not background.any():
        return []
    # Distance to the nearest non-background pixel; the image edge is not a boundary here.
    distance = ndimage.distance_transform_edt(background)
    candidates = np.flatnonzero(distance >= min(float(margin), float(distance.max())))
    picked = rng.choice(candidates, size=min(n, len(candidates)), replace=False)
    ys, xs = np.unravel_index(picked, trimap.shape)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


# ----------------------------------------------------------------------------- per image


def weak_labels_for_trimap(trimap: np.ndarray, stem: str, config: GeneratorConfig,
                           trimap_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON entry of one image (see :mod:`litseg.weak_labels.format`)."""
    objects = connected_regions(trimap == PET, config.min_object_fraction)
    if not objects:
        raise DataError(trimap_path, "empty mask: no pet pixel (value 1) in the trimap")
    entry_objects = [
        {
            "point": list(interior_point(obj)),
            "box": list(tight_box(obj)),
            "scribble": [list(v) for v in region_scribble(obj, config.scribble_erosion,
                                                          config.scribble_length_fraction)],
        }
        for obj in objects
    ]
    rng = item_rng(config.seed, stem)
    bg_points = background_points(trimap, config.n_background_points, config.bg_margin, rng)
    bg_regions = connected_regions(trimap == BACKGROUND, config.min_object_fraction)
    bg_scribbles = [region_scribble(r, config.scribble_erosion, config.scribble_length_fraction)
                    for r in bg_regions[: config.max_background_scribbles]]
    return {
        "height": int(trimap.shape[0]),
        "width": int(trimap.shape[1]),
        "objects": entry_objects,
        "background_points": [list(p) for p in bg_points],
        "background_scribbles": [[list(v) for v in s] for s in bg_scribbles],
    }


# ----------------------------------------------------------------------------- dataset


def trimap_path(root: Path, stem: str) -> Path:
    return root / "annotations" / "trimaps" / f"{stem}.png"


def generate_weak_labels(root: str | os.PathLike[str], config: GeneratorConfig = GeneratorConfig(),
                         stems: Iterable[str] | None = None, stems_source: str | None = None) -> dict[str, Any]:
    """Weak labels of every image under ``root/images`` (or of ``stems``), as a JSON-ready dict.

    Every image needs ``root/annotations/trimaps/<stem>.png``; ``stems`` must all have an
    image. ``stems_source`` (e.g. the stems file) is named in errors and recorded.
    """
    root = Path(root)
    images = index_by_stem(list_images(root / "images"), root / "images")
    if stems is None:
        selected = sorted(images)
    else:
        selected = list(stems)
        missing = [s for s in selected if s not in images]
        if missing:
            raise DataError(stems_source or root / "images",
                            f"{len(missing)} stem(s) without an image in {root / 'images'}: {missing[:5]}")
    if not selected:
        raise DataError(root / "images", "no images to label")
    entries: dict[str, Any] = {}
    for stem in selected:
        path = trimap_path(root, stem)
        if not path.is_file():
            raise DataError(path, f"trimap missing for image {images[stem]}")
        entries[stem] = weak_labels_for_trimap(read_trimap(path), stem, config, path)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "generator": dataclasses.asdict(config) | {"stems_file": stems_source},
        "source_root": str(root),  # as given: the file must not depend on the machine
        "images": entries,
    }


def write_weak_labels(root: str | os.PathLike[str], output: str | os.PathLike[str],
                      config: GeneratorConfig = GeneratorConfig(),
                      stems_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Generate and write the weak-label JSON atomically; returns the document."""
    stems = read_stem_list(stems_file, "stems file") if stems_file is not None else None
    document = generate_weak_labels(root, config, stems, str(stems_file) if stems_file is not None else None)
    write_json(output, document)
    return document
