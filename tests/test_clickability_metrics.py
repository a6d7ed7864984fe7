"""Saliency (KL / CC / SIM), click-distribution (KS / PL1 / WD / NSS / PDE) and robustness
(Sample NoC, ΔSB, ΔGR, ΔHH, NSR) metrics against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance_nd

from litseg.losses import kl_loss
from litseg.metrics.click_distribution import (
    aggregate_scores,
    click_distribution_scores,
    click_distribution_table,
    distance_transform_baseline,
    fasano_franceschini_statistic,
    ks2d2s_statistic,
    ks_2d,
    ks_column,
    ks_statistic,
    object_bbox_size,
    sample_clicks,
    uniform_baseline,
    wasserstein_2d,
)
from litseg.metrics.noc import InstanceTable
from litseg.metrics.robustness import align_groups, delta_gr, delta_hh, delta_sb, robustness_summary, sample_mean_std
from litseg.metrics.saliency import (
    SaliencyCC,
    SaliencyKLD,
    SaliencySIM,
    correlation_coefficient,
    kl_divergence,
    similarity,
)

# ----------------------------------------------------------------------------- saliency

RAMP = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
CORNERS = torch.tensor([[1.0, 0.0, 0.0, 1.0]])


def test_kl_divergence_hand_values():
    # pred uniform (1/4 each), gt [1/2, 0, 0, 1/2]: KL = 2 * 1/2 * log(1/2 / 1/4) = log 2
    uniform = torch.ones(1, 4)
    assert kl_divergence(uniform, CORNERS).item() == pytest.approx(math.log(2), rel=1e-6)
    assert kl_divergence(CORNERS, CORNERS).item() == pytest.approx(0.0, abs=1e-6)
    # batch mean; maps of any shape B x ...
    pred = torch.stack([uniform.view(2, 2), CORNERS.view(2, 2)])
    gt = torch.stack([CORNERS.view(2, 2), CORNERS.view(2, 2)])
    assert kl_loss(pred, gt).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    # a prediction with zero mass where the target has mass is penalised through eps, not inf
    assert math.isfinite(kl_divergence(torch.tensor([[1.0, 0, 0, 0]]), CORNERS).item())


def test_cc_and_sim_hand_values():
    assert correlation_coefficient(RAMP, 2 * RAMP + 5).item() == pytest.approx(1.0, abs=1e-6)
    assert correlation_coefficient(RAMP, RAMP.flip(1)).item() == pytest.approx(-1.0, abs=1e-6)
    # min-max ramp [0,1/3,2/3,1] centred [-1/2,-1/6,1/6,1/2] vs corners centred [1/2,-1/2,-1/2,1/2]: sum 0
    assert correlation_coefficient(RAMP, CORNERS).item() == pytest.approx(0.0, abs=1e-6)
    # SIM: ramp -> [0,1/6,1/3,1/2], corners -> [1/2,0,0,1/2]; sum of minima = 1/2
    assert similarity(RAMP, CORNERS).item() == pytest.approx(0.5, abs=1e-6)
    assert similarity(CORNERS, CORNERS).item() == pytest.approx(1.0, abs=1e-6)


def test_metric_classes_average_over_samples_not_batches():
    kld = SaliencyKLD()
    kld.update(torch.ones(1, 4), CORNERS)  # log 2
    kld.update(torch.cat([CORNERS, CORNERS]), torch.cat([CORNERS, CORNERS]))  # 0, 0
    assert kld.compute().item() == pytest.approx(math.log(2) / 3, rel=1e-5)
    sim, cc = SaliencySIM(), SaliencyCC()
    sim.update(RAMP, CORNERS)
    sim.update(CORNERS, CORNERS)
    cc.update(RAMP, 2 * RAMP)
    assert sim.compute().item() == pytest.approx(0.75, abs=1e-6)
    assert cc.compute().item() == pytest.approx(1.0, abs=1e-6)
    assert SaliencySIM.higher_is_better and not SaliencyKLD.higher_is_better


# ----------------------------------------------------------------------------- 2-D KS

A = np.array([[0, 0], [1, 2], [2, 1]], dtype=float)
B = A + 3


def q_ks(lam: float, terms: int = 200) -> float:
    """Kolmogorov's Q_KS(lambda) = 2 sum (-1)^(j-1) exp(-2 j^2 lambda^2), summed independently of scipy."""
    return 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, terms))


