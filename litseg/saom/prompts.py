"""SAOM's nearest-neighbour point-grid prompts (spec: saom.md §2.1-2.4), as pure numpy / torch functions.

SAOM (SAOM code: per_segment_anything/samwrapperpano.py) prompts SAM with one positive point per
ground-truth instance: the PerSAM-F location prior of the instance (PerSAM-F (persam_f.py)), snapped
to the nearest point of the point grid that SAM's everything mode prompts at inference.

* :func:`point_grid` - normalised cell-centre grid (SAOM code: per_segment_anything/utils/amg.py,
  ``build_point_grid_pano``); equals upstream ``build_point_grid(n)`` for ``nx == ny == n``;
* :func:`grid_lattice` - the grid in original-image pixels, corrected frame (``grid * (W, H)``) or
  the released ``legacy_1024_lattice`` frame (``int(grid * 1024)``, saom.md §2.3);
* :func:`snap_to_lattice` - Euclidean nearest lattice point (upstream: a KD-tree query);
* :func:`location_prior` / :func:`inside_mask` - the PerSAM-F prior and an "is it inside its own mask"
  check (the prior is not constrained to the mask, faithful to upstream);
* :func:`sam_input_size` / :func:`to_input_frame` - SAM's ``ResizeLongestSide`` shape and coordinate
  mapping (kept in float: the fork's integer truncation is not ported).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from litseg.nets.sam import PIXEL_MEAN, PIXEL_STD

__all__ = [
    "grid_lattice", "inside_mask", "location_prior", "point_grid", "sam_input_size", "snap_to_lattice",
    "to_input_frame",
]

# The legacy lattice is always scaled by SAM's encoder side, whatever the image size (saom.md §2.3).
LEGACY_LATTICE_SIDE = 1024
# Instances per chunk in location_prior: each chunk holds chunk x H x W float maps at full resolution.
PRIOR_CHUNK = 8
# Pairwise distances per block in snap_to_lattice (points x lattice entries).
_SNAP_BLOCK = 1 << 22


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def point_grid(nx: int, ny: int) -> np.ndarray:
    """Normalised cell-centre grid, float64 ``(nx * ny, 2)``, columns ``(x, y)``, x varying fastest.

    ``x_i = (i + 0.5) / nx`` along the image width, ``y_j = (j + 0.5) / ny`` along the height
    (saom.md §2.1; SAOM code: per_segment_anything/utils/amg.py ``build_point_grid_pano``): 32x32
    SAOMv1, 64x64 SAOMv2, 320x64 PanoSAM. Built with ``linspace`` per axis like upstream, so for
    ``nx == ny == n`` it is bit-identical to ``segment_anything.utils.amg.build_point_grid(n)``.
    """
    _check_positive(nx=nx, ny=ny)
    xs = np.linspace(1 / (2 * nx), 1 - 1 / (2 * nx), nx)
    ys = np.linspace(1 / (2 * ny), 1 - 1 / (2 * ny), ny)
    gx, gy = np.meshgrid(xs, ys, indexing="xy")  # (ny, nx): row-major over y, so x varies fastest
    return np.stack([gx, gy], axis=-1).reshape(-1, 2)


def grid_lattice(nx: int, ny: int, height: int, width: int, legacy_1024_lattice: bool = False) -> np.ndarray:
    """The point grid in ORIGINAL-image pixel coordinates, float64 ``(nx * ny, 2)`` ``(x, y)``.

    Corrected frame (default): ``point_grid * (width, height)``, exactly the points SAM's automatic
    mask generator prompts at inference (it scales the grid by the image size), so training prompts
    coincide with inference prompts. Legacy frame (SAOM code: per_segment_anything/samwrapperpano.py,
    saom.md §2.3): ``int(grid * 1024)`` whatever the image size; on a 224x224 image a 32x32 grid then
    only reaches the 7x7 sub-lattice {16, 48, ..., 208}, and panorama priors beyond 1024 px snap to the
    last column / row (~1022 px). Kept for ablations only.
    """
    _check_positive(height=height, width=width)
    grid = point_grid(nx, ny)
    if legacy_1024_lattice:
        # int() truncation of non-negative values == floor.
        return np.floor(grid * LEGACY_LATTICE_SIDE)
    return grid * np.array([width, height], dtype=np.float64)


def snap_to_lattice(points_xy: np.ndarray, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest lattice point of every point by plain Euclidean distance (saom.md §2.3).

    Returns ``(snapped (N, 2) float64, indices (N,) int64)`` into ``lattice`` (M, 2). Ties (equal
    floating-point distances) go to the LOWEST lattice index, so the result is deterministic (a KD-tree,
    as upstream uses, does not promise an order). Several instances may snap to the same lattice point:
    nothing is de-duplicated, each instance keeps its own prompt and its own target, as upstream does
    (SAOM code: per_segment_anything/samwrapperpano.py). No inside-the-mask check either.
    """
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    lat = np.asarray(lattice, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros((0, 2), dtype=np.float64), np.zeros((0,), dtype=np.int64)
    if len(lat) == 0:
        raise ValueError("snap_to_lattice needs a non-empty lattice")
    indices = np.empty(len(points), dtype=np.int64)
    block = max(1, _SNAP_BLOCK // len(lat))  # bounds the (block, M) distance matrix
    for start in range(0, len(points), block):
        diff = points[start:start + block, None, :] - lat[None, :, :]
        dist2 = (diff ** 2).sum(-1)
        indices[start:start + block] = np.argmin(dist2, axis=1)  # argmin returns the first minimum
    return lat[indices].copy(), indices


def sam_input_size(height: int, width: int, img_size: int) -> tuple[int, int]:
    """``(h', w')`` of an ``height x width`` image after SAM's ``ResizeLongestSide(img_size)``.

    Same arithmetic as ``ResizeLongestSide.get_preprocess_shape``: ``scale = img_size / max(H, W)``,
    each side ``int(side * scale + 0.5)``.
    """
    _check_positive(height=height, width=width, img_size=img_size)
    scale = img_size * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_input_frame(points_xy: np.ndarray, height: int, width: int, img_size: int) -> np.ndarray:
    """Original-pixel ``(x, y)`` points -> SAM's resized input frame, float (``apply_coords``).

    ``x * w' / W``, ``y * h' / H`` like ``ResizeLongestSide(img_size).apply_coords``. The SAOM fork
    dropped the float cast there (SAOM code: per_segment_anything/utils/transforms.py), truncating the
    integer training prompts; that bug is not ported: the output is always float64.
    """
    new_h, new_w = sam_input_size(height, width, img_size)
    coords = np.array(points_xy, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / width)
    coords[..., 1] = coords[..., 1] * (new_h / height)
    return coords


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _reference_cells(masks: torch.Tensor, input_size: tuple[int, int], img_size: int,
                     feat_size: tuple[int, int]) -> torch.Tensor:
    """Masks (n, H, W) -> (n, h, w) bool "inside" cells, via SAM's image path (saom.md §1, §2.2).

    Upstream resizes the 0/255 mask PNG like the image, normalises it with the pixel mean / std,
    zero-pads it and bilinearly resizes that to the feature size; a cell is inside where the value is
    > 0 (about >= 48.5 % foreground at the sampled location). Only channel R matters. Upstream's
    resize is PIL on uint8; here it is float bilinear (antialias off), which can differ at edges.
    """
    x = masks.to(torch.float32).unsqueeze(1) * 255.0
    x = _resize(x, input_size)
    x = (x - PIXEL_MEAN[0]) / PIXEL_STD[0]
    x = F.pad(x, (0, img_size - input_size[1], 0, img_size - input_size[0]))  # zero = padding, not inside
    return _resize(x, feat_size)[:, 0] > 0


def _postprocess(sim: torch.Tensor, input_size: tuple[int, int], img_size: int,
                 original_size: tuple[int, int]) -> torch.Tensor:
    """(n, 1, h, w) similarity -> (n, 1, H, W): PerSAM-F's x4 upsampling, then ``Sam.postprocess_masks``.

    x4 gives SAM's 256x256 low-res mask size; then bilinear to ``img_size``, crop the padding, bilinear
    to the original size (all ``align_corners=False``), the same ops as upstream on one channel.
    """
    h, w = sim.shape[-2:]
    sim = F.interpolate(sim, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
    sim = F.interpolate(sim, size=(img_size, img_size), mode="bilinear", align_corners=False)
    sim = sim[..., :input_size[0], :input_size[1]]
    return F.interpolate(sim, size=original_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def location_prior(features: torch.Tensor, masks: torch.Tensor, input_size: tuple[int, int],
                   img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PerSAM-F location prior of every instance mask (saom.md §2.2), without gradients.

    ``features`` (C, h, w): SAM encoder output of the padded ``img_size`` input (h = w = img_size/16);
    ``masks`` (N, H, W) bool at original resolution; ``input_size`` = ``(h', w')`` of the image after
    ``ResizeLongestSide(img_size)`` (:func:`sam_input_size`).

    Per instance (PerSAM-F (persam_f.py); SAOM code: per_segment_anything/samwrapperpano.py
    ``compute_points``): target ``t = 0.5 * max + 0.5 * mean`` of the features in the inside cells,
    ``t /= |t|``; cosine map ``S = sum_c (F / |F|) * t``; S upsampled like SAM's masks to ``(H, W)``;
    prior = first maximum of the flattened map, ``x`` = column, ``y`` = row.

    Returns ``(priors (N, 2) float32, keep (N,) bool)`` on ``features.device``. Priors are integer
    pixel coordinates stored as floats; ``keep`` is False for an instance without any inside cell
    (upstream drops it) and its prior is ``(nan, nan)``. The prior is NOT constrained to its mask (it
    can land on a similar object); count such cases with :func:`inside_mask`. Instances are processed
    in chunks of :data:`PRIOR_CHUNK` so memory stays bounded for large images.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got shape {tuple(features.shape)}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    input_size = (int(input_size[0]), int(input_size[1]))
    if not (0 < input_size[0] <= img_size and 0 < input_size[1] <= img_size):
        raise ValueError(f"input_size {input_size} does not fit the {img_size} px encoder input")
    device = features.device
    feats = features.detach().to(torch.float32)
    c, h, w = feats.shape
    n, height, width = masks.shape
    flat = feats.reshape(c, h * w)  # (C, hw)
    # Per-cell unit features; the clamp only guards an all-zero cell against 0/0.
    flat_unit = flat / flat.norm(dim=0, keepdim=True).clamp_min(1e-12)

    priors = torch.full((n, 2), float("nan"), dtype=torch.float32, device=device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    for start in range(0, n, PRIOR_CHUNK):
        chunk = masks[start:start + PRIOR_CHUNK].to(device)
        inside = _reference_cells(chunk, input_size, img_size, (h, w)).reshape(len(chunk), h * w)  # (n, hw)
        has_cell = inside.any(dim=1)
        keep[start:start + len(chunk)] = has_cell
        if not bool(has_cell.any()):
            continue
        inside = inside[has_cell]
        counts = inside.sum(dim=1, keepdim=True).to(torch.float32)
        mean = (inside.to(torch.float32) @ flat.T) / counts  # (k, C)
        masked = torch.where(inside[:, None, :], flat[None], torch.tensor(float("-inf"), device=device))
        target = 0.5 * masked.amax(dim=2) + 0.5 * mean
        target = target / target.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = (target @ flat_unit).reshape(-1, 1, h, w)
        sim = _postprocess(sim, input_size, img_size, (height, width)).reshape(len(target), -1)
        best = sim.argmax(dim=1)  # first maximum of the flattened H x W map
        xy = torch.stack([best % width, torch.div(best, width, rounding_mode="floor")], dim=1)
        rows = torch.arange(start, start + len(chunk), device=device)[has_cell]
        priors[rows] = xy.to(torch.float32)
    return priors, keep


def inside_mask(points_xy: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Whether point i lies inside mask i, bool ``(N,)`` (same kind as ``masks``: torch or numpy).

    Pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)`` (SAM's point convention), so a
    point is looked up at ``floor(x), floor(y)``. NaN (dropped instances) and out-of-image points are
    outside. Lets callers count location priors / prompts that fall outside their own instance.
    """
    as_torch = isinstance(masks, torch.Tensor)
    mask_np = masks.detach().cpu().numpy() if as_torch else np.asarray(masks)
    pts = points_xy.detach().cpu().numpy() if isinstance(points_xy, torch.Tensor) else np.asarray(points_xy)
    pts = pts.astype(np.float64).reshape(-1, 2)
    if mask_np.ndim != 3 or len(mask_np) != len(pts):
        raise ValueError(f"need masks (N, H, W) for N points, got {mask_np.shape} for {len(pts)} points")
    n, height, width = mask_np.shape
    result = np.zeros(n, dtype=bool)
    finite = np.isfinite(pts).all(axis=1)
    cols = np.floor(np.where(finite, pts[:, 0], -1)).astype(np.int64)
    rows = np.floor(np.where(finite, pts[:, 1], -1)).astype(np.int64)
    valid = finite & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    idx = np.nonzero(valid)[0]
    result[idx] = mask_np[idx, rows[idx], cols[idx]].astype(bool)
    return torch.from_numpy(result).to(masks.device) if as_torch else result
