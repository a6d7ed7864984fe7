"""SemSeg's open-set evaluation (litseg/metrics/open_set.py) against pycocotools run directly."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from litseg.io import DataError, write_json
from litseg.metrics.open_set import UNKNOWN_ID, OpenSetCocoMetric, evaluate_open_set, metric_names, read_detections
from litseg.readers.coco import CocoInstances, encode_mask
from tests.fakes import uncompressed_rle, write_coco
from tests.helpers import free_port, init_gloo

H, W = 30, 40
KNOWN = (1, 2)  # "A", "B"; 5 and 7 are unknown


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def poly(y0: int, y1: int, x0: int, x1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def ann(ann_id, image_id, cat, seg, bbox, iscrowd=0, area=None):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg, "bbox": bbox,
            "iscrowd": iscrowd, "area": float(area if area is not None else bbox[2] * bbox[3])}


def det(image_id, cat, mask, score, box_jitter=(0, 0, 0, 0)):
    box = [b + j for b, j in zip(box_of(mask), box_jitter)]
    return {"image_id": image_id, "category_id": cat, "score": score, "bbox": box, "segmentation": encode_mask(mask)}


def blob(cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def fixture_data():
    """4 images (image 4 without any annotation), known A=1 / B=2, unknown u1=5 / u2=7, one crowd
    unknown; polygon, compressed and uncompressed RLE ground truth; known and unknown detections
    with false positives, a non-known non-1000 label (5) and > 10 unknown rows on image 1."""
    b2, a5, u4 = blob(22, 8, 5, 6), blob(10, 10, 6, 7), rect(18, 28, 22, 36)
    crowd = rect(0, 14, 24, 40)
    anns = [
        ann(1, 1, 1, poly(2, 12, 2, 14), [2, 2, 12, 10]),
        ann(2, 1, 2, encode_mask(b2), box_of(b2), area=b2.sum()),
        ann(3, 1, 5, poly(4, 16, 20, 34), [20, 4, 14, 12]),
        ann(4, 1, 7, encode_mask(u4), box_of(u4)),
        ann(5, 2, 1, encode_mask(a5), box_of(a5), area=a5.sum()),
        ann(6, 2, 5, uncompressed_rle(crowd), box_of(crowd), iscrowd=1),
        ann(7, 2, 7, poly(18, 28, 4, 20), [4, 18, 16, 10]),
        ann(8, 3, 2, poly(5, 20, 5, 25), [5, 5, 20, 15]),
        ann(9, 3, 5, poly(20, 29, 26, 38), [26, 20, 12, 9]),
        ann(10, 3, 7, poly(2, 8, 30, 38), [30, 2, 8, 6]),
    ]
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (1, 2, 3, 4)],
          "categories": [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}, {"id": 5, "name": "u1"},
                         {"id": 7, "name": "u2"}],
          "annotations": anns}
    rng = np.random.default_rng(0)
    dets = [
        # known, image 1
        det(1, 1, rect(3, 12, 2, 14), 0.95, (0, 0, 1, 0)),
        det(1, 2, b2, 0.80),
        det(1, 2, rect(0, 6, 30, 40), 0.85),                       # FP, scored above the TP
        det(1, 1, rect(4, 16, 20, 34), 0.60, (1, 0, 0, 0)),         # known A on unknown u1: AOSE
        det(1, 2, rect(19, 28, 22, 36), 0.55),                       # known B on unknown u2: AOSE
        # known, image 2
        det(2, 1, np.roll(a5, 3, axis=1), 0.90),
        det(2, 1, rect(2, 10, 30, 38), 0.70),                       # A inside the crowd unknown: not AOSE
        det(2, 2, rect(18, 28, 5, 20), 0.40, (0, 1, 0, 0)),         # B on u2: AOSE
        # known, image 3
        det(3, 2, rect(6, 20, 5, 25), 0.75),
        det(3, 2, rect(6, 20, 6, 25), 0.74),                        # duplicate: FP
        det(3, 1, rect(20, 29, 26, 38), 0.65),                      # A on u1: AOSE
        det(3, 1, rect(20, 25, 26, 38), 0.64),                      # A on u1 at IoU < .5: no AOSE
        # known, image 4 (no GT)
        det(4, 1, rect(10, 20, 10, 20), 0.97),
        det(4, 2, rect(5, 9, 5, 9), 0.30),
        # unknown, image 1: 12 high-scored false positives first, then the true ones
        *[det(1, UNKNOWN_ID, rect(y, y + 3, x, x + 3), 0.99 - 0.01 * k)
          for k, (y, x) in enumerate(rng.integers(0, 10, size=(12, 2)).tolist())],
        det(1, UNKNOWN_ID, rect(4, 15, 21, 34), 0.50),
        det(1, UNKNOWN_ID, rect(18, 27, 22, 34), 0.45, (0, 0, -1, 0)),
        # unknown, image 2
        det(2, UNKNOWN_ID, rect(18, 28, 4, 20), 0.91),
        det(2, UNKNOWN_ID, rect(0, 12, 26, 40), 0.89),              # on the crowd: ignored
        det(2, UNKNOWN_ID, rect(2, 8, 2, 8), 0.35),                 # FP
        # unknown, image 3: a non-known, non-1000 label counts as unknown
        det(3, 5, rect(20, 29, 27, 38), 0.66),
        det(3, UNKNOWN_ID, rect(2, 9, 30, 37), 0.20),
        # unknown, image 4 (no GT): FP
        det(4, UNKNOWN_ID, rect(0, 10, 0, 10), 0.97),
    ]
    return gt, dets


def _coco(images, categories, annotations) -> COCO:
    api = COCO()
    api.dataset = {"images": copy.deepcopy(images), "categories": categories, "annotations": copy.deepcopy(annotations)}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _cocoeval(gt_api, rows, iou_type, cat_ids, max_dets, img_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes(copy.deepcopy(rows))
        ev = COCOeval(gt_api, dt_api, iou_type)
        ev.params.catIds, ev.params.maxDets, ev.params.imgIds = list(cat_ids), list(max_dets), list(img_ids)
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean(a):
    a = a[a > -1]
    return float(a.mean()) if a.size else float("nan")


def reference(gt, dets, known, iou_type):
    """The spec's recipe written out with plain pycocotools (the test's own relabelling)."""
    images = [i["id"] for i in gt["images"]]
    known_gt = _coco(gt["images"], [c for c in gt["categories"] if c["id"] in known],
                     [a for a in gt["annotations"] if a["category_id"] in known])
    ev = _cocoeval(known_gt, [d for d in dets if d["category_id"] in known], iou_type, known,
                   [10, 20, 30, 50, 100], images)
    p = ev.eval["precision"]
    out = {"AP_k": _mean(p[:, :, :, 0, 4]), "AP50_k": _mean(p[0, :, :, 0, 4]), "AP75_k": _mean(p[5, :, :, 0, 4])}
    unknown_gt = _coco(gt["images"], [{"id": 1000, "name": "unknown"}],
                       [dict(a, category_id=1000) for a in gt["annotations"] if a["category_id"] not in known])
    ev = _cocoeval(unknown_gt, [dict(d, category_id=1000) for d in dets if d["category_id"] not in known],
                   iou_type, [1000], [10, 30, 100], images)
    r, p = ev.eval["recall"], ev.eval["precision"]
    out.update({"AR_unk@10": _mean(r[:, :, 0, 0]), "AR_unk@30": _mean(r[:, :, 0, 1]),
                "AR_unk@100": _mean(r[:, :, 0, 2]), "AP_unk": _mean(p[:, :, :, 0, 2]),
                "AP50_unk": _mean(p[0, :, :, 0, 2]), "AP75_unk": _mean(p[5, :, :, 0, 2])})
    return out


def aose_by_recall(gt, dets, known, iou_type) -> int:
    """AOSE by the equivalence trick: per known c, COCOeval with the unknown GT relabelled as c;
    AOSE_c = recall(IoU .5, maxDets 100) x #non-crowd unknown GT."""
    unknown = [a for a in gt["annotations"] if a["category_id"] not in known]
    n_countable = sum(1 for a in unknown if not a["iscrowd"])
    total = 0
    for c in known:
        rows = [d for d in dets if d["category_id"] == c]
        if not rows:
            continue
        api = _coco(gt["images"], [{"id": c, "name": str(c)}], [dict(a, category_id=c) for a in unknown])
        ev = _cocoeval(api, rows, iou_type, [c], [100], [i["id"] for i in gt["images"]])
        recall = ev.eval["recall"][0, 0, 0, 0]
        total += round(recall * n_countable) if recall > -1 else 0
    return total