def press_lambda(d: float) -> float:
    # r(A) = r(B) = 1/2 (dx=[-1,0,1], dy=[-1,1,0]); N = 3*3/6 = 1.5
    sqrt_n = math.sqrt(1.5)
    rr = math.sqrt(1 - 0.5 * (0.25 + 0.25))
    return d * sqrt_n / (1 + rr * (0.25 - 0.75 / sqrt_n))


def test_ks_2d_hand_case():
    # Textbook. Around A's points (quadrants: >x >y, <=x >y, <=x <=y, >x <=y):
    #   (1,2): A -> [0,0,2/3,1/3], B -> [1,0,0,0]: max |diff| = 1
    # Around B's points: (3,3): A -> [0,0,1,0], B -> [2/3,0,1/3,0]: 2/3 (the others give 1/3)
    # D = (1 + 2/3) / 2 = 5/6
    assert fasano_franceschini_statistic(A, B) == pytest.approx(5 / 6)
    d, p = ks_2d(A, B, "textbook")  # was ks_2d(A, B) while textbook was the default
    assert d == pytest.approx(5 / 6)
    assert p == pytest.approx(q_ks(press_lambda(5 / 6)), rel=1e-9)  # lambda = 1.4874
    assert p == pytest.approx(0.0240, abs=5e-4)
    # ndtest (RClicks): around A's points the upper-right gap of (1,2) is still 1. Around (3,3),
    # B without the origin is [0,1/3,0,1/3] against A's [0,0,1,0]: the lower-left gap is now 1
    # (2/3 in the textbook count). D = (1 + 1) / 2 = 1.
    assert ks2d2s_statistic(A, B) == pytest.approx(1.0)
    d, p = ks_2d(A, B)
    assert d == pytest.approx(1.0)
    assert p == pytest.approx(q_ks(press_lambda(1.0)), rel=1e-9)  # the same p-value formula
    assert p == pytest.approx(0.0034, abs=5e-5)


FIVE = np.array([[0, 0], [1, 2], [2, 1], [3, 3], [4, 0]], dtype=float)


def test_ks_variants_on_a_sample_against_itself():
    # Textbook: every quadrant share is equal -> 0. ndtest drops each origin from its own
    # quadrant and may put it into another one: 1/n = 0.2 on either side.
    assert ks_statistic(FIVE, FIVE, "textbook") == 0.0
    assert ks_statistic(FIVE, FIVE, "rclicks") == pytest.approx(0.2)
    assert ks_statistic(FIVE, FIVE) == pytest.approx(0.2)  # the default is RClicks'
    assert ks_2d(FIVE, FIVE, "textbook") == (0.0, 1.0)
    d, p = ks_2d(FIVE, FIVE)
    assert d == pytest.approx(0.2) and 0.05 < p < 1.0
    with pytest.raises(ValueError, match="unknown KS variant"):
        ks_statistic(FIVE, FIVE, "peacock")
    assert ks_column("rclicks") == "KS (ndtest ks2d2s)"
    assert ks_column("textbook") == "KS (textbook Fasano-Franceschini)"


def _quadrant_counts(ox: float, oy: float, points, skip: int | None = None) -> list[int]:
    """Counts in (x<=ox, y<=oy), (x<=ox, y>oy), (x>ox, y<=oy), (x>ox, y>oy), one point at a time."""
    counts = [0, 0, 0, 0]
    for k, (x, y) in enumerate(points):
        if k == skip:
            continue
        counts[(0 if y <= oy else 1) if x <= ox else (2 if y <= oy else 3)] += 1
    return counts


