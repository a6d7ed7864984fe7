"""SAOM data layer: metadata reader, DataModule on SAOM fakes, COCO fakes and the bundled COCO128 sample."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.saom import SAOMDataModule, SaomImages, collate_items
from litseg.io import ConfigError, DataError, read_image
from litseg.readers.coco import CocoInstances
from litseg.readers.saom import SaomMetadata, read_instance_mask
from tests.fakes import SAOM_CLASSES, noise_image, save_image, tiny_coco, write_coco, write_saom

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "coco128_sample"
SHARED_COCO = REPO.parent / "shared" / "data" / "coco_subset"


def _edit(json_path: Path, change) -> dict:
    doc = json.loads(json_path.read_text())
    change(doc)
    json_path.write_text(json.dumps(doc))
    return doc


def _saom(tmp_path: Path, **kwargs) -> tuple[Path, SAOMDataModule]:
    json_path = write_saom(tmp_path)
    return json_path, SAOMDataModule(str(tmp_path), metadata=str(json_path), **kwargs)


def _setup_error(dm: SAOMDataModule, stage: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        dm.setup(stage)
    return str(info.value)


# ----------------------------------------------------------------------------- SAOM metadata source


def test_saom_items_align_masks_labels_names(tmp_path):
    json_path, dm = _saom(tmp_path)
    doc = json.loads(json_path.read_text())
    # Red-only foreground: a mask with R = 7 in one block and G = 255 (R = 0) in another.
    rec = doc["train_data"][1]
    mask_path = tmp_path / rec["entity_masks"][0].lstrip("/")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[2:10, 2:10, 0] = 7
    rgb[20:30, 20:30, 1] = 255
    save_image(mask_path, rgb)
    dm.setup(None)
    assert dm.classes == list(SAOM_CLASSES)
    assert dm.eval_class_indices == list(range(len(SAOM_CLASSES)))
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 2, "val": 1, "test": 1}
    assert dm.dropped_empty == {"train": 0, "val": 0, "test": 0}
    for split in ("train", "val", "test"):
        for k, raw in enumerate(doc[f"{split}_data"]):
            item = dm.datasets[split][k]
            assert item["key"] == raw["image_name"]
            image = read_image(tmp_path / raw["image_name"])
            assert item["image"].dtype == torch.uint8 and np.array_equal(item["image"].numpy(), image)
            assert item["masks"].dtype == torch.bool and item["masks"].shape == (2, 32, 32)
            assert item["labels"].dtype == torch.int64 and item["labels"].tolist() == raw["entity_indices"]
            assert item["mask_names"] == [Path(m).stem for m in raw["entity_masks"]]
            for m, entry in zip(item["masks"], raw["entity_masks"], strict=True):
                expected = read_image(tmp_path / entry.lstrip("/"))[..., 0] > 0
                assert np.array_equal(m.numpy(), expected)
            assert item["dropped_empty"] == 0
    red_only = dm.datasets["train"][1]["masks"][0].numpy()
    assert red_only.sum() == 64 and red_only[2:10, 2:10].all() and not red_only[20:30, 20:30].any()


def test_read_instance_mask_accepts_single_channel(tmp_path):
    grey = np.zeros((6, 8), np.uint8)
    grey[1:3, 2:5] = 255
    save_image(tmp_path / "m.png", grey)
    assert np.array_equal(read_instance_mask(tmp_path / "m.png"), grey > 0)


def test_loader_batches_are_lists_of_items(tmp_path):
    _, dm = _saom(tmp_path, batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and isinstance(batches[0], list) and len(batches[0]) == 2
    assert {b["key"] for b in batches[0]} == {r.image_name for r in dm.datasets["train"].records}
    assert collate_items([{"a": 1}]) == [{"a": 1}]
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val, list) and val[0]["masks"].shape[0] == 2


def test_metadata_found_in_root_and_max_images(tmp_path):
    write_saom(tmp_path, splits={"train": 3, "val": 2, "test": 1})
    dm = SAOMDataModule(str(tmp_path), max_images=1)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 1 and len(dm.datasets["val"]) == 1
    assert dm.datasets["train"][0]["key"] == "images/FloorPlan1-0-rgb-view0.png"  # first in file order


def test_eval_classes_subset_and_unknown(tmp_path):
    _, dm = _saom(tmp_path, eval_classes=["Sofa", "AlarmClock", "Mug"])
    assert dm.eval_class_indices == [0, 3, 4]
    _, bad = _saom(tmp_path / "b", eval_classes=["Sofa", "Toaster"])
    with pytest.raises(ConfigError) as info:
        bad.setup("fit")
    assert info.value.key == "data.init_args.eval_classes" and "Toaster" in str(info.value)


def test_given_classes_must_match_the_data(tmp_path):
    _, ok = _saom(tmp_path, classes=list(SAOM_CLASSES))
    ok.setup("validate")
    assert ok.classes == list(SAOM_CLASSES)
    _, bad = _saom(tmp_path / "b", classes=["AlarmClock", "ArmChair", "Bowl", "Mug", "Toaster"])
    with pytest.raises(ConfigError) as info:
        bad.setup("validate")
    message = str(info.value)
    assert message.startswith("data.init_args.classes:") and "Toaster" in message and "Sofa" in message
    _, reordered = _saom(tmp_path / "c", classes=list(reversed(SAOM_CLASSES)))
    with pytest.raises(ConfigError, match="other order"):
        _ = reordered.classes


def test_missing_mask_file_names_the_file(tmp_path):
    json_path, dm = _saom(tmp_path)
    rec = json.loads(json_path.read_text())["val_data"][0]
    mask = tmp_path / rec["entity_masks"][1].lstrip("/")
    mask.unlink()
    message = _setup_error(dm, "validate")
    assert message.startswith(f"{mask}: file not found")
    assert "val_data[0] entity_masks[1]" in message


def test_mask_of_another_size_names_the_mask(tmp_path):
    json_path, dm = _saom(tmp_path)
    rec = json.loads(json_path.read_text())["train_data"][0]
    mask = tmp_path / rec["entity_masks"][0].lstrip("/")
    save_image(mask, np.full((16, 32, 3), 255, np.uint8))
    message = _setup_error(dm, "fit")
    assert message.startswith(f"{mask}: size 32x16 does not match its image")
    items = SaomImages(SaomMetadata.load(json_path, tmp_path, ["train"]).records("train"))
    with pytest.raises(DataError, match="does not match"):  # the item reader checks it too
        items[0]


def test_all_file_problems_reported_at_once(tmp_path):
    json_path, dm = _saom(tmp_path)
    doc = json.loads(json_path.read_text())
    masks = [tmp_path / doc[s][0]["entity_masks"][0].lstrip("/") for s in ("train_data", "val_data")]
    for m in masks:
        m.unlink()
    message = _setup_error(dm, "fit")
    assert message.startswith(f"{tmp_path / 'DSmetadataSAOMv1.json'}: 2 data problems")
    assert all(str(m) in message for m in masks)


def test_class_index_out_of_range_names_json_and_record(tmp_path):
    json_path, dm = _saom(tmp_path)
    _edit(json_path, lambda d: d["train_data"][1]["entity_indices"].__setitem__(0, 9))
    message = _setup_error(dm, "fit")
    assert message.startswith(f"{json_path}: train_data[1]: entity_indices[0] = 9 is out of range")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.pop("val_data"), "missing key 'val_data'"),
    (lambda d: d.pop("entity classes"), "missing key 'entity classes'"),
    (lambda d: d["train_data"][0].pop("entity_indices"), "train_data[0]: missing key 'entity_indices'"),
])
def test_metadata_missing_key_names_json(tmp_path, change, expected):
    json_path, dm = _saom(tmp_path)
    _edit(json_path, change)
    message = _setup_error(dm, "fit")
    assert message.startswith(f"{json_path}: ") and expected in message


def test_metadata_problems_listed_together(tmp_path):
    json_path = write_saom(tmp_path)

    def break_it(doc):
        doc["train_data"][0]["entity_indices"] = [1]  # 2 masks, 1 index
        doc["train_data"][1]["entity_indices"][1] = 1.0
        doc["val_data"][0]["entity_masks"][1] = doc["train_data"][1]["entity_masks"][0]
    _edit(json_path, break_it)
    with pytest.raises(DataError) as info:
        SaomMetadata.load(json_path, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{json_path}: 3 problems in this SAOM metadata file")
    assert "2 entity_masks but 1 entity_indices" in message
    assert "entity_indices[1] = 1.0 is not an integer" in message
    assert "is also the mask of train_data[1] entity_masks[0]" in message
    # Only the requested splits are validated.
    assert len(SaomMetadata.load(json_path, tmp_path, splits=["test"]).records("test")) == 1


def test_metadata_paths_resolve_like_upstream(tmp_path):
    json_path = write_saom(tmp_path)
    meta = SaomMetadata.load(json_path, tmp_path)
    rec = meta.records("train")[0]
    assert rec.image == tmp_path / rec.image_name and rec.image.is_file()
    assert all(m.is_file() and str(m).startswith(str(tmp_path) + "/masks/") for m in rec.masks)
    assert meta.classes == list(SAOM_CLASSES) and meta.splits == ("train", "val", "test")


def test_empty_mask_dropped_and_counted_order_kept(tmp_path):
    json_path, dm = _saom(tmp_path)
    doc = json.loads(json_path.read_text())
    rec = doc["train_data"][0]
    third = np.zeros((32, 32, 3), np.uint8)
    third[0:4, 0:4] = 255
    save_image(tmp_path / "masks" / "extra-mask-Bowl2.png", third)

    def add(d):
        d["train_data"][0]["entity_masks"].append("/masks/extra-mask-Bowl2.png")
        d["train_data"][0]["entity_indices"].append(2)
    _edit(json_path, add)
    save_image(tmp_path / rec["entity_masks"][1].lstrip("/"), np.zeros((32, 32, 3), np.uint8))  # middle empty
    dm.setup("fit")
    assert dm.dropped_empty == {"train": 1, "val": 0}
    item = dm.datasets["train"][0]
    assert item["dropped_empty"] == 1 and item["masks"].shape[0] == 2
    assert item["labels"].tolist() == [rec["entity_indices"][0], 2]
    assert item["mask_names"] == [Path(rec["entity_masks"][0]).stem, "extra-mask-Bowl2"]
    assert np.array_equal(item["masks"][1].numpy(), third[..., 0] > 0)


def test_image_with_no_kept_instance_is_returned(tmp_path):
    json_path, dm = _saom(tmp_path)
    for entry in json.loads(json_path.read_text())["val_data"][0]["entity_masks"]:
        save_image(tmp_path / entry.lstrip("/"), np.zeros((32, 32, 3), np.uint8))
    dm.setup("validate")
    item = dm.datasets["val"][0]
    assert item["masks"].shape == (0, 32, 32) and item["labels"].shape == (0,) and item["mask_names"] == []
    assert item["dropped_empty"] == 2 and dm.dropped_empty["val"] == 2


def test_panorama_sized_images(tmp_path):
    h, w = 20, 1100  # wider than SAM's 1024 input: passed through at original size
    doc: dict = {"entity classes": ["Sofa", "Vase"]}
    for split in ("train", "val"):
        name = f"pano/{split}-scene-rgb-0.png"
        save_image(tmp_path / name, noise_image(h, w, seed=3))
        masks = []
        for j, (x0, x1) in enumerate([(10, 300), (900, 1090)]):
            m = np.zeros((h, w, 3), np.uint8)
            m[5:15, x0:x1] = 255
            save_image(tmp_path / "pano" / f"{split}-scene-mask-obj{j}.png", m)
            masks.append(f"/pano/{split}-scene-mask-obj{j}.png")
        doc[f"{split}_data"] = [{"image_name": name, "entity_masks": masks, "entity_indices": [1, 0]}]
    (tmp_path / "DSmetadataPanoSAM.json").write_text(json.dumps(doc))
    dm = SAOMDataModule(str(tmp_path))
    dm.setup("fit")
    item = dm.datasets["train"][0]
    assert item["image"].shape == (h, w, 3) and item["masks"].shape == (2, h, w)
    assert item["labels"].tolist() == [1, 0] and item["masks"][1, 5:15, 900:1090].all()
    assert item["masks"][1].sum() == 10 * 190 and not item["masks"][1, :, :900].any()


# ----------------------------------------------------------------------------- COCO source


def test_coco_source_on_tiny_fake(tmp_path):
    fake = tiny_coco(tmp_path)
    data = json.loads(fake["json"].read_text())
    # An annotation that decodes to an empty mask (all-background RLE): dropped and counted.
    data["annotations"].append({"id": 5, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 0.0,
                                "bbox": [0, 0, 0, 0], "segmentation": {"size": [20, 24], "counts": [480]}})
    json_path = write_coco(tmp_path, data)
    # hash split (salt ""): image 1 < 0.25 -> val (= test), image 2 -> train
    dm = SAOMDataModule(str(tmp_path), source="coco", coco_json=str(json_path), coco_images=str(fake["images"]))
    assert dm.classes == ["cat", "cup"]
    dm.setup(None)
    assert dm.dropped_empty == {"train": 1, "val": 0, "test": 0}
    train, val = dm.datasets["train"][0], dm.datasets["val"][0]
    assert train["key"] == "b.png" and val["key"] == "a.png" and dm.datasets["test"][0]["key"] == "a.png"
    # crowd annotations (2 and 4) are excluded; category 3 -> label 1 (contiguous)
    assert val["mask_names"] == ["a-ann1"] and val["labels"].tolist() == [0]
    assert np.array_equal(val["masks"][0].numpy(), fake["masks"][1])
    assert train["mask_names"] == ["b-ann3"] and train["labels"].tolist() == [1] and train["dropped_empty"] == 1
    assert np.array_equal(train["masks"][0].numpy(), fake["masks"][3])
    assert train["image"].shape == (20, 24, 3) and train["image"].dtype == torch.uint8


def test_coco_defaults_and_errors(tmp_path):
    fake = tiny_coco(tmp_path)
    (tmp_path / "annotations").mkdir()
    fake["json"].rename(tmp_path / "annotations" / "instances.json")
    dm = SAOMDataModule(str(tmp_path), source="coco", eval_classes=["cup"])
    assert dm.eval_class_indices == [1]
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 1
    with pytest.raises(ConfigError, match="data.init_args.classes"):
        SAOMDataModule(str(tmp_path), source="coco", classes=["cat"]).setup("validate")
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(DataError, match="a.png"):
        SAOMDataModule(str(tmp_path), source="coco").setup("validate")


# ----------------------------------------------------------------------------- bundled COCO128 sample


def test_bundled_coco128_sample_loads():
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_500_000
    assert (SAMPLE / "README.md").is_file() and (SAMPLE / "make_sample.py").is_file()
    dm = SAOMDataModule(str(SAMPLE), source="coco")
    dm.setup(None)
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == 8 and sizes["val"] == sizes["test"] >= 1 and sizes["train"] >= 1
    assert dm.classes[0] == "person" and len(dm.classes) == len(set(dm.classes))
    coco = CocoInstances.load(SAMPLE / "annotations" / "instances.json", SAMPLE / "train2017")
    assert sum(a.iscrowd for a in coco.annotations.values()) >= 1  # the crowd RLE path is exercised
    crowd_image = next(a.image_id for a in coco.annotations.values() if a.iscrowd)
    split = next(s for s, d in dm.datasets.items() if crowd_image in d.image_ids)
    item = dm.datasets[split][dm.datasets[split].image_ids.index(crowd_image)]
    plain = coco.annotations_of(crowd_image, crowd=False)
    assert item["masks"].shape[0] == len(plain) and item["masks"].flatten(1).any(1).all()
    assert item["mask_names"] == [f"{Path(item['key']).stem}-ann{a.id}" for a in plain]
    assert item["labels"].tolist() == [dm.classes.index(coco.category_name(a.category_id)) for a in plain]


def test_bundled_sample_matches_the_shared_original():
    source_json = SHARED_COCO / "annotations" / "instances_train2017.json"
    if not source_json.is_file():
        pytest.skip("shared COCO128 data (../shared/data/coco_subset) absent")
    sample = CocoInstances.load(SAMPLE / "annotations" / "instances.json", SAMPLE / "train2017")
    for image in sample.images.values():  # images are byte-identical copies
        ours = hashlib.sha256((SAMPLE / "train2017" / image.file_name).read_bytes()).digest()
        theirs = hashlib.sha256((SHARED_COCO / "train2017" / image.file_name).read_bytes()).digest()
        assert ours == theirs, image.file_name
    original = CocoInstances.load(source_json, SHARED_COCO / "train2017")
    dm = SAOMDataModule(str(SAMPLE), source="coco")
    dm.setup("validate")
    item = dm.datasets["val"][0]
    image_id = dm.datasets["val"].image_ids[0]
    ref = original.image_instances(image_id)
    assert np.array_equal(item["image"].numpy(), original.read_image(image_id))
    assert np.array_equal(item["masks"].numpy(), ref.masks)
    names = [dm.classes[i] for i in item["labels"].tolist()]
    assert names == [original.category_name(int(c)) for c in ref.category_ids]
    assert len(original.annotations_of(image_id)) == len(sample.annotations_of(image_id))