# ----------------------------------------------------------------------------- evaluate_open_set


@pytest.fixture(scope="module")
def data():
    gt, dets = fixture_data()
    return gt, dets, evaluate_open_set(gt, dets, KNOWN)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_matches_pycocotools_directly(data, iou_type):
    gt, dets, got = data
    want = reference(gt, dets, KNOWN, iou_type)
    for name, value in want.items():
        assert not math.isnan(value), name
        assert got[f"{iou_type}/{name}"] == pytest.approx(value, abs=1e-6, rel=0), name
    # the fixture is not trivial: values strictly between 0 and 1, and AR grows with K
    assert 0 < got[f"{iou_type}/AP_k"] < 1 and 0 < got[f"{iou_type}/AP_unk"] < 1
    assert got[f"{iou_type}/AR_unk@10"] < got[f"{iou_type}/AR_unk@30"] <= got[f"{iou_type}/AR_unk@100"]


def test_keys_and_inputs_untouched(data):
    gt, dets, got = data
    assert list(got) == metric_names() and all(isinstance(v, float) for v in got.values())
    assert (gt, dets) == fixture_data()  # nothing mutated (loadRes / COCOeval write into their inputs)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_aose_loop_equals_cocoeval_recall_trick(data, iou_type):
    gt, dets, got = data
    want = aose_by_recall(gt, dets, KNOWN, iou_type)
    assert got[f"{iou_type}/AOSE"] == want
    assert want == 4  # A on u1 (img 1, img 3), B on u2 (img 1, img 2); the crowd and IoU<.5 rows do not count