def reference_ks(s1: np.ndarray, s2: np.ndarray, variant: str) -> float:
    """Slow 2-D KS distance straight from the definitions.

    textbook: max over origins of s1 (then of s2) and quadrants of |share in s1 - share in s2|.
    rclicks (ndtest.ks2d2s): the same, but the origin's own sample is counted without the
    origin, which is then put back into one of the four quadrants, whichever gives the largest
    difference. The two sides are averaged.
    """
    def side(own, other):
        n, m = len(own), len(other)
        best = 0.0
        for i, (ox, oy) in enumerate(own):
            theirs = [c / m for c in _quadrant_counts(ox, oy, other)]
            if variant == "textbook":
                placements = [_quadrant_counts(ox, oy, own)]
            else:
                without = _quadrant_counts(ox, oy, own, skip=i)
                placements = [[c + (q == p) for q, c in enumerate(without)] for p in range(4)]
            for counts in placements:
                best = max(best, *(abs(c / n - t) for c, t in zip(counts, theirs, strict=True)))
        return best

    return (side(s1, s2) + side(s2, s1)) / 2


@pytest.mark.parametrize("variant", ["rclicks", "textbook"])
def test_ks_statistic_matches_a_loop_reference(variant):
    rng = np.random.default_rng(11)
    cases = [
        (rng.normal(size=(7, 2)), rng.normal(size=(9, 2))),
        (rng.normal(size=(12, 2)), rng.normal(size=(5, 2)) + 0.7),
        (rng.integers(0, 4, (15, 2)), rng.integers(0, 4, (10, 2))),  # pixel ties and duplicates
        (rng.integers(0, 3, (6, 2)), rng.integers(1, 5, (6, 2))),
        (np.array([[2, 2]]), rng.integers(0, 5, (4, 2))),  # one point
        (FIVE, FIVE),
        (A, B),
    ]
    for a, b in cases:
        expected = reference_ks(a.astype(float), b.astype(float), variant)
        assert ks_statistic(a, b, variant) == pytest.approx(expected, abs=1e-12)
        assert ks_statistic(b, a, variant) == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= expected <= 1.0


def test_ks2d2s_is_textbook_plus_at_most_one_over_n():
    rng = np.random.default_rng(5)
    for n1, n2 in itertools.product((4, 9), (5, 30)):
        a, b = rng.integers(0, 6, (n1, 2)), rng.normal(2.5, 1.5, (n2, 2))
        textbook, ndtest = fasano_franceschini_statistic(a, b), ks2d2s_statistic(a, b)
        assert textbook - 1e-12 <= ndtest <= textbook + 0.5 * (1 / n1 + 1 / n2) + 1e-12


@pytest.mark.parametrize("variant", ["rclicks", "textbook"])
def test_ks_2d_is_symmetric_and_identical_samples_pass(variant):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 2)), rng.normal(size=(55, 2))
    assert ks_2d(a, b, variant) == pytest.approx(ks_2d(b, a, variant))
    # textbook: (0, 1); ndtest: 1/n, still p = 1 (was ks_2d(a, a) == (0.0, 1.0) under the textbook default)
    d, p = ks_2d(a, a, variant)
    assert d == pytest.approx(0.0 if variant == "textbook" else 1 / 40) and p == pytest.approx(1.0)
    # same law: not rejected; shifted by one std: rejected
    assert ks_2d(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)), variant)[1] > 0.05
    assert ks_2d(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 1.0, variant)[1] < 0.01


def test_wasserstein_matches_scipy_linear_program():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, (12, 2)), rng.integers(0, 50, (12, 2))
    assert wasserstein_2d(a, b) == pytest.approx(wasserstein_distance_nd(a, b), rel=1e-9)
    assert wasserstein_2d(a, b[:7]) == pytest.approx(wasserstein_distance_nd(a, b[:7]), rel=1e-9)


# ----------------------------------------------------------------------------- per full_stem


def test_baselines():
    error = np.zeros((7, 7), dtype=np.float32)
    error[1:6, 1:6] = 1
    np.testing.assert_array_equal(uniform_baseline(error * 3), error)
    dt = distance_transform_baseline(error)
    # exact L2 distance to the nearest 0 pixel: centre 3, inner ring 2, outer ring 1; / 3
    assert dt[3, 3] == pytest.approx(1.0)
    assert dt[2, 3] == pytest.approx(2 / 3)
    assert dt[1, 1] == pytest.approx(1 / 3)
    assert dt[0, 0] == 0.0
    assert uniform_baseline(np.zeros((3, 3))).sum() == 0.0


