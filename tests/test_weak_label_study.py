"""Seed aggregation of the weak-label study (no training): mean and sample std against hand numbers."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tests.helpers import REPO


def _load_study():
    spec = importlib.util.spec_from_file_location("weak_label_study", REPO / "scripts" / "weak_label_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


study = _load_study()


def _row(kind, seed, miou, iou_pet, best_epoch, effort=2.0, run_dir=None):
    return {"supervision": kind, "mIoU": miou, "IoU/pet": iou_pet, "seed": seed, "effort": effort,
            "best_epoch": best_epoch, "n_train": 14, "n_val": 6, "n_test": 6,
            "run_dir": run_dir or f"runs/{kind}/seed{seed}"}


def test_mean_std_is_the_sample_standard_deviation():
    # 0.5, 0.6, 0.7: mean 0.6; squared deviations 0.01 + 0 + 0.01 = 0.02; / (3 - 1) -> 0.01; sqrt -> 0.1
    mean, std = study.mean_std([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)
    # 2, 4: mean 3, deviations +-1 -> 2 / 1 -> sqrt 2 (the population std would be 1)
    assert study.mean_std([2.0, 4.0]) == pytest.approx((3.0, math.sqrt(2.0)))
    assert study.mean_std([0.42]) == (0.42, None)  # one seed: no spread, not a spread of zero
    with pytest.raises(ValueError):
        study.mean_std([])


def test_aggregate_seeds_by_hand():
    rows = [
        _row("points", 0, 0.50, 0.30, 12),
        _row("points", 1, 0.60, 0.40, 30),
        _row("points", 2, 0.70, 0.20, 25),
        _row("full", 0, 0.80, 0.70, 39, effort=25.0),
        _row("full", 1, 0.60, 0.50, 7, effort=25.0),
    ]
    summary = study.aggregate_seeds(rows)
    assert [r["supervision"] for r in summary] == ["points", "full"]  # first-seen order
    points, full = summary
    assert points["n_seeds"] == 3 and points["seeds"] == "0 1 2"
    assert points["mIoU"] == pytest.approx(0.6) and points["mIoU_std"] == pytest.approx(0.1)
    # IoU/pet 0.3, 0.4, 0.2: mean 0.3, deviations 0, 0.1, -0.1 -> 0.02 / 2 -> std 0.1
    assert points["IoU/pet"] == pytest.approx(0.3) and points["IoU/pet_std"] == pytest.approx(0.1)
    # best epochs 12, 30, 25: mean 67 / 3; deviations -31/3, 23/3, 8/3 -> (961 + 529 + 64) / 9 / 2
    assert points["best_epoch"] == pytest.approx(67 / 3)
    assert points["best_epoch_std"] == pytest.approx(math.sqrt(1554 / 18))
    assert points["best_epochs"] == "12 30 25"
    # Bookkeeping is kept, not averaged; run directories stay in the per-seed rows only.
    assert (points["effort"], points["n_train"], points["n_val"], points["n_test"]) == (2.0, 14, 6, 6)
    assert "run_dir" not in points and "seed" not in points
    # 0.8, 0.6: mean 0.7, std sqrt((0.01 + 0.01) / 1)
    assert full["mIoU"] == pytest.approx(0.7) and full["mIoU_std"] == pytest.approx(math.sqrt(0.02))
    assert full["effort"] == 25.0 and full["best_epochs"] == "39 7"


def test_aggregate_one_seed_and_missing_values():
    one = study.aggregate_seeds([_row("tags", 0, 0.4, 0.3, 5)])[0]
    assert one["mIoU"] == pytest.approx(0.4) and one["mIoU_std"] is None and one["best_epochs"] == "5"
    # A run without a best checkpoint has best_epoch None: averaged over the others, listed empty.
    rows = [_row("boxes", 0, 0.5, 0.4, None), _row("boxes", 1, 0.7, 0.6, 10), _row("boxes", 2, 0.6, 0.5, 20)]
    boxes = study.aggregate_seeds(rows)[0]
    assert boxes["best_epoch"] == pytest.approx(15.0) and boxes["best_epoch_std"] == pytest.approx(math.sqrt(50))
    assert boxes["best_epochs"] == " 10 20"
    # Bookkeeping that differs between seeds is listed rather than silently taking one value.
    rows[1]["n_test"] = 7
    assert study.aggregate_seeds(rows)[0]["n_test"] == "6 7 6"


def test_summary_markdown_cells():
    rows = [_row("points", 0, 0.50, 0.30, 12), _row("points", 1, 0.60, 0.40, 30), _row("points", 2, 0.70, 0.20, 25)]
    text = study.summary_markdown(study.aggregate_seeds(rows))
    header, rule, line, *rest = text.splitlines()
    assert header.startswith("| supervision | effort | mIoU |")
    cells = dict(zip(header.strip("|").split(" | "), line.strip("|").split(" | "), strict=True))
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    assert cells["mIoU"] == "0.600 ± 0.100" and cells["IoU/pet"] == "0.300 ± 0.100"
    assert cells["effort"] == "2" and cells["best_epochs"] == "12 30 25" and "best_epoch" not in cells
    assert any("sample standard deviation (n − 1) over 3 seeds (0 1 2)" in r for r in rest)
    single = study.summary_markdown(study.aggregate_seeds(rows[:1]))
    assert "| 0.500 |" in single and "±" not in single


def test_seeds_argument():
    assert study.parse_args([]).seeds == 1
    assert study.parse_args(["--seeds", "3", "--seed", "5"]).seeds == 3
    with pytest.raises(SystemExit):
        study.parse_args(["--seeds", "0"])


def test_cost_effectiveness_plot_uses_means_and_error_bars_when_supported(monkeypatch, tmp_path):
    summary = study.aggregate_seeds([
        _row("points", 0, 0.5, 0.3, 12), _row("points", 1, 0.7, 0.4, 30),
        _row("full", 0, 0.8, 0.7, 39, effort=25.0), _row("full", 1, 0.8, 0.6, 9, effort=25.0)])
    calls = []

    def without_yerr(points, path, xlabel, ylabel, title):
        calls.append({"points": points, "ylabel": ylabel})

    def with_yerr(points, path, xlabel, ylabel, title, yerr=None):
        calls.append({"points": points, "ylabel": ylabel, "yerr": yerr})

    monkeypatch.setattr(study, "labelled_scatter", without_yerr)
    study.plot_cost_effectiveness(summary, tmp_path / "plot.png")
    monkeypatch.setattr(study, "labelled_scatter", with_yerr)
    study.plot_cost_effectiveness(summary, tmp_path / "plot.png")
    plain, bars = calls
    means = {"points": (2.0, pytest.approx(0.6)), "full": (25.0, pytest.approx(0.8))}
    assert plain["points"] == bars["points"] == means
    assert "yerr" not in plain and plain["ylabel"] == "test mIoU (mean of 2 seeds)"
    assert bars["yerr"] == {"points": pytest.approx(math.sqrt(0.02)), "full": pytest.approx(0.0)}
    assert bars["ylabel"] == "test mIoU (mean ± std of 2 seeds)"
