"""SemSeg data layer: open-set protocol, DataModule on COCO fakes and the bundled COCO128 sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.semseg import SemSegDataModule, collate_detection, flip_boxes
from litseg.io import ConfigError, DataError
from litseg.semseg.open_set import (
    GRASPNET_KNOWN_IDS,
    UNKNOWN_ID,
    VOC_KNOWN_COCO_IDS,
    check_known_ids,
    known_index_map,
    open_set_gt,
)
from tests.fakes import noise_image, save_image, tiny_coco

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "coco128_sample"
SAMPLE_JSON = SAMPLE / "annotations" / "instances.json"
SAMPLE_KNOWN = [72, 1, 3, 5, 7, 44, 64]  # the VOC classes the sample has, unsorted on purpose
KEY = "data.init_args.known_ids"


def _edit(json_path: Path, change) -> None:
    doc = json.loads(json_path.read_text())
    change(doc)
    json_path.write_text(json.dumps(doc))


def _tiny_dm(tmp_path: Path, **kwargs) -> tuple[dict, SemSegDataModule]:
    fake = tiny_coco(tmp_path)
    args = {"known_ids": [1], "val_json": "instances.json", "val_images": "images", "flip_prob": 0.0} | kwargs
    return fake, SemSegDataModule(str(tmp_path), "instances.json", "images", **args)


def _sample_dm(**kwargs) -> SemSegDataModule:
    args = {"known_ids": SAMPLE_KNOWN} | kwargs
    return SemSegDataModule(str(SAMPLE), "annotations/instances.json", "train2017", **args)


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _setup_error(dm: SemSegDataModule, stage: str = "fit") -> str:
    with pytest.raises(DataError) as info:
        dm.setup(stage)
    return str(info.value)


# ----------------------------------------------------------------------------- protocol


def test_known_id_constants():
    assert VOC_KNOWN_COCO_IDS == (1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72)
    assert len(GRASPNET_KNOWN_IDS) == 28 and list(GRASPNET_KNOWN_IDS) == sorted(set(GRASPNET_KNOWN_IDS))
    assert UNKNOWN_ID == 1000
    assert known_index_map([72, 1, 44]) == {1: 0, 44: 1, 72: 2}


def test_check_known_ids_names_key_and_file():
    assert check_known_ids([5, 1], [1, 2, 5], KEY, "a.json") == (1, 5)
    with pytest.raises(ConfigError) as info:
        check_known_ids([1, 9, 7], [1, 2, 5], KEY, "a.json")
    msg = str(info.value)
    assert msg.startswith(KEY + ":") and "[7, 9]" in msg and "a.json" in msg
    for bad, words in (([1, 1], "more than once"), ([1, UNKNOWN_ID], "reserved"), ([1.0], "integer"),
                       ([], "empty")):
        with pytest.raises(ConfigError, match=words):
            check_known_ids(bad, [1, 2, 5, UNKNOWN_ID], KEY)


def test_open_set_gt_relabels_unknown_and_keeps_crowd():
    doc = {"info": {"v": 1}, "images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 4}],
           "categories": [{"id": 3, "name": "cup"}, {"id": 1, "name": "cat"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 1},
                           {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 0}]}
    gt = open_set_gt(doc, [1])
    assert [(a["id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 1, 0), (2, UNKNOWN_ID, 1), (3, UNKNOWN_ID, 0)]
    assert [c["id"] for c in gt["categories"]] == [1, UNKNOWN_ID] and gt["categories"][-1]["name"] == "unknown"
    assert gt["info"] == {"v": 1} and gt["images"] == doc["images"]
    assert doc["annotations"][1]["category_id"] == 3  # input untouched
    with pytest.raises(ConfigError, match="known_ids"):
        open_set_gt(doc, [1, 2])


# ----------------------------------------------------------------------------- fakes


def test_tiny_train_targets_known_only_crowd_excluded_empty_dropped(tmp_path):
    fake, dm = _tiny_dm(tmp_path, known_ids=[1])
    dm.setup("fit")
    train = dm.datasets["train"]
    # image 2 has only an unknown (cup) instance and a *crowd* cat: no known target -> dropped
    assert train.image_ids == [1] and dm.dropped_images["train"] == 1
    image, target = train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 20, 24)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.allclose(image, torch.full_like(image, 90 / 255))
    assert target["labels"].tolist() == [0]  # the square cat; the crowd cup is not a target
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[3.0, 2.0, 11.0, 10.0]]
    assert target["masks"].dtype == torch.uint8
    assert np.array_equal(target["masks"][0].numpy().astype(bool), fake["masks"][1])
    assert target["image_id"] == 1 and target["orig_size"] == (20, 24)
    assert dm.known_ids == [1] and dm.num_known == 1 and dm.known_names == ["cat"]


def test_tiny_two_known_classes_contiguous_labels(tmp_path):
    fake, dm = _tiny_dm(tmp_path, known_ids=[3, 1])
    dm.setup("fit")
    train = dm.datasets["train"]
    assert train.image_ids == [1, 2] and dm.dropped_images["train"] == 0
    assert dm.known_ids == [1, 3] and dm.known_names == ["cat", "cup"]
    (_, t1), (_, t2) = train[0], train[1]
    assert t1["labels"].tolist() == [0] and t2["labels"].tolist() == [1]  # cup (id 3) -> index 1
    assert np.array_equal(t2["masks"][0].numpy().astype(bool), fake["masks"][3])
    assert t2["boxes"][0].tolist() == _mask_box(fake["masks"][3])


def test_tiny_val_keeps_all_images_and_eval_gt(tmp_path):
    _, dm = _tiny_dm(tmp_path, known_ids=[1])
    dm.setup("fit")
    val = dm.datasets["val"]
    assert val.image_ids == [1, 2]
    image, target = val[1]
    assert image.shape == (3, 20, 24) and target == {"image_id": 2, "orig_size": (20, 24)}
    gt = dm.eval_gt("val")
    assert [i["id"] for i in gt["images"]] == [1, 2]
    assert [(a["id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"]] == [
        (1, 1, 0), (2, UNKNOWN_ID, 1), (3, UNKNOWN_ID, 0), (4, 1, 1)]
    assert [c["id"] for c in gt["categories"]] == [1, UNKNOWN_ID]
    dm.setup("test")  # test = val
    assert dm.datasets["test"].image_ids == [1, 2] and dm.eval_gt("test")["annotations"] == gt["annotations"]


def test_collate_and_loaders(tmp_path):
    _, dm = _tiny_dm(tmp_path, known_ids=[1, 3], batch_size=2, flip_prob=0.5, seed=3)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert sorted(t["image_id"] for t in targets) == [1, 2]
    again = next(iter(dm.train_dataloader()))
    assert [t["image_id"] for t in again[1]] == [t["image_id"] for t in targets]
    for a, b in zip(images, again[0], strict=True):
        assert torch.equal(a, b)
    images, targets = next(iter(dm.val_dataloader()))
    assert [t["image_id"] for t in targets] == [1, 2]
    batch = collate_detection([(torch.zeros(3, 2, 2), {"image_id": 5})])
    assert isinstance(batch, tuple) and batch[1] == [{"image_id": 5}]


def test_flip_consistent_and_reproducible(tmp_path):
    fake, dm = _tiny_dm(tmp_path, known_ids=[1, 3], flip_prob=1.0)
    dm.setup("fit")
    _, plain = _tiny_dm(tmp_path / "plain", known_ids=[1, 3], flip_prob=0.0)
    plain.setup("fit")
    save_image(tmp_path / "images" / "b.png", noise_image(20, 24, seed=4))  # a non-uniform image to see the flip
    save_image(tmp_path / "plain" / "images" / "b.png", noise_image(20, 24, seed=4))
    w = 24
    for index in (0, 1):
        image, target = dm.datasets["train"][(index, 2)]
        image0, target0 = plain.datasets["train"][(index, 2)]
        assert torch.equal(image, image0.flip(-1))
        assert torch.equal(target["masks"], target0["masks"].flip(-1))
        boxes0 = target0["boxes"].numpy()
        assert np.array_equal(target["boxes"].numpy(), flip_boxes(boxes0, w))
        assert target["boxes"][:, 0].tolist() == (w - boxes0[:, 2]).tolist()
        for mask, box in zip(target["masks"].numpy(), target["boxes"].tolist(), strict=True):
            assert _mask_box(mask) == box  # box recomputed from the flipped mask = flipped box
        assert torch.equal(target["labels"], target0["labels"])
    # flip_prob 0.5: a function of (seed, epoch, index) only
    _, half = _tiny_dm(tmp_path / "half", known_ids=[1, 3], flip_prob=0.5, seed=7)
    half.setup("fit")
    _, half2 = _tiny_dm(tmp_path / "half2", known_ids=[1, 3], flip_prob=0.5, seed=7)
    half2.setup("fit")
    ds, ds2 = half.datasets["train"], half2.datasets["train"]
    decisions = [ds.flipped(i, e) for e in range(20) for i in (0, 1)]
    assert decisions == [ds2.flipped(i, e) for e in range(20) for i in (0, 1)]
    assert 0 < sum(decisions) < len(decisions)
    for e in range(4):
        a, b = ds[(1, e)], ds2[(1, e)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    # an epoch where index 1 flips and one where it does not: boxes differ accordingly
    flip_e = next(e for e in range(20) if ds.flipped(1, e))
    keep_e = next(e for e in range(20) if not ds.flipped(1, e))
    assert np.array_equal(ds[(1, flip_e)][1]["boxes"].numpy(), flip_boxes(ds[(1, keep_e)][1]["boxes"].numpy(), w))
    # never in val
    assert torch.equal(dm.datasets["val"][1][0], plain.datasets["val"][1][0])


# ----------------------------------------------------------------------------- bad inputs


def test_missing_image_named(tmp_path):
    fake, dm = _tiny_dm(tmp_path)
    (fake["images"] / "b.png").unlink()
    msg = _setup_error(dm)
    assert msg.startswith(str(fake["json"])) and "b.png" in msg and "not found" in msg


def test_malformed_polygon_named(tmp_path):
    fake, dm = _tiny_dm(tmp_path)
    _edit(fake["json"], lambda d: d["annotations"][0].update(segmentation=[[3, 2, 11, 2, 11]]))
    msg = _setup_error(dm)
    assert msg.startswith(str(fake["json"])) and "annotation 1" in msg and "polygon 0 has 5 coordinates" in msg


def test_unknown_category_named(tmp_path):
    fake, dm = _tiny_dm(tmp_path)
    _edit(fake["json"], lambda d: d["annotations"][2].update(category_id=99))
    msg = _setup_error(dm)
    assert msg.startswith(str(fake["json"])) and "annotation 3" in msg and "category_id 99" in msg


def test_all_json_problems_at_once(tmp_path):
    fake, dm = _tiny_dm(tmp_path)

    def change(d):
        d["annotations"][0]["segmentation"] = [[1, 1, 2]]
        d["annotations"][2]["category_id"] = 99

    _edit(fake["json"], change)
    msg = _setup_error(dm)
    assert msg.startswith(str(fake["json"])) and "2 problems" in msg
    assert "category_id 99" in msg and "polygon 0" in msg


def test_image_size_mismatch_named(tmp_path):
    fake, dm = _tiny_dm(tmp_path)
    save_image(fake["images"] / "b.png", np.zeros((21, 24, 3), np.uint8))
    msg = _setup_error(dm)
    assert msg.startswith(str(fake["images"] / "b.png")) and "24x21" in msg and "24x20" in msg
    assert str(fake["json"]) in msg
    save_image(fake["images"] / "a.png", np.zeros((20, 25, 3), np.uint8))
    msg = _setup_error(dm)  # both images, one message
    assert "2 data problems" in msg and "a.png" in msg and "b.png" in msg


def test_known_id_absent_from_json(tmp_path):
    fake, dm = _tiny_dm(tmp_path, known_ids=[1, 2])
    with pytest.raises(ConfigError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert msg.startswith(KEY + ":") and "[2]" in msg and str(fake["json"]) in msg
    with pytest.raises(ConfigError, match="more than once"):
        SemSegDataModule(str(tmp_path), "instances.json", "images", known_ids=[1, 1])
    (fake["images"] / "a.png").unlink()  # with a data problem too: both in one message
    msg = _setup_error(dm)
    assert "2 data problems" in msg and "a.png" in msg and KEY in msg


def test_check_cache_and_header_only(tmp_path, monkeypatch):
    from PIL import Image

    _, dm = _tiny_dm(tmp_path)
    dm.setup("fit")
    assert len(dm._checked) == 2  # one size check per image file, kept for this process
    _, dm2 = _tiny_dm(tmp_path / "again")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("setup must read image headers only"))
    dm2.setup("fit")
    assert len(dm2._checked) == 2
    monkeypatch.undo()
    save_image(tmp_path / "images" / "a.png", np.zeros((20, 25, 3), np.uint8))  # changed file: checked again
    assert "25x20" in _setup_error(dm)


# ----------------------------------------------------------------------------- bundled COCO128 sample


def test_sample_default_voc_ids_rejected_with_key():
    with pytest.raises(ConfigError) as info:
        SemSegDataModule(str(SAMPLE), "annotations/instances.json", "train2017").setup("fit")
    msg = str(info.value)
    assert msg.startswith(KEY + ":") and str(SAMPLE_JSON) in msg and "13 id(s)" in msg


def test_sample_open_set_splits():
    dm = _sample_dm(flip_prob=0.0)
    dm.setup("fit")
    assert dm.known_ids == [1, 3, 5, 7, 44, 64, 72]
    assert dm.known_names == ["person", "car", "airplane", "train", "bottle", "potted plant", "tv"]
    train, val = dm.datasets["train"], dm.datasets["val"]
    # hash split: train 349, 359, 562, 590, 643; 562 (toothbrush, cup) and 590 (sink, bowl) have no known class
    assert train.image_ids == [349, 359, 643] and dm.dropped_images["train"] == 2
    assert val.image_ids == [30, 326, 472]  # all val images kept, with or without known instances
    index = known_index_map(dm.known_ids)
    doc = json.loads(SAMPLE_JSON.read_text())
    for i, image_id in enumerate(train.image_ids):
        image, target = train[i]
        expected = [a for a in doc["annotations"] if a["image_id"] == image_id and a["category_id"] in index
                    and not a["iscrowd"]]
        expected.sort(key=lambda a: a["id"])
        assert target["labels"].tolist() == [index[a["category_id"]] for a in expected]
        assert set(target["labels"].tolist()) <= set(range(dm.num_known))
        assert np.allclose(target["boxes"].numpy(), [[x, y, x + w, y + h] for x, y, w, h in
                                                     (a["bbox"] for a in expected)])
        h, w = target["orig_size"]
        assert image.shape == (3, h, w) and target["masks"].shape == (len(expected), h, w)
        assert target["image_id"] == image_id
    # 643: tv + 2 bottles known; 17 non-crowd unknowns and the crowd book are no targets
    _, t643 = train[2]
    assert t643["labels"].tolist() == [index[72], index[44], index[44]]
    gt = dm.eval_gt("val")
    assert [i["id"] for i in gt["images"]] == val.image_ids
    cats = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    assert cats == {(472, 5), (30, 64), (30, UNKNOWN_ID), (326, 1), (326, UNKNOWN_ID)}  # vase, wine glass -> 1000
    assert [c["id"] for c in gt["categories"]] == dm.known_ids + [UNKNOWN_ID]


def test_sample_eval_gt_keeps_crowd_and_flip():
    dm = _sample_dm(val_json="annotations/instances.json", val_images="train2017", flip_prob=1.0, max_images=1)
    dm.setup("fit")
    assert len(dm.datasets["val"]) == 1 and dm.datasets["val"].image_ids == [30]
    assert [i["id"] for i in dm.eval_gt("val")["images"]] == [30]  # exactly the images val iterates
    assert dm.datasets["train"].image_ids == [30]  # first image (by id) with a known instance
    dm_all = _sample_dm(val_json="annotations/instances.json", val_images="train2017")
    dm_all.setup("validate")
    gt = dm_all.eval_gt("val")
    assert len(gt["images"]) == 8 and len(gt["annotations"]) == 40
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert [(a["image_id"], a["category_id"]) for a in crowd] == [(643, UNKNOWN_ID)]  # the crowd book
    # flip on a real photo: image, masks and boxes together
    flipped, tf = dm.datasets["train"][(0, 0)]
    plain = _sample_dm(val_json="annotations/instances.json", val_images="train2017", flip_prob=0.0, max_images=1)
    plain.setup("fit")
    image, t = plain.datasets["train"][(0, 0)]
    w = image.shape[-1]
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(tf["masks"], t["masks"].flip(-1))
    assert np.allclose(tf["boxes"].numpy(), flip_boxes(t["boxes"].numpy(), w))
    for mask, box in zip(tf["masks"].numpy(), tf["boxes"].numpy(), strict=True):
        assert np.allclose(_mask_box(mask), box, atol=1.5)  # polygon rasterisation vs the COCO bbox