def test_click_distribution_scores_with_a_point_mass_map():
    # All mass at (x=2, y=1): every bootstrap draw is N copies of that pixel.
    pred = np.zeros((4, 5))
    pred[1, 2] = 3.0
    obj = np.zeros((4, 5), dtype=np.uint8)
    obj[:, 1:4] = 1  # bbox 3 wide, 4 high, diagonal 5
    assert object_bbox_size(obj) == (3, 4)
    real = np.array([[2, 1], [3, 3]])
    s = click_distribution_scores(pred, real, obj, np.random.default_rng(0), draws=5)
    # PL1: pairs (2,1)-(2,1) -> 0 and (3,3)-(2,1) -> 1/3 + 2/4; mean over the pairs
    assert s["PL1"] == pytest.approx((0 + 1 / 3 + 0.5) / 2)
    # WD: optimal matching distances 0 and sqrt(5), mean / diagonal 5
    assert s["WD"] == pytest.approx(math.sqrt(5) / 2 / 5)
    # NSS: P = one-hot (mean 1/20, std sqrt(1/20 - 1/400)); z at the clicks averaged
    std = math.sqrt(1 / 20 - 1 / 400)
    assert s["NSS"] == pytest.approx(((1 - 0.05) / std + (0 - 0.05) / std) / 2)
    assert s["PDE"] == pytest.approx(0.5)
    # ndtest (default): D = (1 + 1/2) / 2 = 3/4, r = (1, 0): lambda = 0.75 / (1 + sqrt(0.5) * (0.25 - 0.75))
    # = 1.160 -> p = 0.14 > 0.05. Textbook: D = 1/2, lambda = 0.773 -> p = 0.59.
    assert ks_2d(real, [[2, 1], [2, 1]]) == pytest.approx((0.75, q_ks(0.75 / (1 - 0.5 * math.sqrt(0.5)))))
    assert s["KS"] == 1.0
    assert s["degenerate_map"] == 0
    textbook = click_distribution_scores(pred, real, obj, np.random.default_rng(0), draws=5, ks_variant="textbook")
    assert textbook == s
    same = click_distribution_scores(pred, np.array([[2, 1], [2, 1]]), obj, np.random.default_rng(0), draws=5)
    assert (same["KS"], same["PL1"], same["WD"]) == (1.0, 0.0, 0.0)


def test_click_distribution_scores_sampling_is_seeded_and_checks_input():
    rng = np.random.default_rng(1)
    pred = rng.random((20, 30))
    obj = np.zeros((20, 30))
    obj[5:15, 5:25] = 1
    real = rng.integers(5, 15, (15, 2))
    a = click_distribution_scores(pred, real, obj, np.random.default_rng(7), draws=10)
    b = click_distribution_scores(pred, real, obj, np.random.default_rng(7), draws=10)
    assert a == b
    flagged = click_distribution_scores(np.zeros((20, 30)), real, obj, np.random.default_rng(7), draws=3)
    assert flagged["degenerate_map"] == 1
    with pytest.raises(ValueError, match="non-negative"):
        click_distribution_scores(-pred, real, obj, np.random.default_rng(7))
    with pytest.raises(ValueError, match="empty"):
        click_distribution_scores(pred, real, np.zeros((20, 30)), np.random.default_rng(7))
    with pytest.raises(ValueError, match="unknown KS variant"):
        click_distribution_scores(pred, real, obj, np.random.default_rng(7), ks_variant="peacock")


@pytest.mark.parametrize("variant", ["rclicks", "textbook"])
def test_click_distribution_ks_is_the_pass_rate_of_the_chosen_test(variant):
    # Few real clicks, so the two statistics (which differ by up to 1/n) give different pass rates.
    rng = np.random.default_rng(2)
    pred = rng.random((12, 16)) ** 4
    obj = np.ones((12, 16))
    real = rng.integers(0, 12, (6, 2))
    draws = sample_clicks(pred / pred.sum(), (40, len(real)), np.random.default_rng(9))
    expected = np.mean([ks_2d(real, d, variant)[1] > 0.05 for d in draws])
    scores = click_distribution_scores(pred, real, obj, np.random.default_rng(9), draws=40, ks_variant=variant)
    assert scores["KS"] == pytest.approx(expected)
    other = click_distribution_scores(pred, real, obj, np.random.default_rng(9), draws=40,
                                      ks_variant="textbook" if variant == "rclicks" else "rclicks")
    assert other["KS"] != scores["KS"]
    assert (other["PL1"], other["WD"], other["NSS"]) == (scores["PL1"], scores["WD"], scores["NSS"])