def test_non_known_label_is_unknown_and_relabelled_gt_is_the_same(data):
    gt, dets, got = data
    # the row labelled 5 (a non-known id) acts exactly as a row labelled 1000
    as_1000 = [dict(d, category_id=UNKNOWN_ID) if d["category_id"] == 5 else d for d in dets]
    assert evaluate_open_set(gt, as_1000, KNOWN) == got
    without = [d for d in dets if d["category_id"] != 5]
    assert evaluate_open_set(gt, without, KNOWN, ("bbox",))["bbox/AR_unk@100"] < got["bbox/AR_unk@100"]
    # a ground truth already relabelled to 1000 (open_set_gt style) gives the same numbers
    relabelled = copy.deepcopy(gt)
    for a in relabelled["annotations"]:
        if a["category_id"] not in KNOWN:
            a["category_id"] = UNKNOWN_ID
    relabelled["categories"] = gt["categories"][:2] + [{"id": UNKNOWN_ID, "name": "unknown"}]
    assert evaluate_open_set(relabelled, dets, KNOWN) == got


def test_image_without_gt_counts_false_positives(data):
    gt, dets, got = data
    no_fp = [d for d in dets if d["image_id"] != 4]
    fewer = evaluate_open_set(gt, no_fp, KNOWN)
    assert fewer["segm/AP_k"] > got["segm/AP_k"] and fewer["bbox/AP_unk"] > got["bbox/AP_unk"]


def test_errors_name_the_problem(data):
    gt, dets, _ = data
    with pytest.raises(ValueError, match="known id 3 is not a category"):
        evaluate_open_set(gt, dets, [1, 3])
    with pytest.raises(ValueError, match="1000"):
        evaluate_open_set(gt, dets, [1, 1000])
    with pytest.raises(ValueError, match="image id 9"):
        evaluate_open_set(gt, [dict(dets[0], image_id=9)], KNOWN)
    with pytest.raises(ValueError, match="row 0 lacks 'segmentation'"):
        evaluate_open_set(gt, [{k: v for k, v in dets[0].items() if k != "segmentation"}], KNOWN)
    with pytest.raises(ValueError, match="iou_types"):
        evaluate_open_set(gt, dets, KNOWN, ("keypoints",))


def test_nothing_to_score_is_nan_not_minus_one(data):
    gt, _, _ = data
    only_known = dict(gt, annotations=[a for a in gt["annotations"] if a["category_id"] in KNOWN])
    got = evaluate_open_set(only_known, [], KNOWN, ("bbox",))
    assert got["bbox/AP_k"] == 0.0  # GT present, no detection: 0
    assert math.isnan(got["bbox/AR_unk@10"]) and math.isnan(got["bbox/AP_unk"]) and got["bbox/AOSE"] == 0.0


# ----------------------------------------------------------------------------- AOSE by hand


