"""RClicks GT click maps, error masks, letterbox and cache against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from litseg.imaging import IMAGENET_MEAN, IMAGENET_STD
from litseg.io import DataError
from litseg.letterbox import Letterbox, unletterbox
from litseg.rclicks.maps import (
    ClickMapCache,
    click_gaussians,
    click_radius,
    error_mask,
    gaussian_kernel_size,
    gt_click_map,
    sigma_in_pixels,
    soft_error_prior,
)

GT = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]], dtype=np.uint8)
PREV = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=np.uint8)


def test_error_mask_by_click_type():
    np.testing.assert_array_equal(error_mask("first", GT), GT)
    # fn: object pixels the previous mask missed: (0,2), (1,1), (1,2)
    np.testing.assert_array_equal(error_mask("fn", GT, PREV), [[0, 0, 1], [0, 1, 1], [0, 0, 0]])
    # fp: background pixels the previous mask covered: (0,0), (2,2)
    np.testing.assert_array_equal(error_mask("fp", GT, PREV), [[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    assert error_mask("fn", GT, PREV).dtype == np.float32
    with pytest.raises(ValueError, match="previous mask"):
        error_mask("fn", GT)
    with pytest.raises(ValueError, match="click_type"):
        error_mask("second", GT, PREV)


def test_scale_rules():
    assert sigma_in_pixels(5, 1080, 1920) == pytest.approx(5.0)
    assert sigma_in_pixels(10, 108, 192) == pytest.approx(1.0)
    # ceil(7 sigma) rounded up to odd
    assert [gaussian_kernel_size(s) for s in (1.0, 0.5, 2.0, 0.01, 1.3)] == [7, 5, 15, 1, 11]
    # int(5 * diag / (500 sqrt 2)): 1920x1080 -> 15.58 -> 15; 400x300 -> 3.54 -> 3; 80x60 -> 0.71 -> 0
    assert click_radius(1080, 1920) == 15
    assert click_radius(300, 400) == 3
    assert click_radius(60, 80) == 0


def test_click_gaussian_values_and_constant_border():
    # 108x192 with sigma 10 gives sigma_px = 1 (kernel 7): neighbours are exp(-d^2 / 2).
    m = click_gaussians(np.array([[50, 40]]), 108, 192, sigma=10)
    assert m.shape == (108, 192) and m.dtype == np.float32
    assert m[40, 50] == pytest.approx(1.0)
    assert m[40, 51] == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert m[41, 51] == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert m[40, 54] == 0.0  # outside the 7x7 kernel
    # A click next to the border: a reflecting border would mirror the impulse onto (1, 0).
    m = click_gaussians(np.array([[1, 1]]), 108, 192, sigma=10)
    assert m[1, 0] == pytest.approx(math.exp(-0.5), rel=1e-5)


def test_coinciding_clicks_accumulate_and_clicks_are_clipped():
    m = click_gaussians(np.array([[10, 10], [10, 10], [30, 30]]), 108, 192, sigma=10)
    assert m[10, 10] == pytest.approx(1.0)
    assert m[30, 30] == pytest.approx(0.5)
    m = click_gaussians(np.array([[-5, 500]]), 108, 192, sigma=10)  # -> x 0, y 107
    assert m[107, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one click"):
        click_gaussians(np.zeros((0, 2)), 10, 10, sigma=5)


def test_soft_error_prior_reflects_and_small_images_are_not_blurred():
    ones = np.ones((300, 400), dtype=np.float32)  # radius 3; reflect keeps a full mask at 1 everywhere
    np.testing.assert_allclose(soft_error_prior(ones), 1.0, atol=1e-6)
    small = np.zeros((60, 80), dtype=np.float32)
    small[10:20, 10:30] = 1
    np.testing.assert_array_equal(soft_error_prior(small), small)  # radius 0


def test_gt_click_map_is_prior_times_gaussians():
    error = np.zeros((108, 192), dtype=np.float32)  # radius int(5*220.3/707.1) = 1
    error[20:60, 30:90] = 1
    clicks = np.array([[40, 30], [89, 59]])
    expected = soft_error_prior(error) * click_gaussians(clicks, 108, 192, sigma=10)
    np.testing.assert_allclose(gt_click_map(clicks, error, sigma=10), expected)
    assert click_radius(108, 192) == 1


def test_letterbox_fit_rule():
    tall = Letterbox.fit(200, 100, 416)  # h/416 > w/416: height 416, width 100*416//200 = 208
    assert (tall.inner_height, tall.inner_width, tall.top, tall.left) == (416, 208, 0, 104)
    wide = Letterbox.fit(100, 300, 416)  # width 416, height 100*416//300 = 138, top (416-138)//2 = 139
    assert (wide.inner_height, wide.inner_width, wide.top, wide.left) == (138, 416, 139, 0)
    square = Letterbox.fit(50, 50, 416)
    assert (square.inner_height, square.inner_width, square.top, square.left) == (416, 416, 0, 0)


def test_letterbox_image_normalises_then_pads_with_zero():
    colour = np.array([200, 100, 50], dtype=np.uint8)
    image = np.broadcast_to(colour, (100, 300, 3)).copy()
    box = Letterbox.fit(100, 300, 64)  # inner 64 x 21 (100*64//300), top 21
    out = box.image(image)
    assert out.shape == (3, 64, 64)
    expected = (colour / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    inner = out[:, box.top:box.top + box.inner_height, :]
    np.testing.assert_allclose(inner.reshape(3, -1).T, np.broadcast_to(expected, (inner[0].numel(), 3)), atol=1e-5)
    assert torch.count_nonzero(out[:, :box.top]) == 0
    assert torch.count_nonzero(out[:, box.top + box.inner_height:]) == 0


def test_unletterbox_inverts_the_geometry():
    # No resize needed (8x4 into 8): the round trip is exact.
    box = Letterbox.fit(8, 4, 8)
    m = np.arange(32, dtype=np.float32).reshape(8, 4)
    lb = box.mask(m)
    np.testing.assert_array_equal(lb[:, box.left:box.left + 4], m)
    np.testing.assert_array_equal(unletterbox(lb, box), m)
    # With resizing, a constant map comes back exactly and a smooth one closely.
    box = Letterbox.fit(100, 300, 416)
    np.testing.assert_allclose(unletterbox(box.mask(np.full((100, 300), 0.7)), box), 0.7, atol=1e-6)
    yy, xx = np.mgrid[0:100, 0:300]
    smooth = (np.sin(xx / 40.0) * np.cos(yy / 30.0)).astype(np.float32)
    back = unletterbox(box.mask(smooth), box)
    assert back.shape == (100, 300)
    assert np.abs(back - smooth).max() < 0.02
    with pytest.raises(ValueError, match="416x416"):
        unletterbox(np.zeros((10, 10)), box)


def test_cache_writes_npy_once_and_rejects_a_stale_shape(tmp_path):
    cache = ClickMapCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return np.full((4, 5), 0.25)

    first = cache.get("123_______2", 5, (4, 5), compute)
    again = cache.get("123_______2", 5, (4, 5), compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    path = tmp_path / "123_______2_sigma=5.npy"
    assert path.is_file()
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), np.full((4, 5), 0.25, dtype=np.float32))
    assert cache.path("a", 0.25).name == "a_sigma=0.25.npy"  # the sigma is part of the key
    with pytest.raises(DataError, match="123_______2_sigma=5.npy.*shape"):
        cache.get("123_______2", 5, (5, 4), compute)
    with pytest.raises(ValueError, match="file name"):
        cache.path("../evil", 5)