def test_aggregate_and_table(tmp_path):
    rows = [
        {"model": "UD", "dataset": "GrabCut", "full_stem": "a", "KS": 0.0, "PL1": 0.5, "WD": 0.2, "NSS": 1.0,
         "PDE": 1e-4, "degenerate_map": 0},
        {"model": "UD", "dataset": "GrabCut", "full_stem": "b", "KS": 1.0, "PL1": 0.3, "WD": 0.1, "NSS": 3.0,
         "PDE": 3e-4, "degenerate_map": 1},
        {"model": "DT", "dataset": "GrabCut", "full_stem": "a", "KS": 0.5, "PL1": 0.4, "WD": 0.2, "NSS": 2.0,
         "PDE": 2e-4, "degenerate_map": 0},
    ]
    table = aggregate_scores(rows)
    assert [r["model"] for r in table] == ["UD", "DT"]
    assert table[0]["full_stems"] == 2 and table[0]["degenerate_maps"] == 1
    assert table[0]["KS"] == pytest.approx(0.5) and table[0]["PL1"] == pytest.approx(0.4)
    assert table[0]["NSS"] == pytest.approx(2.0) and table[0]["PDE"] == pytest.approx(2e-4)
    written = click_distribution_table(rows, tmp_path)
    # The KS column says which statistic it is (was plain "KS" before the variants).
    header = (tmp_path / "click_distribution.csv").read_text().splitlines()[0]
    assert header == "model,dataset,full_stems,KS (ndtest ks2d2s),PL1,WD,NSS,PDE,degenerate_maps"
    assert written[0]["KS (ndtest ks2d2s)"] == pytest.approx(0.5) and "KS" not in written[0]
    assert (tmp_path / "click_distribution.md").read_text().startswith(
        "| model | dataset | full_stems | KS (ndtest ks2d2s) | PL1 |")
    per_stem = (tmp_path / "click_distribution_per_stem.csv").read_text().splitlines()
    assert len(per_stem) == 4 and per_stem[0].startswith("model,dataset,full_stem,KS (ndtest ks2d2s),PL1,")
    click_distribution_table(rows, tmp_path, name="textbook", ks_variant="textbook")
    assert "KS (textbook Fasano-Franceschini)" in (tmp_path / "textbook.csv").read_text().splitlines()[0]
    assert rows[0]["KS"] == 0.0  # the input rows are left alone


def test_clickability_module_threads_the_ks_variant(tmp_path):
    from lit_modules.rclicks import ClickabilityModel

    assert ClickabilityModel(decoder_channels=8).hparams.ks_variant == "rclicks"
    with pytest.raises(ValueError, match="ks_variant"):
        ClickabilityModel(decoder_channels=8, ks_variant="peacock")
    model = ClickabilityModel(decoder_channels=8, ks_variant="textbook")
    model.test_rows = [{"model": "Ours", "dataset": "GrabCut", "full_stem": "a", "KS": 0.25, "PL1": 0.5,
                        "WD": 0.2, "NSS": 1.0, "PDE": 1e-4, "degenerate_map": 0}]
    model.evaluation_rows = aggregate_scores(model.test_rows)
    rows = model.write_evaluation(tmp_path)
    assert rows[0]["KS (textbook Fasano-Franceschini)"] == 0.25
    assert "| KS (textbook Fasano-Franceschini) |" in (tmp_path / "results.md").read_text()


# ----------------------------------------------------------------------------- robustness

BASE_NOC = {"A": 2, "B": 4}
GROUP_NOC = {"A": [4, 3, 3, 3, 3, 2, 2, 2, 2, 2], "B": [20, 6, 6, 6, 6, 4, 4, 4, 4, 4]}


def curve(noc: int, max_clicks: int = 20) -> np.ndarray:
    """IoU 0.5 until click ``noc``, 0.95 from there (NoC@90 = noc; 20 with IoU 0.5 throughout = failure)."""
    c = np.full(max_clicks, 0.5)
    if noc < max_clicks:
        c[noc - 1:] = 0.95
    return c


