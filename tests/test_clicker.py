"""The RITM baseline clicker and the click-strategy interface on hand-worked arrays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from litseg.geometry import padded_distance_transform
from litseg.interactive.clicker import (
    STRATEGIES,
    BaselineClicker,
    ErrorDrivenStrategy,
    ErrorState,
    ReplayClicks,
    baseline_location,
    build_strategy,
    error_state,
)
from litseg.interactive.types import Click


def blocks(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean mask with the inclusive boxes (y0, y1, x0, x1) set."""
    mask = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def state_of(gt, pred=None, ignore=None, not_clicked=None) -> ErrorState:
    pred = np.zeros_like(gt) if pred is None else pred
    ignore = np.zeros_like(gt) if ignore is None else ignore
    not_clicked = np.ones_like(gt) if not_clicked is None else not_clicked
    return error_state(gt, pred, ignore, not_clicked)


def test_first_click_is_positive_at_the_object_centre():
    # 5x5 object in a 7x7 image: DT 3 at its centre, 2 on the next ring.
    gt = blocks((7, 7), (1, 5, 1, 5))
    state = state_of(gt)
    assert state.is_positive
    assert state.dt_fn[3, 3] == 3.0 and state.dt_fn[2, 2] == 2.0 and state.dt_fn[1, 1] == 1.0
    assert state.dt_fp.max() == 0.0
    assert baseline_location(state) == (3, 3)


def test_ties_go_to_the_first_pixel_in_row_major_order():
    # Two 3x3 objects whose centres (1, 5) and (3, 1) both have DT 2 (the padding bounds
    # the top one). Row-major order picks (1, 5); column-major would pick (3, 1).
    gt = blocks((5, 7), (0, 2, 4, 6), (2, 4, 0, 2))
    state = state_of(gt)
    assert state.dt_fn[1, 5] == state.dt_fn[3, 1] == 2.0
    assert np.count_nonzero(state.dt_fn == 2.0) == 2
    assert baseline_location(state) == (1, 5)


def test_ignore_pixels_are_neither_errors_nor_boundaries_removed():
    # The whole 5x9 image is object; column 4 is ignore. Without ignore the DT is 3 on
    # row 2 for columns 2..6 (first: (2, 2)); with it the errors are two 5x4 blocks with
    # DT max 2, first at (1, 1).
    gt = np.ones((5, 9), dtype=bool)
    ignore = np.zeros_like(gt)
    ignore[:, 4] = True
    assert baseline_location(state_of(gt)) == (2, 2)
    state = state_of(gt, ignore=ignore)
    assert not state.fn[:, 4].any() and state.fn.sum() == 40
    assert state.dt_fn.max() == 2.0
    assert baseline_location(state) == (1, 1)


def test_prediction_over_ignore_is_not_a_false_positive():
    gt = blocks((6, 6), (0, 1, 0, 1))
    pred = gt | blocks((6, 6), (3, 5, 3, 5))
    ignore = blocks((6, 6), (3, 5, 3, 5))
    state = state_of(gt, pred=pred, ignore=ignore)
    assert not state.fp.any() and not state.fn.any()
    assert not state.has_error


def test_border_padding_changes_the_click():
    # Object = columns 0..2 of a 5x5 image. With the 1-px zero border the farthest pixel
    # from any boundary is (1, 1) (DT 2). Without padding the image border would not count
    # and column 0 would be 3 away from the background: click (0, 0).
    gt = blocks((5, 5), (0, 4, 0, 2))
    state = state_of(gt)
    assert baseline_location(state) == (1, 1)
    unpadded = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert np.unravel_index(np.argmax(unpadded), unpadded.shape) == (0, 0)


