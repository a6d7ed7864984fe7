"""The one letterbox (litseg/letterbox.py): size, anchor and padding as parameters; exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litseg.letterbox import Letterbox


def test_round_trip_of_a_smooth_map_and_constant():
    box = Letterbox.fit(60, 90, 48)  # inner 48 x 32 (60*48//90)
    yy, xx = np.mgrid[0:60, 0:90]
    smooth = (np.sin(yy / 15.0) + np.cos(xx / 20.0)).astype(np.float32)
    back = box.invert(box.mask(smooth))
    assert back.shape == (60, 90)
    assert np.abs(back - smooth).mean() < 0.05
    np.testing.assert_allclose(box.invert(box.mask(np.full((60, 90), 0.3))), 0.3, atol=1e-6)
    # a map already at the inner size maps back exactly (nearest-equivalent enlargement by 1)
    same = Letterbox.fit(8, 4, 8)
    m = np.arange(32, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(same.invert(same.mask(m)), m)


def test_top_left_versus_centred_offsets_at_1024():
    # a 1500 x 800 (width x height) image: width becomes 1024, height 800 * 1024 // 1500 = 546
    centred = Letterbox.fit(800, 1500, 1024, anchor="centre")
    top_left = Letterbox.fit(800, 1500, 1024, anchor="top_left")
    assert (centred.inner_height, centred.inner_width) == (546, 1024)
    assert (top_left.inner_height, top_left.inner_width) == (546, 1024)
    assert (centred.top, centred.left) == ((1024 - 546) // 2, 0) == (239, 0)
    assert (top_left.top, top_left.left) == (0, 0)
    tall = Letterbox.fit(1500, 800, 1024, anchor="centre")  # the transposed image: offsets move to the columns
    assert (tall.top, tall.left, tall.inner_height, tall.inner_width) == (0, 239, 1024, 546)
    with pytest.raises(ValueError, match="anchor"):
        Letterbox.fit(800, 1500, 1024, anchor="bottom")


@pytest.mark.parametrize("anchor", ["centre", "top_left"])
def test_padding_value(anchor):
    box = Letterbox.fit(10, 30, 24, anchor=anchor, pad_value=-1.5)  # inner 8 x 24
    rows, cols = box.valid
    image = box.image(np.full((10, 30, 3), 128, dtype=np.uint8))
    outside = torch.ones(24, 24, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.all(image[:, outside] == -1.5)
    assert not torch.any(image[:, ~outside] == -1.5)
    arr = box.array(np.full((10, 30, 3), 7.0, dtype=np.float32))
    assert arr.dtype == np.float32 and arr.shape == (24, 24, 3)
    assert np.all(arr[rows, cols] == 7) and np.all(arr[outside.numpy()] == -1.5)
    labels = Letterbox.fit(10, 30, 24, anchor=anchor, pad_value=255).array(np.ones((10, 30), np.uint8), nearest=True)
    assert np.all(labels[outside.numpy()] == 255) and np.all(labels[rows, cols] == 1)
    # masks pad with 0 whatever the image padding is
    mask = box.mask(np.ones((10, 30)))
    assert np.all(mask[outside.numpy()] == 0) and np.all(mask[rows, cols] == 1)


@pytest.mark.parametrize("anchor", ["centre", "top_left"])
def test_invert_of_a_letterboxed_mask_is_the_mask_on_the_valid_region(anchor):
    box = Letterbox.fit(12, 20, 40, anchor=anchor)  # enlarged x2: inner 24 x 40
    mask = np.zeros((12, 20), dtype=np.float32)
    mask[3:9, 5:15] = 1.0
    lb = box.array(mask, nearest=True)
    rows, cols = box.valid
    assert lb[rows, cols].sum() == mask.sum() * 4
    back = box.invert(lb) > 0.5
    np.testing.assert_array_equal(back, mask > 0.5)
    with pytest.raises(ValueError, match="40x40"):
        box.invert(np.zeros((24, 40)))