def auc(noc: int) -> float:
    # trapezoids over 19 intervals: (noc-2) at 0.5, one at (0.5+0.95)/2, (20-noc) at 0.95; noc=1: all 0.95
    if noc == 20:
        return 0.5
    if noc == 1:
        return 0.95
    return (0.5 * (noc - 2) + 0.725 + 0.95 * (20 - noc)) / 19


def robustness_table() -> InstanceTable:
    ids, groups, curves = [], [], []
    for iid, name in ((11, "A"), (22, "B")):
        for g, noc in enumerate([BASE_NOC[name], *GROUP_NOC[name]]):
            ids.append(iid)
            groups.append(g)
            curves.append(curve(noc))
    return InstanceTable(np.array(ids), np.array(groups), np.array(curves))


def test_robustness_primitives_hand_values():
    grouped = np.array([GROUP_NOC["A"], GROUP_NOC["B"]], dtype=float)
    base = np.array([2.0, 4.0])
    mean, std = sample_mean_std(grouped)
    assert mean == pytest.approx((2.6 + 6.4) / 2)  # per-instance means 2.6 and 6.4
    assert std == pytest.approx((math.sqrt(0.44) + math.sqrt(21.44)) / 2)  # population stds
    assert delta_sb(grouped, base) == pytest.approx(100 * (0.6 / 2 + 2.4 / 4) / 2)  # 45 %
    assert delta_gr(grouped) == pytest.approx(100 * (2 / 2 + 16 / 4) / 2)  # 250 %
    # pairs G1-G6..G5-G10: A -> [1, .5, .5, .5, .5], B -> [4, .5, .5, .5, .5]; mean 0.9
    assert delta_hh(grouped) == pytest.approx(90.0)
    assert delta_sb(grouped, base, relative=False) == pytest.approx((0.6 + 2.4) / 2)


def test_robustness_summary_from_a_noc_table():
    out = robustness_summary(robustness_table(), threshold=0.9)
    assert out["instances"] == 2
    assert out["Base NoC@90"] == pytest.approx(3.0)
    assert out["Sample NoC@90"] == pytest.approx(4.5)
    assert out["ΔSB NoC@90 %"] == pytest.approx(45.0)
    assert out["ΔGR NoC@90 %"] == pytest.approx(250.0)
    assert out["ΔHH NoC@90 %"] == pytest.approx(90.0)
    # NoF: only B at G1 fails. Counts over instances.
    assert out["Base NoF@90"] == 0.0
    assert out["Sample NoF@90"] == pytest.approx(0.1)
    assert out["Sample NoF@90 ±"] == pytest.approx(0.3)  # std of [1, 0 x 9]
    assert out["ΔSB NoF@90"] == pytest.approx(0.1)
    assert out["ΔGR NoF@90"] == pytest.approx(1.0)
    assert out["ΔHH NoF@90"] == pytest.approx(0.2)  # (NoF_G1 - NoF_G6) / 5 pairs
    auc_a = np.array([auc(n) for n in GROUP_NOC["A"]])
    auc_b = np.array([auc(n) for n in GROUP_NOC["B"]])
    assert out["Sample IoU-AUC"] == pytest.approx((auc_a.mean() + auc_b.mean()) / 2)
    assert out["ΔSB IoU-AUC"] == pytest.approx(((auc_a.mean() - auc(2)) + (auc_b.mean() - auc(4))) / 2)
    assert out["ΔGR IoU-AUC"] == pytest.approx(((auc_a[0] - auc_a[-1]) + (auc_b[0] - auc_b[-1])) / 2)
    nsr = 100 * (auc_a.std() / auc_a.mean() + auc_b.std() / auc_b.mean()) / 2
    assert out["Sample NSR IoU-AUC"] == pytest.approx(nsr, rel=1e-6)


def test_align_groups_rejects_missing_instances():
    table = robustness_table()
    keep = ~((table.instance_ids == 22) & (table.groups == 7))
    partial = InstanceTable(table.instance_ids[keep], table.groups[keep], table.curves[keep])
    with pytest.raises(ValueError, match="group 7"):
        align_groups(partial, partial.noc(0.9))
    only_base = table.select(0)
    with pytest.raises(ValueError, match="no results for group"):
        robustness_summary(only_base)