def test_border_padding_flips_the_sign_and_equal_maxima_are_negative():
    # fn: rows 0..2 across a 10x10 image (touches the border): padded DT max 2 (row 1),
    # unpadded it would be 3 (row 0). fp: an interior 4x4 block, DT max 2.
    # Padded maxima are equal (2 == 2), so the click is negative (strictly larger needed),
    # at the first row-major DT-2 pixel of the fp block.
    gt = blocks((10, 10), (0, 2, 0, 9))
    pred = blocks((10, 10), (5, 8, 3, 6))
    state = state_of(gt, pred=pred)
    assert state.dt_fn.max() == 2.0 and state.dt_fp.max() == 2.0
    assert not state.is_positive
    assert baseline_location(state) == (6, 4)
    unpadded_fn = cv2.distanceTransform(state.fn.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert unpadded_fn.max() == 3.0  # without padding the click would have been positive


def test_strictly_larger_false_negative_gives_a_positive_click():
    # fn 5x5 block (DT 3) vs fp 3x3 block (DT 2).
    gt = blocks((12, 12), (1, 5, 1, 5))
    pred = blocks((12, 12), (8, 10, 8, 10))
    state = state_of(gt, pred=pred)
    assert state.is_positive
    assert baseline_location(state) == (3, 3)


def test_clicked_pixels_are_excluded():
    gt = blocks((7, 7), (1, 5, 1, 5))
    not_clicked = np.ones_like(gt)
    not_clicked[3, 3] = False
    state = state_of(gt, not_clicked=not_clicked)
    assert state.dt_fn[3, 3] == 0.0
    assert baseline_location(state) == (2, 2)  # the first DT-2 pixel of the ring


def test_all_error_pixels_clicked_ends_the_episode():
    # RITM would click (0, 0) as a negative here (argmax of an all-zero DT); we stop.
    gt = blocks((4, 4), (1, 2, 1, 2))
    state = state_of(gt, not_clicked=~gt)
    assert state.fn.sum() == 4  # the errors are still there...
    assert not state.has_error and not state.is_positive  # ...but all clicked
    assert baseline_location(state) is None
    assert BaselineClicker().next_click(state, 3) is None


def test_perfect_prediction_ends_the_episode():
    gt = blocks((4, 4), (1, 2, 1, 2))
    state = state_of(gt, pred=gt.copy())
    assert not state.has_error
    assert BaselineClicker().next_click(state, 1) is None


def test_baseline_clicker_returns_index_and_sign():
    gt = blocks((7, 7), (1, 5, 1, 5))
    assert BaselineClicker().next_click(state_of(gt), 0) == Click(y=3, x=3, is_positive=True, index=0)
    pred = np.ones_like(gt)  # everything predicted: fp ring of width 1 vs no fn
    click = BaselineClicker().next_click(state_of(gt, pred=pred), 4)
    assert click == Click(y=0, x=0, is_positive=False, index=4)


def test_cv2_distance_transform_is_exact_like_scipy_edt():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.uniform(0.3, 0.95)
        ours = padded_distance_transform(mask)
        reference = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        # Both exact: the squared distances are the same integers...
        np.testing.assert_array_equal(np.round(ours.astype(np.float64) ** 2), np.round(reference**2))
        np.testing.assert_allclose(ours, reference, rtol=1e-6)
        # ...so the click (first argmax) is the same.
        assert np.argmax(ours) == np.argmax(reference)


def test_error_state_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        error_state(np.zeros((3, 3), bool), np.zeros((3, 4), bool), np.zeros((3, 3), bool), np.ones((3, 3), bool))


class FirstErrorPixel(ErrorDrivenStrategy):
    """A location sampler in the style of the clickability-model strategy: it picks a pixel
    of the error region (here the first un-clicked one) and keeps RITM's sign."""

    name = "first_error_pixel_test"

    def locate(self, state: ErrorState) -> tuple[int, int]:
        ys, xs = np.nonzero(state.error & state.not_clicked)
        return int(ys[0]), int(xs[0])


def test_a_location_sampler_only_replaces_the_location():
    gt = blocks((12, 12), (1, 2, 1, 2))
    pred = blocks((12, 12), (6, 10, 6, 10))  # fp 5x5 (DT 3) beats fn 2x2 (DT 1): negative
    strategy = FirstErrorPixel()
    strategy.start_instance(np.zeros((12, 12, 3), np.uint8), gt, np.zeros_like(gt), np.random.default_rng(0))
    state = state_of(gt, pred=pred)
    assert strategy.next_click(state, 2) == Click(y=6, x=6, is_positive=False, index=2)
    assert baseline_location(state) == (8, 8)  # the fallback a sampler can use
    assert strategy.next_click(state_of(gt, pred=gt.copy()), 3) is None  # no error: stops too


def test_replay_clicks_then_stop():
    replay = ReplayClicks([(1, 2, True), (3, 4, False)])
    dummy = state_of(blocks((5, 5), (0, 0, 0, 0)))
    assert replay.next_click(dummy, 0) == Click(1, 2, True, 0)
    assert replay.next_click(dummy, 1) == Click(3, 4, False, 1)
    assert replay.next_click(dummy, 2) is None


def test_strategy_registry():
    assert isinstance(build_strategy("baseline"), BaselineClicker)
    assert STRATEGIES["baseline"] is BaselineClicker
    with pytest.raises(ValueError, match=r"unknown click strategy 'nope'; known: \[.*'baseline'"):
        build_strategy("nope")
