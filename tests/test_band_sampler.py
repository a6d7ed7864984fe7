"""RClicks band sampler (clicking groups G1..G10) against hand-computed thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litseg.interactive.clicker import build_strategy, error_state
from litseg.interactive.episode import run_episode
from litseg.nets.rclicks import ClickabilityNet
from litseg.rclicks.band_sampler import (
    SAMPLE_GROUP,
    ClickabilityStrategy,
    band_map,
    band_thresholds,
    group_band,
    restrict_map,
    sample_click_location,
    sample_from_band,
)
from litseg.rclicks.maps import distance_transform_baseline


def test_group_bands():
    assert group_band(1) == (0.0, 0.1)
    assert group_band(3) == (0.2, 0.3)  # k/10 is the same double as the literal
    assert group_band(10) == (0.9, 1.0)
    with pytest.raises(ValueError, match="1..10"):
        group_band(0)


def test_thresholds_hand_case():
    # v = [0,1,2,3,4], c = [0,1,3,6,10], S = 10
    v = np.array([3.0, 0.0, 4.0, 1.0, 2.0])  # order does not matter
    assert band_thresholds(v, 0.0, 0.1) == (0.0, 2.0)  # left(0) = 0; right(1) = 2
    assert band_thresholds(v, 0.1, 0.2) == (1.0, 2.0)  # left(1) = 1; right(2) = 2
    assert band_thresholds(v, 0.3, 0.6) == (2.0, 4.0)  # left(3) = 2; right(6) = 4
    assert band_thresholds(v, 0.9, 1.0) == (4.0, 4.0)  # left(9) = 4; right(10) = 5 -> clamped to 4
    np.testing.assert_array_equal(band_map(v, 0.0, 0.1), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(band_map(v, 0.9, 1.0), [0, 0, 4, 0, 0])
    with pytest.raises(ValueError, match="low < high"):
        band_thresholds(v, 0.5, 0.5)


def test_ties_are_included_at_both_ends():
    # all equal: every band is the whole map
    np.testing.assert_array_equal(band_map(np.ones(4), 0.0, 0.1), np.ones(4))
    # v = [0,2,2,2,6], c = [0,2,4,6,12]: (0.1, 0.2) -> thresholds (2, 2): all three 2s, 6/12 of the mass
    v = np.array([2.0, 0.0, 6.0, 2.0, 2.0])
    np.testing.assert_array_equal(band_map(v, 0.1, 0.2), [2, 0, 0, 2, 2])
    # (0.4, 0.5): left(4.8) = 3 -> 2; right(6) = 4 -> 6: the tied 2s and the 6
    np.testing.assert_array_equal(band_map(v, 0.4, 0.5), [2, 0, 6, 2, 2])
    # (0.6, 1.0): left(7.2) = 4 -> 6: only the 6
    np.testing.assert_array_equal(band_map(v, 0.6, 1.0), [0, 0, 6, 0, 0])


def test_each_band_holds_its_share_of_the_mass():
    rng = np.random.default_rng(0)
    m = rng.random((30, 40)) ** 3
    m[m < 0.01] = 0  # zeros add no mass
    total = m.sum()
    covered = np.zeros_like(m, dtype=int)
    for k in range(1, 11):
        low, high = group_band(k)
        t_lo, t_hi = band_thresholds(m, low, high)
        band = band_map(m, low, high)
        # within one pixel's value at each end of the band
        assert abs(band.sum() - (high - low) * total) <= t_lo + t_hi
        covered += band > 0
    assert (covered[m > 0] >= 1).all()  # the ten bands cover every pixel with mass
    assert covered.max() <= 2  # neighbouring bands share at most their boundary value


def test_band_over_positive_values_equals_slicing_over_all_pixels():
    rng = np.random.default_rng(4)
    for trial in range(20):
        m = rng.random((25, 30)) ** 2
        m[rng.random(m.shape) < 0.7] = 0  # mostly zeros, as a map restricted to an error region
        m[3, 4] = m[5, 6]  # a tie
        for k in range(1, 11):
            low, high = group_band(k)
            t_lo, t_hi = band_thresholds(m, low, high)  # note 2.3 over ALL pixels
            reference = m * ((m >= t_lo) & (m <= t_hi))
            np.testing.assert_array_equal(band_map(m, low, high), reference)


def test_draw_over_the_support_equals_a_draw_over_all_pixels():
    rng = np.random.default_rng(5)
    m = rng.random((20, 20))
    m[m < 0.6] = 0
    band = band_map(m, 0.0, 1.0).ravel()
    for seed in range(10):
        full = int(np.random.default_rng(seed).choice(band.size, p=band / band.sum()))
        assert sample_from_band(m, 0.0, 1.0, np.random.default_rng(seed)) == np.unravel_index(full, m.shape)


def test_g1_draws_least_likely_and_g10_most_likely_pixels():
    rng = np.random.default_rng(1)
    m = rng.random((20, 20))
    g1 = [m[sample_from_band(m, *group_band(1), rng)] for _ in range(300)]
    g10 = [m[sample_from_band(m, *group_band(10), rng)] for _ in range(300)]
    t1_hi = band_thresholds(m, *group_band(1))[1]
    t10_lo = band_thresholds(m, *group_band(10))[0]
    assert max(g1) <= t1_hi < t10_lo <= min(g10)
    assert np.mean(g1) < 0.25 and np.mean(g10) > 0.9


def test_sampling_is_proportional_inside_the_band_and_seeded():
    m = np.array([[0.0, 1.0], [3.0, 0.0]])
    rng = np.random.default_rng(2)
    draws = [sample_from_band(m, 0.0, 1.0, rng) for _ in range(4000)]
    share = np.mean([d == (1, 0) for d in draws])
    assert share == pytest.approx(0.75, abs=0.03)
    a = [sample_from_band(m, 0.0, 1.0, np.random.default_rng(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_restrict_and_fallback():
    raw = np.array([[0.2, 0.9], [0.5, 0.1]])
    error = np.array([[1, 1], [0, 1]])
    not_clicked = np.array([[1, 0], [1, 1]])
    np.testing.assert_allclose(restrict_map(raw, error, not_clicked), [[0.2, 0.0], [0.0, 0.1]])
    rng = np.random.default_rng(0)
    # only (0,0) and (1,1) can be drawn
    for _ in range(20):
        assert sample_click_location(raw, error, not_clicked, 0.0, 1.0, rng, fallback=(9, 9)) in {(0, 0), (1, 1)}
    # the map is zero on the error region -> empty band -> the baseline click
    zero_on_error = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert sample_click_location(zero_on_error, error, not_clicked, 0.0, 0.1, rng, fallback=(1, 1)) == (1, 1)
    # every error pixel already clicked
    assert sample_click_location(raw, error, np.zeros((2, 2)), 0.9, 1.0, rng, fallback=(0, 1)) == (0, 1)
    with pytest.raises(ValueError, match="non-negative"):
        restrict_map(-raw, error, not_clicked)


# ----------------------------------------------------------------------------- the benchmark strategy


class DiskPredictor:
    """Fake predictor: disks of radius 4 around positive clicks, minus disks around negatives."""

    threshold = 0.5

    def set_image(self, image):
        self.shape = image.shape[:2]

    def reset(self):
        pass

    def predict(self, clicks):
        yy, xx = np.mgrid[0:self.shape[0], 0:self.shape[1]]
        out = np.zeros(self.shape, dtype=np.float32)
        for c in sorted(clicks, key=lambda c: c.index):
            out[(yy - c.y) ** 2 + (xx - c.x) ** 2 <= 16] = 1.0 if c.is_positive else 0.0
        return out


def square_instance(size: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    gt = np.zeros((size, size), dtype=bool)
    gt[8:32, 8:32] = True
    return image, gt, np.zeros_like(gt)


def test_strategy_options_and_registration():
    assert ClickabilityStrategy("uniform", clicking_group=3).group == 3
    assert (ClickabilityStrategy("uniform", clicking_group=3).low, ClickabilityStrategy("uniform").high) == (0.2, 1.0)
    assert ClickabilityStrategy("uniform").group == SAMPLE_GROUP
    assert isinstance(build_strategy("clickability", clickability="distance_transform", clicking_group=1),
                      ClickabilityStrategy)
    with pytest.raises(ValueError, match="either clicking_group or band"):
        ClickabilityStrategy("uniform", clicking_group=1, band=(0.0, 0.5))
    with pytest.raises(ValueError, match="exactly one of checkpoint or net"):
        ClickabilityStrategy("network")


def test_groups_sample_least_and_most_clickable_pixels_of_the_dt_map():
    image, gt, ignore = square_instance()
    state = error_state(gt, np.zeros_like(gt), ignore, np.ones_like(gt))
    dt = distance_transform_baseline(state.error)
    for group, check in ((1, lambda v, lo, hi: v <= hi), (10, lambda v, lo, hi: v >= lo)):
        strategy = ClickabilityStrategy("distance_transform", clicking_group=group)
        strategy.start_instance(image, gt, ignore, np.random.default_rng(0))
        lo, hi = band_thresholds(dt * state.error, *group_band(group))
        for _ in range(20):
            click = strategy.next_click(state, 0)
            assert click.is_positive and gt[click.y, click.x]
            assert check(dt[click.y, click.x], lo, hi)


def test_clicking_group_episode_is_seeded_and_follows_the_error():
    image, gt, ignore = square_instance()

    def episode(seed):
        strategy = ClickabilityStrategy("uniform", clicking_group=5)
        predictor = DiskPredictor()
        predictor.set_image(image)
        return run_episode(predictor, image, gt, ignore, strategy, np.random.default_rng(seed), max_clicks=20)

    records = episode(0)
    assert len(records) == 20
    first = records[0].click
    assert first.is_positive and gt[first.y, first.x]
    for r in records:  # positive clicks on the object, negative ones off it
        if r.click is not None:
            assert gt[r.click.y, r.click.x] == r.click.is_positive
    assert [r.click for r in episode(0)] == [r.click for r in records]
    assert [r.click for r in episode(1)] != [r.click for r in records]


def test_network_strategy_clicks_inside_the_error_region():
    torch.manual_seed(0)
    net = ClickabilityNet("resnet18", decoder_channels=16)
    image, gt, ignore = square_instance()
    strategy = ClickabilityStrategy("network", net=net, clicking_group=10, input_size=32)
    assert not strategy.net.training
    strategy.start_instance(image, gt, ignore, np.random.default_rng(0))
    pred = np.zeros_like(gt)
    pred[8:32, 8:20] = True  # the right part of the object is missing: a positive click there
    state = error_state(gt, pred, ignore, np.ones_like(gt))
    raw = strategy.clickability_map(state.error)
    assert raw.shape == gt.shape and raw.min() == 0.0 and raw.max() == pytest.approx(1.0, abs=1e-6)
    click = strategy.next_click(state, 1)
    assert click.is_positive and state.fn[click.y, click.x]


def test_clicking_groups_script_writes_the_robustness_table(tmp_path):
    # Base + G1..G10 of the weights-free GrabCut predictor on one bundled image, 3 clicks (~1 min).
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "clicking_groups.py"
    spec = importlib.util.spec_from_file_location("clicking_groups", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.main(["--root", str(path.parents[1] / "sample_data"), "--datasets", "GrabCut",
                        "--predictor", "grabcut", "--clickability", "uniform", "--max-clicks", "3",
                        "--max-images", "1", "--output", str(tmp_path)])
    assert len(rows) == 1 and rows[0]["instances"] == 1
    for key in ("Sample NoC@90", "Sample NoC@90 ±", "ΔSB NoC@90 %", "ΔGR NoC@90 %", "Sample NSR IoU-AUC"):
        assert np.isfinite(rows[0][key])
    with open(tmp_path / "per_instance.csv", newline="") as fh:
        modes = [(r["mode"], int(r["group"])) for r in csv.DictReader(fh)]
    assert modes == [("Base", 0)] + [(f"G{k}", k) for k in range(1, 11)]
    assert (tmp_path / "robustness.md").is_file() and (tmp_path / "G10" / "summary.csv").is_file()