def _hand_case():
    """20 x 20 images; known A=1, B=2, unknown U=3; every mask a rectangle (segm = bbox IoU)."""
    h = w = 20

    def r(y0, y1, x0, x1):
        return rect(y0, y1, x0, x1, h, w)

    def a(i, img, cat, m, crowd=0):
        return ann(i, img, cat, encode_mask(m), box_of(m), iscrowd=crowd, area=m.sum())

    u = r(2, 12, 2, 12)  # 10 x 10
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i in (1, 2, 3, 4)],
          "categories": [{"id": 1, "name": "A"}, {"id": 2, "name": "B"}, {"id": 3, "name": "U"}],
          "annotations": [
              a(1, 1, 3, u), a(2, 1, 1, r(14, 19, 14, 19)),
              a(3, 2, 3, r(0, 20, 0, 20), crowd=1),
              a(4, 3, 3, r(4, 14, 4, 14)), a(5, 3, 3, r(0, 20, 0, 20), crowd=1),
              a(6, 4, 3, u)]}

    def d(img, cat, m, s):
        return {"image_id": img, "category_id": cat, "score": s, "bbox": box_of(m), "segmentation": encode_mask(m)}

    cases = {
        # two A rows over one unknown: the GT is matched once per class -> 1; the same box as B -> +1
        1: ([d(1, 1, u, 0.9), d(1, 1, u, 0.8), d(1, 2, u, 0.7), d(1, 1, r(14, 19, 14, 19), 0.6)], 2),
        # a match to a crowd unknown is not counted
        2: ([d(2, 1, r(5, 10, 5, 10), 0.9)], 0),
        # non-crowd preferred over crowd; the second copy falls onto the crowd region -> 1
        3: ([d(3, 1, r(4, 14, 4, 14), 0.9), d(3, 1, r(4, 14, 4, 14), 0.8)], 1),
        # IoU 0.49 (7 x 7 inside 10 x 10) no; IoU exactly 0.5 (5 x 10) yes
        4: ([d(4, 1, r(2, 9, 2, 9), 0.9), d(4, 2, r(2, 7, 2, 12), 0.8)], 1),
    }
    return gt, cases


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_aose_hand_counted(iou_type):
    gt, cases = _hand_case()
    known = (1, 2)
    for image_id, (rows, want) in cases.items():
        got = evaluate_open_set(gt, rows, known, (iou_type,), image_ids=[image_id])
        assert got[f"{iou_type}/AOSE"] == want, image_id
    rows = [row for rows, _ in cases.values() for row in rows]
    assert evaluate_open_set(gt, rows, known, (iou_type,))[f"{iou_type}/AOSE"] == 4
    assert aose_by_recall(gt, rows, known, iou_type) == 4


