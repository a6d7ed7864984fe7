"""NoC / NoF / mIoU@k / IoU-AUC: hand-worked curves, a NumPy reference, and 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from litseg.distributed import gather_objects, gather_rows, world_size
from litseg.metrics.noc import NoCMetric, instance_id, noc_per_instance, summarize_curves, threshold_label
from tests.helpers import free_port, init_gloo

CURVES = np.array([
    [0.50, 0.86, 0.90, 0.95, 0.97],  # NoC@80 2, @85 2, @90 3
    [0.10, 0.20, 0.30, 0.40, 0.90],  # reaches everything only at the last click: NoC 5, still a failure
    [0.00, 0.00, 0.00, 0.00, 0.00],  # never: NoC 5
    [0.85, 0.84, 0.80, 0.81, 0.88],  # NoC@80 1, @85 1, @90 5 (never)
])


def test_hand_worked_curves():
    stats = summarize_curves(CURVES)
    assert stats["NoC@80"] == pytest.approx((2 + 5 + 5 + 1) / 4)
    assert stats["NoC@85"] == pytest.approx((2 + 5 + 5 + 1) / 4)
    assert stats["NoC@90"] == pytest.approx((3 + 5 + 5 + 5) / 4)
    # NoF counts NoC == max_clicks, including the curve that reaches 0.9 exactly at click 5.
    assert stats["NoF@85"] == 2
    assert stats["NoF@90"] == 3
    assert stats["mIoU@1"] == pytest.approx((0.5 + 0.1 + 0.0 + 0.85) / 4)
    assert stats["mIoU@5"] == pytest.approx((0.97 + 0.9 + 0.0 + 0.88) / 4)
    # trapz / 4: curve 0 -> (0.5/2 + 0.86 + 0.9 + 0.95 + 0.97/2) / 4 = 0.86125
    auc = [0.86125, (0.05 + 0.2 + 0.3 + 0.4 + 0.45) / 4, 0.0, (0.425 + 0.84 + 0.80 + 0.81 + 0.44) / 4]
    assert stats["IoU-AUC"] == pytest.approx(np.mean(auc))
    assert stats["n_instances"] == 4


def test_noc_threshold_is_inclusive_and_labels():
    assert noc_per_instance(np.array([[0.85, 0.9]]), 0.85).tolist() == [1]
    assert noc_per_instance(np.array([[0.8499999, 0.9]]), 0.85).tolist() == [2]
    assert threshold_label(0.85) == "85" and threshold_label(0.9) == "90" and threshold_label(0.875) == "87.5"
    stats = summarize_curves(CURVES, iou_thresholds=[0.875], nof_thresholds=[0.95])
    assert stats["NoC@87.5"] == pytest.approx((3 + 5 + 5 + 5) / 4)
    assert stats["NoF@95"] == 3


def reference(curves: np.ndarray, thresholds, nof_thresholds) -> dict[str, float]:
    """A loop-by-loop NumPy reference of RITM's compute_noc_metric and the RClicks AUC."""
    n, t_max = curves.shape
    out = {}
    for t in thresholds:
        nocs = []
        for curve in curves:
            hits = [k for k in range(t_max) if curve[k] >= t]
            nocs.append(hits[0] + 1 if hits else t_max)
        out[f"NoC@{threshold_label(t)}"] = float(np.mean(nocs))
    for t in nof_thresholds:
        count = 0
        for curve in curves:
            hits = [k for k in range(t_max) if curve[k] >= t]
            count += (hits[0] + 1 if hits else t_max) == t_max
        out[f"NoF@{threshold_label(t)}"] = float(count)
    out["IoU-AUC"] = float(np.mean([np.trapezoid(c) / (t_max - 1) for c in curves]))
    for k in range(t_max):
        out[f"mIoU@{k + 1}"] = float(np.mean(curves[:, k]))
    out["n_instances"] = float(n)
    return out


