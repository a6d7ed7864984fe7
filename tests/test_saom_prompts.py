"""SAOM nearest-neighbour point-grid prompts (litseg.saom.prompts), against hand-worked cases and upstream SAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import build_point_grid
from segment_anything.utils.transforms import ResizeLongestSide

from litseg.nets.sam import tiny_sam
from litseg.saom import prompts
from litseg.saom.prompts import (
    grid_lattice,
    inside_mask,
    location_prior,
    point_grid,
    sam_input_size,
    snap_to_lattice,
    to_input_frame,
)

# ----------------------------------------------------------------------------- grid


def test_point_grid_hand_values_and_order():
    np.testing.assert_allclose(point_grid(2, 1), [[0.25, 0.5], [0.75, 0.5]])
    g = point_grid(3, 2)
    assert g.dtype == np.float64 and g.shape == (6, 2)
    # x varies fastest, nx along width (x), ny along height (y).
    np.testing.assert_allclose(g, [[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25],
                                   [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]])
    np.testing.assert_allclose(point_grid(1, 1), [[0.5, 0.5]])


@pytest.mark.parametrize("n", [1, 4, 32, 64])
def test_point_grid_equals_upstream_build_point_grid(n):
    np.testing.assert_array_equal(point_grid(n, n), build_point_grid(n))


@pytest.mark.parametrize("nx,ny", [(0, 3), (3, 0), (-1, 2)])
def test_point_grid_rejects_empty(nx, ny):
    with pytest.raises(ValueError):
        point_grid(nx, ny)


def test_corrected_lattice_224_grid32():
    lat = grid_lattice(32, 32, 224, 224)
    assert lat.shape == (1024, 2)
    xs = np.unique(lat[:, 0])
    np.testing.assert_allclose(xs, 3.5 + 7 * np.arange(32))  # spacing 7 px starting at 3.5
    np.testing.assert_allclose(np.unique(lat[:, 1]), xs)
    # Same points SAM's automatic mask generator prompts at (grid scaled by (W, H)).
    np.testing.assert_allclose(lat, build_point_grid(32) * np.array([224, 224]))


def test_legacy_lattice_grid32_is_16_plus_32k_and_only_7x7_reachable_on_224():
    lat = grid_lattice(32, 32, 224, 224, legacy_1024_lattice=True)
    expected = np.array([math.floor((i + 0.5) / 32 * 1024) for i in range(32)], dtype=float)
    np.testing.assert_array_equal(expected[:3], [16, 48, 80])
    np.testing.assert_array_equal(np.unique(lat[:, 0]), expected)
    np.testing.assert_array_equal(lat[:32, 0], expected)  # first row: x fastest
    assert np.all(lat[:32, 1] == 16)
    # Independent of the image size.
    np.testing.assert_array_equal(grid_lattice(32, 32, 5, 7, legacy_1024_lattice=True), lat)
    # Every pixel of a 224x224 image snaps onto the 7x7 sub-lattice {16, 48, ..., 208}.
    yy, xx = np.mgrid[0:224:3, 0:224:3]
    pts = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    snapped, _ = snap_to_lattice(pts, lat)
    reach = 16 + 32 * np.arange(7)
    np.testing.assert_array_equal(np.unique(snapped[:, 0]), reach)
    np.testing.assert_array_equal(np.unique(snapped[:, 1]), reach)


def test_panorama_lattice_both_frames():
    h, w = 512, 4096
    corrected = grid_lattice(320, 64, h, w)
    legacy = grid_lattice(320, 64, h, w, legacy_1024_lattice=True)
    assert corrected.shape == legacy.shape == (320 * 64, 2)
    np.testing.assert_allclose(np.diff(corrected[:320, 0]), 12.8)  # 4096 / 320
    np.testing.assert_allclose(corrected[0], [6.4, 4.0])
    assert legacy[:, 0].max() == math.floor(319.5 / 320 * 1024) == 1022
    prior = np.array([[3000.0, 100.0]])
    snapped, idx = snap_to_lattice(prior, corrected)
    # x: (i + 0.5) * 12.8 nearest 3000 -> i = 234 -> 3001.6; y: (j + 0.5) * 8 = 100 for j = 12.
    np.testing.assert_allclose(snapped, [[3001.6, 100.0]])
    assert idx[0] == 12 * 320 + 234
    snapped, idx = snap_to_lattice(prior, legacy)
    # Legacy: x clamps to the last column 1022; y lattice 8 + 16 j -> 104 (j = 6) is nearest to 100.
    np.testing.assert_array_equal(snapped, [[1022.0, 104.0]])
    assert idx[0] == 6 * 320 + 319


# ----------------------------------------------------------------------------- snapping


def test_snap_ties_go_to_lowest_index_and_duplicates_kept():
    lattice = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]])
    pts = np.array([[1.0, 0.0], [0.1, 0.1], [0.1, -0.1], [1.0, 1.9]])
    snapped, idx = snap_to_lattice(pts, lattice)
    assert idx.dtype == np.int64 and snapped.dtype == np.float64
    # (1, 0) is equidistant from [2, 0] (index 0) and [0, 0] (1, 3): lowest index wins.
    # Both (0.1, +-0.1) snap to the same point and both are kept; duplicate [0, 0] -> index 1.
    np.testing.assert_array_equal(idx, [0, 1, 1, 2])
    np.testing.assert_array_equal(snapped, lattice[[0, 1, 1, 2]])


def test_snap_empty_and_blocks(monkeypatch):
    snapped, idx = snap_to_lattice(np.zeros((0, 2)), grid_lattice(4, 4, 10, 10))
    assert snapped.shape == (0, 2) and idx.shape == (0,) and idx.dtype == np.int64
    with pytest.raises(ValueError):
        snap_to_lattice(np.ones((1, 2)), np.zeros((0, 2)))
    # Block-wise distance computation gives the same answer as one block.
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (50, 2))
    lat = grid_lattice(7, 5, 100, 100)
    ref = snap_to_lattice(pts, lat)
    monkeypatch.setattr(prompts, "_SNAP_BLOCK", 3 * len(lat))
    out = snap_to_lattice(pts, lat)
    np.testing.assert_array_equal(out[1], ref[1])
    brute = np.argmin(((pts[:, None] - lat[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(ref[1], brute)


# ----------------------------------------------------------------------------- SAM frames


@pytest.mark.parametrize("hw", [(512, 4096), (224, 224), (480, 640), (1, 3000), (3000, 1), (40, 56), (1023, 1025)])
@pytest.mark.parametrize("img_size", [1024, 64])
def test_sam_input_size_matches_resize_longest_side(hw, img_size):
    assert sam_input_size(*hw, img_size) == tuple(ResizeLongestSide.get_preprocess_shape(*hw, img_size))


def test_sam_input_size_hand_values():
    assert sam_input_size(512, 4096, 1024) == (128, 1024)
    assert sam_input_size(480, 640, 1024) == (768, 1024)
    assert sam_input_size(40, 56, 64) == (46, 64)  # 40 * 64 / 56 = 45.71 -> 46


@pytest.mark.parametrize("hw", [(224, 224), (480, 640), (512, 4096), (40, 56)])
def test_to_input_frame_matches_apply_coords_in_float(hw):
    pts = np.array([[0.0, 0.0], [3.7, 5.2], [hw[1] - 0.5, hw[0] - 0.5], [10.0, 1.0]])
    expected = ResizeLongestSide(1024).apply_coords(pts, hw)
    out = to_input_frame(pts, *hw, 1024)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected)
    # Integer input stays float (the fork truncated here): 224 -> 1024 maps x=3 to 13.714...
    out_int = to_input_frame(np.array([[3, 5]]), 224, 224, 1024)
    np.testing.assert_allclose(out_int, [[3 * 1024 / 224, 5 * 1024 / 224]])


# ----------------------------------------------------------------------------- location prior


def _features_with_aligned_block(block_rows: slice, block_cols: slice) -> torch.Tensor:
    """C = 3, 4x4 cells. Mask cells (top-left 2x2) alternate e1 / e2, so mean = (.5, .5, 0) and
    max = (1, 1, 0): t ~ (1, 1, 0), cos = 0.707 on the mask. A 2x2 block equal to (2, 2, 0) has cos 1,
    every other cell is e3 (cos 0). A 2x2 block gives an exact plateau of 1 after the bilinear upsamplings
    (a convex combination of equal nodes), so the argmax lies in that block unambiguously."""
    f = torch.zeros(3, 4, 4)
    f[2] = 1.0
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for r in range(2):
        for c in range(2):
            f[:, r, c] = e1 if (r + c) % 2 == 0 else e2
    f[:, block_rows, block_cols] = torch.tensor([2.0, 2.0, 0.0])[:, None, None]
    return f


def test_location_prior_lands_on_the_aligned_block_outside_the_mask():
    feats = _features_with_aligned_block(slice(2, 4), slice(2, 4))
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, :32, :32] = True  # the top-left 2x2 cells (16 px per cell, no resize, no padding)
    priors, keep = location_prior(feats, masks, (64, 64), 64)
    assert priors.shape == (1, 2) and priors.dtype == torch.float32 and keep.tolist() == [True]
    x, y = priors[0].tolist()
    assert x == int(x) and y == int(y)
    # Plateau of value 1: 16-grid pixels 10..15 (source coords >= 2 incl. the clamped border), then
    # 64-grid pixels 42..63; it sits inside the block's footprint [32, 64)^2.
    assert 42 <= x <= 63 and 42 <= y <= 63
    # Not constrained to the mask (faithful): the caller can count it with inside_mask.
    assert inside_mask(priors, masks).tolist() == [False]
    # The mask block itself (cos 0.707) loses; a mask over the aligned block keeps its prior inside.
    masks2 = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks2[0, 32:, 32:] = True
    priors2, keep2 = location_prior(feats, masks2, (64, 64), 64)
    assert keep2.tolist() == [True] and inside_mask(priors2, masks2).tolist() == [True]


def test_location_prior_crops_padding_and_rescales_to_the_original():
    # Aligned block in the top-right cells; rows 2-3 of the features are padding for a 2:1 image.
    feats = _features_with_aligned_block(slice(0, 2), slice(2, 4))
    # 32x64 original = input size (no resize), bottom half of the 64x64 encoder input is padding.
    masks = torch.zeros(1, 32, 64, dtype=torch.bool)
    masks[0, :, :32] = True
    priors, keep = location_prior(feats, masks, sam_input_size(32, 64, 64), 64)
    x, y = priors[0].tolist()
    assert keep.tolist() == [True] and 42 <= x <= 63 and 0 <= y <= 21  # plateau, in footprint [32,64)x[0,16)
    # 16x32 original: resized x2 to the same input; the footprint halves to [16, 32) x [0, 8).
    masks = torch.zeros(1, 16, 32, dtype=torch.bool)
    masks[0, :, :16] = True
    assert sam_input_size(16, 32, 64) == (32, 64)
    priors, keep = location_prior(feats, masks, (32, 64), 64)
    x, y = priors[0].tolist()
    assert keep.tolist() == [True] and 16 <= x < 32 and 0 <= y < 8


def test_location_prior_drops_masks_without_inside_cell_and_chunks(monkeypatch):
    feats = _features_with_aligned_block(slice(2, 4), slice(2, 4))
    masks = torch.zeros(11, 64, 64, dtype=torch.bool)
    masks[:, :32, :32] = True
    masks[3] = False  # empty
    masks[7] = False
    masks[7, 0, 0] = True  # one pixel: never sampled by the 64 -> 4 bilinear resize (samples at 7.5, 23.5, ...)
    monkeypatch.setattr(prompts, "PRIOR_CHUNK", 4)
    priors, keep = location_prior(feats, masks, (64, 64), 64)
    assert keep.tolist() == [i not in (3, 7) for i in range(11)]
    assert torch.isnan(priors[[3, 7]]).all()
    assert torch.isfinite(priors[keep]).all()
    assert (priors[keep] == priors[0]).all()  # same mask, same prior, across chunk boundaries
    assert inside_mask(priors, masks)[[3, 7]].tolist() == [False, False]


def test_location_prior_mask_resolution_threshold():
    # After SAM normalisation a bilinear sample is > 0 iff it is >= ~48.5 % foreground.
    feats = _features_with_aligned_block(slice(2, 4), slice(2, 4))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 20:24, 0:24] = True  # rows 20..23 contain only pixel 23 of the (23, 24) sample pair -> 50 %
    masks[1, 24:28, 0:24] = True  # only pixel 24 -> 50 % too
    _, keep = location_prior(feats, masks, (64, 64), 64)
    assert keep.tolist() == [True, True]
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 0:7, :] = True  # rows 0..6: the samples at 7.5 see 0 %
    _, keep = location_prior(feats, masks, (64, 64), 64)
    assert keep.tolist() == [False]


def test_postprocess_matches_sam_postprocess_masks():
    sam = tiny_sam()
    sim = torch.randn(3, 1, 4, 4)
    x4 = torch.nn.functional.interpolate(sim, scale_factor=4, mode="bilinear")  # PerSAM-F's call
    expected = sam.postprocess_masks(x4, (46, 64), (40, 56))
    torch.testing.assert_close(prompts._postprocess(sim, (46, 64), 64, (40, 56)), expected)


def test_inside_mask_numpy_and_bounds():
    masks = np.zeros((4, 5, 6), dtype=bool)
    masks[:, 2, 3] = True
    pts = np.array([[3.0, 2.0], [3.9, 2.9], [6.0, 2.0], [np.nan, np.nan]])
    out = inside_mask(pts, masks)
    assert isinstance(out, np.ndarray) and out.tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        inside_mask(pts[:2], masks)


def test_location_prior_with_tiny_sam():
    sam = tiny_sam()
    img_size = sam.image_encoder.img_size
    h, w = 40, 56
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    resized = ResizeLongestSide(img_size).apply_image(image)
    input_size = sam_input_size(h, w, img_size)
    assert resized.shape[:2] == input_size
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        feats = sam.image_encoder(sam.preprocess(x))[0]
    assert feats.shape == (32, img_size // 16, img_size // 16)
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, :20, :28] = True
    masks[1, 10:40, 20:56] = True
    masks[2, 25:, :30] = True
    priors, keep = location_prior(feats, masks, input_size, img_size)
    assert priors.shape == (3, 2) and keep.shape == (3,) and keep.all()
    assert ((priors[:, 0] >= 0) & (priors[:, 0] < w) & (priors[:, 1] >= 0) & (priors[:, 1] < h)).all()
    assert torch.equal(priors, priors.round())
    again, keep2 = location_prior(feats, masks, input_size, img_size)
    assert torch.equal(priors, again) and torch.equal(keep, keep2)
    # The prompts built from it: snapped to the corrected lattice, then into SAM's input frame.
    snapped, _ = snap_to_lattice(priors.numpy(), grid_lattice(32, 32, h, w))
    coords = to_input_frame(snapped, h, w, img_size)
    assert (coords[:, 0] < input_size[1]).all() and (coords[:, 1] < input_size[0]).all()


def test_location_prior_rejects_bad_shapes():
    with pytest.raises(ValueError):
        location_prior(torch.zeros(2, 4), torch.zeros(1, 8, 8, dtype=torch.bool), (8, 8), 64)
    with pytest.raises(ValueError):
        location_prior(torch.zeros(2, 4, 4), torch.zeros(8, 8, dtype=torch.bool), (8, 8), 64)
    with pytest.raises(ValueError):
        location_prior(torch.zeros(2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.bool), (80, 8), 64)