def test_aose_keeps_top_100_per_image_and_class():
    h, w = 22, 20
    masks = [rect(2 * (k // 10), 2 * (k // 10) + 2, 2 * (k % 10), 2 * (k % 10) + 2, h, w) for k in range(101)]
    gt = {"images": [{"id": 1, "file_name": "1.png", "height": h, "width": w}],
          "categories": [{"id": 1, "name": "A"}, {"id": 3, "name": "U"}],
          "annotations": [ann(k + 1, 1, 3, encode_mask(m), box_of(m)) for k, m in enumerate(masks)]}
    rows = [{"image_id": 1, "category_id": 1, "score": 1.0 - k / 1000, "bbox": box_of(m)} for k, m in enumerate(masks)]
    assert evaluate_open_set(gt, rows, [1], ("bbox",))["bbox/AOSE"] == 100


# ----------------------------------------------------------------------------- the Metric


def _by_image(dets):
    out: dict[int, list] = {}
    for d in dets:
        out.setdefault(d["image_id"], []).append(d)
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) or (a[k].isnan() and b[k].isnan()) for k in a)


def test_metric_equals_function_and_split_ranks_merge_exactly(data):
    gt, dets, want = data
    rows = _by_image(dets)
    whole = OpenSetCocoMetric(gt, KNOWN)
    for image_id in (4, 2, 1, 3):  # any order
        whole.update(image_id, rows[image_id])
    got = whole.compute()
    assert all(v.dtype == torch.float64 for v in got.values())
    assert {k: v.item() for k, v in got.items()} == pytest.approx(want, abs=1e-12)

    rank0, rank1 = OpenSetCocoMetric(gt, KNOWN), OpenSetCocoMetric(gt, KNOWN)
    rank0.update(1, rows[1])
    rank0.update(3, rows[3])
    rank1.update(2, rows[2])
    rank1.update(4, rows[4])
    rank1.update(1, rows[1])  # a DistributedSampler repeat: counted once
    rank0.merge_state(rank1)
    assert _equal(rank0.compute(), got)
    assert rank0.detections() == whole.detections()
    assert rank0.image_ids() == [1, 2, 3, 4]


def test_metric_rows_sorted_first_record_wins_and_json_round_trip(data, tmp_path):
    gt, dets, _ = data
    rows = _by_image(dets)
    metric = OpenSetCocoMetric(gt, KNOWN, iou_types=("bbox",))
    assert metric(3, rows[3]) is None  # forward only updates
    metric.update(torch.tensor(1), rows[1])
    metric.update(1, [])  # a second record of image 1 is ignored
    out = metric.detections()
    assert [r["image_id"] for r in out] == [1] * len(rows[1]) + [3] * len(rows[3])
    scores = [r["score"] for r in out if r["image_id"] == 1]
    assert scores == sorted(scores, reverse=True)
    write_json(tmp_path / "coco_instances_results.json", out)
    assert read_detections(tmp_path / "coco_instances_results.json") == out
    metric.reset()
    assert metric.detections() == []


def test_metric_scores_only_the_images_seen(data, tmp_path):
    gt, dets, full = data
    rows = _by_image(dets)
    metric = OpenSetCocoMetric(gt, KNOWN)
    metric.update(1, rows[1])
    metric.update(2, [])  # seen without detections: its annotations are misses
    got = {k: v.item() for k, v in metric.compute().items()}
    assert got == pytest.approx(evaluate_open_set(gt, rows[1], KNOWN, image_ids=[1, 2]), abs=1e-12, nan_ok=True)
    assert got["segm/AR_unk@100"] != full["segm/AR_unk@100"]
    # the GT may also be given as a CocoInstances or a path to the instances file
    path = write_coco(tmp_path, gt)
    for source in (path, CocoInstances.load(path, check_files=False)):
        other = OpenSetCocoMetric(source, KNOWN)
        other.update(1, rows[1])
        other.update(2, [])
        assert _equal(other.compute(), metric.compute())


def test_metric_rejects_bad_input(data):
    gt, dets, _ = data
    with pytest.raises(ValueError, match="known id 4 is not a category"):
        OpenSetCocoMetric(gt, [1, 4])
    metric = OpenSetCocoMetric(gt, KNOWN)
    with pytest.raises(ValueError, match="image id 12"):
        metric.update(12, [])
    with pytest.raises(ValueError, match="image_id 2, updated as image 1"):
        metric.update(1, [dets[5]])
    with pytest.raises(ValueError, match="lacks 'segmentation'"):
        metric.update(1, [{"category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(ValueError, match="dist_sync_on_step"):
        OpenSetCocoMetric(gt, KNOWN, dist_sync_on_step=True)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_gloo(rank, world, port)
    try:
        torch.set_num_threads(1)
        gt, dets = fixture_data()
        rows = _by_image(dets)
        metric = OpenSetCocoMetric(gt, KNOWN)
        for image_id in range(1 + rank, 5, world):
            metric.update(image_id, rows[image_id])
        if rank == 1:
            metric.update(1, rows[1])  # padding repeat
        result = {"metrics": {k: v.item() for k, v in metric.compute().items()},
                  "detections": metric.detections(), "local": len(metric.entries)}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(data, tmp_path):
    gt, dets, want = data
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = OpenSetCocoMetric(gt, KNOWN)
    for image_id, image_rows in _by_image(dets).items():
        single.update(image_id, image_rows)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["metrics"] == pytest.approx(want, abs=1e-12)
        assert got["detections"] == single.detections()
        assert got["local"] == (2 if rank == 0 else 3)  # compute unsynced back to the rank's own records


# ----------------------------------------------------------------------------- read_detections


def test_read_detections_rejects_bad_files(tmp_path):
    not_list = tmp_path / "dict.json"
    not_list.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(DataError, match="expected a JSON list") as err:
        read_detections(not_list)
    assert str(err.value).startswith(str(not_list))

    bad = tmp_path / "bad.json"
    good = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 2, 2]}
    bad.write_text(json.dumps([good, {"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
                               dict(good, score=float("nan")), {"image_id": 2, "category_id": 3, "score": 0.1},
                               dict(good, segmentation=[[0, 0, 1, 0, 1, 1]])]))
    with pytest.raises(DataError) as err:
        read_detections(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: 4 data problems")
    for row, what in ((1, "missing 'score'"), (2, "score must be a finite number"),
                      (3, "missing 'bbox' or 'segmentation'"), (4, "segmentation must be a compressed RLE")):
        assert f"{bad}: row {row}: {what}" in message

    one = tmp_path / "one.json"
    one.write_text(json.dumps([dict(good, image_id="1")]))
    with pytest.raises(DataError, match=r"^.*one\.json: row 0: image_id must be an integer"):
        read_detections(one)