def test_metric_matches_numpy_reference_on_random_curves():
    rng = np.random.default_rng(3)
    # Monotone-ish curves with ties at thresholds and plateaus, like real ones.
    curves = np.clip(np.cumsum(rng.uniform(-0.05, 0.2, size=(37, 20)), axis=1), 0, 1).round(2)
    ids = np.arange(37) * 7 + 1
    metric = NoCMetric(max_clicks=20)
    metric.update(torch.from_numpy(curves[:20]), torch.from_numpy(ids[:20]))
    for i in range(20, 37):  # one curve at a time too
        metric.update(curves[i], int(ids[i]))
    got = {k: float(v) for k, v in metric.compute().items()}
    want = reference(curves, (0.8, 0.85, 0.9), (0.85, 0.9))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_duplicates_are_counted_once_and_groups_kept_apart():
    metric = NoCMetric(max_clicks=5)
    metric.update(CURVES, [1, 2, 3, 4])
    metric.update(CURVES[:2], [1, 2])  # e.g. a padded distributed sampler repeating samples
    assert float(metric.compute()["n_instances"]) == 4
    assert float(metric.compute()["NoC@90"]) == pytest.approx(4.5)
    metric.update(CURVES[:1], [2], group=3)  # same instance, clicking group 3
    with pytest.raises(ValueError, match="several groups"):
        metric.compute()
    per_group = metric.compute_groups()
    assert sorted(per_group) == [0, 3]
    assert float(per_group[3]["NoC@90"]) == 3 and float(per_group[0]["n_instances"]) == 4
    table = metric.per_instance()
    assert table.groups.tolist() == [0, 0, 0, 0, 3]
    assert table.instance_ids.tolist() == [1, 2, 3, 4, 2]
    assert table.select(3).noc(0.9).tolist() == [3]
    np.testing.assert_array_equal(table.select(0).curves, CURVES)


def test_update_rejects_wrong_shapes():
    metric = NoCMetric(max_clicks=5)
    with pytest.raises(ValueError, match=r"curves must be \[N, 5\]"):
        metric.update(np.zeros((2, 4)), [1, 2])
    with pytest.raises(ValueError, match="expected 2 instance ids"):
        metric.update(np.zeros((2, 5)), [1])


def test_instance_id_is_stable_and_distinct():
    assert instance_id("GrabCut", "teddy", 1) == instance_id("GrabCut", "teddy", 1)
    ids = {instance_id(d, i, k) for d in ("GrabCut", "Berkeley") for i in ("a", "b") for k in (1, 2)}
    assert len(ids) == 8 and all(0 <= v < 2**63 for v in ids)
    # Pinned: the id is the first 8 bytes (little-endian, top bit cleared) of
    # sha256 of "GrabCut", NUL, "teddy", NUL, "1"; a change would break comparing runs.
    assert instance_id("GrabCut", "teddy", 1) == 7658849541148687409


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_gloo(rank, world, port)
    try:
        rng = np.random.default_rng(11)
        curves = rng.uniform(0, 1, size=(9, 6)).round(3)
        main = NoCMetric(max_clicks=6)
        empty = NoCMetric(max_clicks=6)  # rank 1 never updates it (a dataset it got no image of)
        # rank r takes rows r, r+2, ...; rank 1 also repeats row 0 (a padding duplicate).
        for i in range(rank, 9, world):
            main.update(curves[i], i)
        if rank == 1:
            main.update(curves[0], 0)
        if rank == 0:
            empty.update(curves[:2], [5, 6])
        result = {
            "main": {k: float(v) for k, v in main.compute().items()},
            "empty": {k: float(v) for k, v in empty.compute().items()},
            "ids": main.per_instance().instance_ids.tolist(),
            "rows": gather_rows(f"r{rank}-{i}" for i in range(rank + 1)),  # rank 1 has more rows than rank 0
            "world": world_size(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    """Ranks with disjoint, duplicated and no data: both ranks compute the one-process result."""
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rng = np.random.default_rng(11)
    curves = rng.uniform(0, 1, size=(9, 6)).round(3)
    single = NoCMetric(max_clicks=6)
    single.update(curves, np.arange(9))
    want = {k: float(v) for k, v in single.compute().items()}
    single_empty = NoCMetric(max_clicks=6)
    single_empty.update(curves[:2], [5, 6])
    want_empty = {k: float(v) for k, v in single_empty.compute().items()}
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["main"] == want  # exact: same de-duplicated, sorted rows
        assert got["empty"] == want_empty
        assert got["ids"] == list(range(9))
        assert got["rows"] == ["r0-0", "r1-0", "r1-1"] and got["world"] == 2


def test_gathering_without_a_process_group_is_local():
    assert world_size() == 1
    assert gather_objects({"a": 1}) == [{"a": 1}]
    assert gather_rows(iter([3, 1, 2])) == [3, 1, 2]
