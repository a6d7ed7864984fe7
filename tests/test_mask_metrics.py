"""Shared mask metrics: mask IoU conventions, gIoU / cIoU, pooled per-class IoU / accuracy, DDP sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassJaccardIndex

from litseg.metrics.masks import GIoUCIoU, PooledClassIoU, mask_iou, pairwise_mask_iou
from tests.helpers import free_port, init_gloo

EPS = 1e-10


def _mask(shape, *cells) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


def three_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """3 samples of 4 x 4:
    A: pred = rows 0-1 (8 px), target = row 0 (4 px)            -> I 4, U 8, IoU 1/2
    B: pred = pixel (0, 0), target = 2 x 2 block at (0, 0)       -> I 1, U 4, IoU 1/4
    C: pred = empty, target = row 3, cols 0-2 (3 px)             -> I 0, U 3, IoU 0
    """
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[0, 0:2, :] = True
    target[0, 0, :] = True
    pred[1, 0, 0] = True
    target[1, 0:2, 0:2] = True
    target[2, 3, 0:3] = True
    return pred, target


# ----------------------------------------------------------------------------- mask IoU


def test_mask_iou_conventions_and_batching():
    pred, target = three_samples()
    iou = mask_iou(pred, target)
    assert iou.dtype == torch.float64 and iou.shape == (3,)
    torch.testing.assert_close(iou, torch.tensor([4 / (8 + EPS), 1 / (4 + EPS), 0.0], dtype=torch.float64))
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0  # both empty: IoU 1
    assert mask_iou(empty, target[0]).item() == 0.0  # empty prediction, object present
    assert mask_iou(pred[0], empty).item() == 0.0  # prediction, nothing there
    # any leading shape; integer masks (0/1 or 0/255) are binary with > 0
    grid = mask_iou(torch.stack([pred, pred]).to(torch.uint8) * 255, torch.stack([target, target]).long())
    assert grid.shape == (2, 3)
    torch.testing.assert_close(grid[1], iou)
    with pytest.raises(TypeError, match="binarise"):
        mask_iou(pred.float(), target)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(pred, target[:2])


def test_pairwise_mask_iou_equals_pairs():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 9, 11, generator=gen) < 0.4
    b = torch.rand(4, 9, 11, generator=gen) < 0.3
    a[0] = False
    b[0] = False
    got = pairwise_mask_iou(a, b)
    want = torch.stack([mask_iou(a[i].expand(4, 9, 11), b) for i in range(5)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert got[0, 0] == 1.0 and (got[0, 1:] == 0).all()


# ----------------------------------------------------------------------------- gIoU / cIoU


def test_giou_ciou_hand_computed():
    pred, target = three_samples()
    metric = GIoUCIoU()
    metric.update(pred, target)
    out = metric.compute()
    # gIoU = (1/2 + 1/4 + 0) / 3 = 0.25 ; cIoU = (4 + 1 + 0) / (8 + 4 + 3) = 5 / 15 = 1/3
    assert out["gIoU"].item() == pytest.approx(0.25, abs=1e-9)
    assert out["cIoU"].item() == pytest.approx(1 / 3, abs=1e-9)
    assert out["gIoU"].dtype == torch.float64
    # exact with the spec's 1e-10 in the denominators
    assert out["gIoU"].item() == pytest.approx((4 / (8 + EPS) + 1 / (4 + EPS) + 0) / 3, rel=0, abs=1e-15)
    assert out["cIoU"].item() == pytest.approx(5 / (15 + EPS), rel=0, abs=1e-15)


def test_giou_ciou_empty_mask_conventions():
    pred, target = three_samples()
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    metric = GIoUCIoU()
    metric.update(pred, target)
    metric.update(empty, empty)  # D: both empty -> IoU 1, adds nothing to the cIoU sums
    out = metric.compute()
    # gIoU = (1/2 + 1/4 + 0 + 1) / 4 = 0.4375 ; cIoU still 5 / 15
    assert out["gIoU"].item() == pytest.approx(0.4375, abs=1e-9)
    assert out["cIoU"].item() == pytest.approx(1 / 3, abs=1e-9)
    false_alarm = _mask((4, 4), (1, 1), (2, 2))[None]
    metric.update(false_alarm, empty)  # E: 2 px predicted, empty target -> IoU 0, union +2
    out = metric.compute()
    # gIoU = 1.75 / 5 = 0.35 ; cIoU = 5 / 17
    assert out["gIoU"].item() == pytest.approx(0.35, abs=1e-9)
    assert out["cIoU"].item() == pytest.approx(5 / 17, abs=1e-9)

    only_empty = GIoUCIoU()
    only_empty.update(torch.zeros(3, 5, 5, dtype=torch.bool), torch.zeros(3, 5, 5, dtype=torch.bool))
    out = only_empty.compute()
    assert out["gIoU"].item() == 1.0 and out["cIoU"].item() == 0.0  # 0 / (0 + 1e-10)

    with pytest.warns(UserWarning, match="before the ``update``"):
        nothing = GIoUCIoU().compute()
    assert torch.isnan(nothing["gIoU"]) and torch.isnan(nothing["cIoU"])


def test_giou_ciou_batches_equal_one_shot_and_variable_sizes():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 12, 13, generator=gen)
    target = torch.rand(10, 12, 13, generator=gen) < 0.3
    target[3] = False
    one_shot = GIoUCIoU()
    one_shot.update(logits, target)  # float predictions: logit > 0
    batched = GIoUCIoU()
    for start in range(0, 10, 3):
        batched.update(logits[start:start + 3], target[start:start + 3])
    a, b = one_shot.compute(), batched.compute()
    assert a["gIoU"].item() == pytest.approx(b["gIoU"].item(), rel=0, abs=1e-15)
    assert a["cIoU"].item() == b["cIoU"].item()
    want = mask_iou(logits > 0, target)
    assert a["gIoU"].item() == pytest.approx(want.mean().item(), abs=1e-12)
    inter = ((logits > 0) & target).sum().item()
    union = ((logits > 0) | target).sum().item()
    assert a["cIoU"].item() == pytest.approx(inter / union, abs=1e-12)

    probs = GIoUCIoU(threshold=0.5)
    probs.update(torch.sigmoid(logits), target.to(torch.uint8) * 255)
    assert probs.compute()["gIoU"].item() == pytest.approx(a["gIoU"].item(), abs=1e-12)

    # samples at their own sizes, as sequences
    sizes = [(5, 7), (9, 4), (3, 3)]
    preds = [torch.rand(s, generator=gen) < 0.5 for s in sizes]
    targets = [torch.rand(s, generator=gen) < 0.5 for s in sizes]
    seq = GIoUCIoU()
    seq.update(preds, targets)
    ious = [mask_iou(p, t).item() for p, t in zip(preds, targets)]
    assert seq.compute()["gIoU"].item() == pytest.approx(sum(ious) / 3, abs=1e-12)
    assert int(seq.samples) == 3


# ----------------------------------------------------------------------------- pooled class IoU


def numpy_reference(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore: int) -> dict:
    keep = target != ignore
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (target[keep], preds[keep]), 1)
    tp = np.diag(cm).astype(float)
    gt = cm.sum(1).astype(float)
    pr = cm.sum(0).astype(float)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    return {"cm": cm, "IoU": iou, "Acc": acc, "mIoU": np.nanmean(iou), "mAcc": np.nanmean(acc),
            "pixel_acc": tp.sum() / gt.sum()}


def random_label_maps(seed: int, batch: int = 4):
    """C = 6: target uses {0, 1, 2, 3} and 255; predictions use {0, 1, 2, 4}.
    Class 3 is never predicted (IoU 0, Acc 0), class 4 only predicted (IoU 0, Acc NaN),
    class 5 absent from both (NaN, left out of both means)."""
    rng = np.random.default_rng(seed)
    target = rng.choice([0, 1, 2, 3], size=(batch, 17, 23), p=[0.4, 0.3, 0.2, 0.1])
    target[rng.random(target.shape) < 0.1] = 255
    preds = np.where(rng.random(target.shape) < 0.6, np.where(target == 3, 4, target),
                     rng.choice([0, 1, 2, 4], size=target.shape))
    preds[target == 255] = rng.choice([0, 1, 2, 4], size=int((target == 255).sum()))
    return preds, target


def test_pooled_class_iou_matches_numpy_reference():
    preds, target = random_label_maps(0)
    ref = numpy_reference(preds, target, 6, 255)
    metric = PooledClassIoU(num_classes=6, ignore_index=255)
    for b in range(4):  # batch by batch: pooled over the dataset, not per image
        metric.update(torch.from_numpy(preds[b:b + 1]), torch.from_numpy(target[b:b + 1]))
    out = metric.compute()
    np.testing.assert_array_equal(metric.confusion_matrix.numpy(), ref["cm"])
    np.testing.assert_allclose(out["IoU"].numpy(), ref["IoU"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out["Acc"].numpy(), ref["Acc"], rtol=0, atol=1e-15)
    assert out["mIoU"].item() == pytest.approx(ref["mIoU"], abs=1e-15)
    assert out["mAcc"].item() == pytest.approx(ref["mAcc"], abs=1e-15)
    assert out["pixel_acc"].item() == pytest.approx(ref["pixel_acc"], abs=1e-15)
    # the designed edge classes
    assert out["IoU"][3] == 0 and out["Acc"][3] == 0
    assert out["IoU"][4] == 0 and torch.isnan(out["Acc"][4])
    assert torch.isnan(out["IoU"][5]) and torch.isnan(out["Acc"][5])
    # mIoU over the 5 classes with a non-empty union, mAcc over the 4 ground-truth classes
    assert out["mIoU"].item() == pytest.approx(np.mean(ref["IoU"][:5]), abs=1e-15)
    assert out["mAcc"].item() == pytest.approx(np.mean(ref["Acc"][:4]), abs=1e-15)
    # the suite's mIoU (torchmetrics macro Jaccard) drops absent classes the same way
    tm = MulticlassJaccardIndex(num_classes=6, average="macro", ignore_index=255)
    tm.update(torch.from_numpy(preds), torch.from_numpy(target))
    assert out["mIoU"].item() == pytest.approx(tm.compute().item(), abs=1e-6)

    # B x C x H x W scores give the same as their argmax
    scores = torch.nn.functional.one_hot(torch.from_numpy(preds), 6).permute(0, 3, 1, 2).float()
    scores = scores + 0.01 * torch.rand(scores.shape, generator=torch.Generator().manual_seed(0))
    from_scores = PooledClassIoU(num_classes=6, ignore_index=255)
    from_scores.update(scores, torch.from_numpy(target))
    assert torch.equal(from_scores.confmat, metric.confmat)


def test_pooled_class_iou_input_checks_and_ignore_inside_range():
    metric = PooledClassIoU(num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match=r"target holds class ids 0\.\.7, outside 0\.\.2 or ignore_index 255"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="preds holds class ids"):
        metric.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    # ignore_index that is a class: its pixels are dropped and the class reports NaN
    zero_ignored = PooledClassIoU(num_classes=3, ignore_index=0)
    zero_ignored.update(torch.tensor([[0, 1, 2, 1]]), torch.tensor([[0, 1, 2, 2]]))
    out = zero_ignored.compute()
    assert torch.isnan(out["IoU"][0]) and torch.isnan(out["Acc"][0])
    # class 1: TP 1, FP 1 (pred 1 on a 2 pixel) -> IoU 1/2 ; class 2: TP 1, FN 1 -> IoU 1/2, Acc 1/2
    torch.testing.assert_close(out["IoU"][1:], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out["Acc"][1:], torch.tensor([1.0, 0.5], dtype=torch.float64))


def test_pooled_class_iou_paired_instances_saom_protocol():
    """SAOM: each prediction is compared with its own GT instance, pooled per class.
    Class 0: inst a  P 4 px, G 6 px, I 3 (U 7); inst b  P empty (missing), G 2 px (U 2)
             -> IoU_0 = (3 + 0) / (7 + 2) = 1/3, Acc_0 = 3 / (6 + 2) = 3/8
    Class 2: inst c  P = G, 5 px -> IoU_2 = 1, Acc_2 = 1
    Class 1: no instance -> NaN, left out.  mIoU = (1/3 + 1) / 2 = 2/3, mAcc = (3/8 + 1) / 2 = 11/16
    """
    h, w = 4, 6
    pa = _mask((h, w), (0, 0), (0, 1), (0, 2), (0, 3))
    ga = _mask((h, w), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3))
    pb = torch.zeros(h, w, dtype=torch.bool)
    gb = _mask((h, w), (3, 4), (3, 5))
    pc = gc = _mask((h, w), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1))
    metric = PooledClassIoU(num_classes=3)
    metric.update(torch.stack([pa, pb]), torch.stack([ga, gb]), classes=[0, 0])
    metric.update([pc], [gc], classes=torch.tensor([2]))  # sequences of masks work too
    out = metric.compute()
    assert out["IoU"][0].item() == pytest.approx(1 / 3) and out["Acc"][0].item() == pytest.approx(3 / 8)
    assert out["IoU"][2].item() == 1.0 and out["Acc"][2].item() == 1.0
    assert torch.isnan(out["IoU"][1]) and torch.isnan(out["Acc"][1])
    assert out["mIoU"].item() == pytest.approx(2 / 3) and out["mAcc"].item() == pytest.approx(11 / 16)
    with pytest.raises(ValueError, match="2 mask pairs but 1 classes"):
        metric.update(torch.stack([pa, pb]), torch.stack([ga, gb]), classes=[0])
    with pytest.raises(ValueError, match=r"classes must lie in 0\.\.2"):
        metric.update(pa[None], ga[None], classes=[3])


def test_pooled_class_iou_paired_instances_random_reference():
    rng = np.random.default_rng(3)
    n, c = 40, 5
    classes = rng.integers(0, c - 1, size=n)  # class 4 never occurs
    gts = rng.random((n, 9, 8)) < rng.uniform(0.1, 0.6, size=(n, 1, 1))
    preds = np.where(rng.random((n, 9, 8)) < 0.8, gts, ~gts)
    inter = np.zeros(c)
    union = np.zeros(c)
    gt_area = np.zeros(c)
    for i in range(n):
        inter[classes[i]] += (preds[i] & gts[i]).sum()
        union[classes[i]] += (preds[i] | gts[i]).sum()
        gt_area[classes[i]] += gts[i].sum()
    metric = PooledClassIoU(num_classes=c)
    for chunk in np.array_split(np.arange(n), 7):
        metric.update(torch.from_numpy(preds[chunk]), torch.from_numpy(gts[chunk]), classes=classes[chunk])
    out = metric.compute()
    np.testing.assert_allclose(out["IoU"][:4].numpy(), inter[:4] / union[:4], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out["Acc"][:4].numpy(), inter[:4] / gt_area[:4], rtol=0, atol=1e-15)
    assert torch.isnan(out["IoU"][4])
    assert out["mIoU"].item() == pytest.approx(np.mean(inter[:4] / union[:4]), abs=1e-15)


# ----------------------------------------------------------------------------- DDP-style merging


def _giou_data():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(8, 10, 10, generator=gen), torch.rand(8, 10, 10, generator=gen) < 0.4


def test_merge_state_equals_one_object():
    logits, target = _giou_data()
    full, left, right = GIoUCIoU(), GIoUCIoU(), GIoUCIoU()
    full.update(logits, target)
    left.update(logits[:5], target[:5])
    right.update(logits[5:], target[5:])
    left.merge_state(right)
    for key in ("gIoU", "cIoU"):
        assert left.compute()[key].item() == pytest.approx(full.compute()[key].item(), rel=0, abs=1e-15)
    assert int(left.samples) == 8 and int(left.union) == int(full.union)

    preds, labels = random_label_maps(2)
    whole, a, b = (PooledClassIoU(num_classes=6, ignore_index=255) for _ in range(3))
    whole.update(torch.from_numpy(preds), torch.from_numpy(labels))
    a.update(torch.from_numpy(preds[:1]), torch.from_numpy(labels[:1]))
    b.update(torch.from_numpy(preds[1:]), torch.from_numpy(labels[1:]))
    # summing the states by hand is what dist_reduce_fx="sum" does across ranks
    summed = PooledClassIoU(num_classes=6, ignore_index=255)
    summed.merge_state({"confmat": a.confmat + b.confmat})
    a.merge_state(b)
    assert torch.equal(a.confmat, whole.confmat) and torch.equal(summed.confmat, whole.confmat)
    for key, value in whole.compute().items():
        torch.testing.assert_close(a.compute()[key], value, equal_nan=True)


def test_forward_gives_batch_value_and_accumulates():
    logits, target = _giou_data()
    metric = GIoUCIoU()
    batch_value = metric(logits[:4], target[:4])
    alone = GIoUCIoU()
    alone.update(logits[:4], target[:4])
    assert batch_value["gIoU"].item() == pytest.approx(alone.compute()["gIoU"].item(), abs=1e-15)
    metric(logits[4:], target[4:])
    full = GIoUCIoU()
    full.update(logits, target)
    assert metric.compute()["cIoU"].item() == full.compute()["cIoU"].item()


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_gloo(rank, world, port)
    try:
        torch.set_num_threads(1)
        logits, target = _giou_data()
        preds, labels = random_label_maps(2)
        giou = GIoUCIoU()
        pooled = PooledClassIoU(num_classes=6, ignore_index=255)
        idle = GIoUCIoU()  # rank 1 never updates it
        for i in range(rank, 8, world):
            giou.update(logits[i:i + 1], target[i:i + 1])
        for i in range(rank, 4, world):
            pooled.update(torch.from_numpy(preds[i:i + 1]), torch.from_numpy(labels[i:i + 1]))
        if rank == 0:
            idle.update(logits, target)
        result = {"giou": {k: v.item() for k, v in giou.compute().items()},
                  "pooled": pooled.compute()["mIoU"].item(),
                  "idle": {k: v.item() for k, v in idle.compute().items()}}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    logits, target = _giou_data()
    preds, labels = random_label_maps(2)
    giou = GIoUCIoU()
    giou.update(logits, target)
    pooled = PooledClassIoU(num_classes=6, ignore_index=255)
    pooled.update(torch.from_numpy(preds), torch.from_numpy(labels))
    want = {k: v.item() for k, v in giou.compute().items()}
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["giou"]["cIoU"] == want["cIoU"]
        assert got["giou"]["gIoU"] == pytest.approx(want["gIoU"], rel=0, abs=1e-15)
        assert got["pooled"] == pooled.compute()["mIoU"].item()
        assert got["idle"]["cIoU"] == want["cIoU"]
