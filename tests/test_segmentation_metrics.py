"""mIoU / per-class IoU / pixel accuracy against a hand-computed confusion matrix."""

import numpy as np
import pytest
import torch

from litseg.metrics.masks import IOU_EPS, mask_iou, np_mask_iou
from litseg.metrics.segmentation import flatten_results, segmentation_metrics

# 3 classes, one 3x4 image; 255 pixels are ignored.
TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 255, 1]]])
PREDS = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 2], [2, 0, 1, 1]]])


def hand_confusion() -> np.ndarray:
    # Counted by hand over the 10 non-ignored pixels (rows = target, cols = prediction):
    # target 0 at (0,0)(0,1)(1,0): preds 0,1,0       -> [2, 1, 0]
    # target 1 at (0,2)(0,3)(1,2)(2,3): preds 1,1,0,1 -> [1, 3, 0]
    # target 2 at (1,1)(2,0)(2,1): preds 2,2,0       -> [1, 0, 2]
    return np.array([[2, 1, 0], [1, 3, 0], [1, 0, 2]])


def test_miou_and_per_class_iou_match_hand_computed_confusion_matrix():
    cm = hand_confusion()
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)  # unions 5, 5, 3 -> [2/5, 3/5, 2/3]
    np.testing.assert_allclose(iou, [0.4, 0.6, 2 / 3])
    m = segmentation_metrics(3, prefix="val/")
    m.update(PREDS, TARGET)
    out = m.compute()
    assert out["val/mIoU"].item() == pytest.approx(iou.mean())
    np.testing.assert_allclose(out["val/IoU"].numpy(), iou, rtol=1e-6)
    assert out["val/pixel_acc"].item() == pytest.approx(tp.sum() / cm.sum())  # 7/10
    assert out["val/mAcc"].item() == pytest.approx(np.mean(tp / cm.sum(1)))


def test_accumulates_over_the_split_not_per_image_mean():
    # Split into two "images": dataset-level accumulation must equal the one-shot result,
    # which differs from averaging per-image mIoU.
    m = segmentation_metrics(3, prefix="t/")
    m.update(PREDS[:, :2], TARGET[:, :2])
    m.update(PREDS[:, 2:], TARGET[:, 2:])
    assert m.compute()["t/mIoU"].item() == pytest.approx((0.4 + 0.6 + 2 / 3) / 3)


def test_ignore_index_pixels_do_not_count_whatever_is_predicted():
    m1, m2 = segmentation_metrics(3, prefix="a/"), segmentation_metrics(3, prefix="a/")
    other = PREDS.clone()
    other[TARGET == 255] = 2  # change predictions only on ignored pixels
    m1.update(PREDS, TARGET)
    m2.update(other, TARGET)
    assert m1.compute()["a/mIoU"].item() == m2.compute()["a/mIoU"].item()


def test_flatten_names_per_class_values():
    m = segmentation_metrics(3, prefix="val/")
    m.update(PREDS, TARGET)
    flat = flatten_results(m.compute(), ["bg", "cat", "dog"])
    assert flat["val/IoU/cat"] == pytest.approx(0.6)
    assert set(flat) >= {"val/mIoU", "val/IoU/bg", "val/IoU/dog", "val/pixel_acc", "val/mAcc"}


def test_numpy_mask_iou_is_the_torch_one_with_ignore_pixels_left_out():
    rng = np.random.default_rng(4)
    gt, pred, ignore = (rng.random((3, 9, 7)) > 0.5 for _ in range(3))
    for g, p, ig in zip(gt, pred, ignore, strict=True):
        want = np.count_nonzero(g & p & ~ig) / np.count_nonzero((g | p) & ~ig)  # exact, no eps
        assert np_mask_iou(g, p, ig) == want
        assert np_mask_iou(g, p) == float(mask_iou(torch.from_numpy(g), torch.from_numpy(p), eps=0.0))
        assert np_mask_iou(g, p, eps=IOU_EPS) == float(mask_iou(torch.from_numpy(g), torch.from_numpy(p)))
    empty = np.zeros((4, 4), bool)
    assert np_mask_iou(empty, empty) == 1.0
    only_ignored = empty.copy()
    only_ignored[0, 0] = True
    assert np_mask_iou(only_ignored, empty, only_ignored) == 1.0  # nothing left outside the ignore region
    assert np_mask_iou(only_ignored.astype(np.uint8) * 255, empty) == 0.0
