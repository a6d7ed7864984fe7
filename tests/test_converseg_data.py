"""ConverSeg data layer: the three formats, the mask rule, the 1024 letterbox / 256 target geometry
and the DataModule, on ``tests.fakes.write_converseg`` fakes and the bundled COCO128 sample."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.converseg import ConverSegDataModule, collate, hash_split, make_item
from litseg.imaging import IMAGENET_MEAN, IMAGENET_STD, normalize
from litseg.io import DataError
from litseg.letterbox import Letterbox
from litseg.readers.converseg import (
    Sample,
    count_empty_prompts,
    erode,
    letterbox_1024,
    make_target,
    read_binary_mask,
    read_hf_dataset,
    read_items_json,
    read_samples,
    read_train_jsonl,
)
from tests.fakes import noise_image, save_image, write_converseg

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "converseg_coco128"


# ----------------------------------------------------------------------------- readers


def test_both_formats_of_the_fakes_agree(tmp_path):
    paths = write_converseg(tmp_path, n=3)
    train = read_train_jsonl(paths["jsonl"])
    items = read_items_json(paths["items"])
    assert len(train) == len(items) == 3
    for t, e in zip(train, items, strict=True):
        assert t.image == e.image and t.mask == e.mask and t.prompt == e.prompt
        assert t.image.is_file() and t.mask.is_file() and t.image.parent == tmp_path / "images"
        assert t.split == "train" and e.split == "fake_converseg" and t.concept == ""
        assert not t.prompt_was_empty
    assert [e.id for e in items] == ["00000", "00001", "00002"]
    assert [e.concept for e in items] == ["entities", "spatial", "relations"]
    assert "line 1 of" in train[0].where and train[0].id.endswith("@1")
    mask = read_binary_mask(train[0].mask)
    assert mask.dtype == bool and mask.shape == (24, 32) and 0 < mask.sum() < 24 * 32


def test_bundled_sample_in_both_formats():
    train = read_train_jsonl(SAMPLE / "train" / "dataset.jsonl")
    items = read_samples(SAMPLE / "eval" / "items.json")
    assert len(train) == len(items) == 10
    assert len({s.image.name for s in train}) == 8
    assert [s.prompt for s in train] == [s.prompt for s in items]
    assert "the left-most person" in [s.prompt for s in train]
    for s in items:
        image = np.asarray(Image.open(s.image))
        mask = read_binary_mask(s.mask)
        assert max(image.shape[:2]) == 320 and mask.shape == image.shape[:2]
        assert 0 < mask.sum() < mask.size and s.split == "converseg_coco128" and s.concept
    assert sum(Path(p).stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 1_500_000


def test_malformed_jsonl_lines_are_all_named_with_their_line_number(tmp_path):
    path = tmp_path / "dataset.jsonl"
    path.write_text('{"image": "a.png", "mask_merged": "m.png", "prompt": "x"}\n'
                    '{"image": "b.png", "mask_merged": \n'
                    "\n"
                    '{"image": "c.png", "prompt": "y"}\n'
                    '["not", "an", "object"]\n'
                    '{"image": "d.png", "mask_merged": "n.png", "prompt": 3}\n')
    with pytest.raises(DataError) as err:
        read_train_jsonl(path)
    message = str(err.value)
    assert str(path) in message and "4 data problems" in message
    assert "line 2: malformed JSON" in message
    assert "line 4: missing key 'mask_merged'" in message
    assert "line 5: expected a JSON object" in message
    assert "line 6: 'prompt' must be a string" in message
    assert "line 1" not in message and "line 3" not in message  # the good line and the blank one


def test_items_json_count_mismatch_names_the_file(tmp_path):
    paths = write_converseg(tmp_path, n=2)
    doc = json.loads(paths["items"].read_text())
    doc["count"] = 5
    paths["items"].write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"items\.json: 'count' is 5 but 'items' holds 2") as err:
        read_items_json(paths["items"])
    assert err.value.path == paths["items"]


def test_empty_prompts_become_segment_and_are_counted(tmp_path):
    paths = write_converseg(tmp_path, n=3)
    lines = paths["jsonl"].read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["prompt"] = ""
    del second["prompt"]
    paths["jsonl"].write_text("\n".join([json.dumps(first), json.dumps(second), lines[2]]) + "\n")
    samples = read_train_jsonl(paths["jsonl"])
    assert [s.prompt for s in samples[:2]] == ["segment", "segment"]
    assert [s.prompt_was_empty for s in samples] == [True, True, False]
    assert count_empty_prompts(samples) == 2
    dm = ConverSegDataModule(str(tmp_path), train_jsonl="dataset.jsonl", val=paths["items"].name, size=64,
                             target_size=16)
    dm.setup("fit")
    assert dm.empty_prompts == {"train": 2, "val": 0}
    assert dm.datasets["train"][0]["prompt"] == "segment"


def test_rgba_mask_reads_the_alpha_channel(tmp_path):
    alpha = np.zeros((20, 30), np.uint8)
    alpha[5:12, 8:20] = 200
    rgba = np.dstack([np.full((20, 30, 3), 255, np.uint8), alpha])  # colour is white everywhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    mask = read_binary_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(mask, alpha > 0)
    la = Image.fromarray(np.dstack([np.zeros_like(alpha), alpha]), "LA")
    np.testing.assert_array_equal(read_binary_mask(la), alpha > 0)
    grey = np.where(alpha > 0, 255, 0).astype(np.uint8)
    save_image(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "g.png"), alpha > 0)
    with pytest.raises(DataError, match="file not found"):
        read_binary_mask(tmp_path / "nothing.png")


def test_hf_snapshot_splits_rgba_masks_and_missing_arrow_support(tmp_path):
    save_image(tmp_path / "images" / "a.png", noise_image(12, 16, seed=1))
    alpha = np.zeros((12, 16), np.uint8)
    alpha[2:8, 3:9] = 255
    Image.fromarray(np.dstack([np.zeros((12, 16, 3), np.uint8), alpha]), "RGBA").save(tmp_path / "images" / "m.png")
    (tmp_path / "data").mkdir()
    row = {"id": "x1", "image": "images/a.png", "mask": {"path": "images/m.png", "bytes": None},
           "prompt": "the thing", "concept": "physics"}
    (tmp_path / "data" / "human_annotated.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "data" / "sam_seeded.jsonl").write_text(json.dumps(row | {"id": "y1", "prompt": ""}) + "\n")
    samples = read_hf_dataset(tmp_path)
    assert [(s.split, s.id, s.prompt) for s in samples] == [("sam_seeded", "y1", "segment"),
                                                            ("human_annotated", "x1", "the thing")]
    assert samples[1].concept == "physics" and samples[1].image == tmp_path / "images" / "a.png"
    np.testing.assert_array_equal(read_binary_mask(samples[1].mask), alpha > 0)
    assert [s.id for s in read_hf_dataset(tmp_path, "human_annotated")] == ["x1"]
    with pytest.raises(DataError, match="no split 'val'"):
        read_hf_dataset(tmp_path, "val")
    arrow = tmp_path / "saved"
    (arrow / "sam_seeded").mkdir(parents=True)
    (arrow / "dataset_dict.json").write_text('{"splits": ["sam_seeded"]}')
    try:
        import datasets  # noqa: F401
    except ImportError:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            with pytest.raises(DataError, match="'datasets' or the 'pyarrow' package") as err:
                read_hf_dataset(arrow)
            assert err.value.path == arrow


# ----------------------------------------------------------------------------- geometry


def _expected_square(image: np.ndarray, flag: int, inner_h: int, inner_w: int) -> np.ndarray:
    out = np.zeros((1024, 1024, 3), np.uint8)
    top, left = (1024 - inner_h) // 2, (1024 - inner_w) // 2
    out[top:top + inner_h, left:left + inner_w] = cv2.resize(image, (inner_w, inner_h), interpolation=flag)
    return out


@pytest.mark.parametrize(("height", "width", "flag", "inner"), [
    (1000, 2000, cv2.INTER_AREA, (512, 1024)),  # shrinks: INTER_AREA
    (200, 300, cv2.INTER_LINEAR, (682, 1024)),  # grows: INTER_LINEAR (upstream rounds: 683)
])
def test_letterbox_1024_interpolation_and_centred_zero_padding(height, width, flag, inner):
    image = noise_image(height, width, seed=3)
    tensor, box = letterbox_1024(image)
    assert (box.inner_height, box.inner_width) == inner and box.left == 0
    assert box.top == (1024 - inner[0]) // 2
    expected = _expected_square(image, flag, *inner)
    other = cv2.INTER_LINEAR if flag == cv2.INTER_AREA else cv2.INTER_AREA
    assert not np.array_equal(expected, _expected_square(image, other, *inner))  # the flags do differ here
    np.testing.assert_array_equal(box.array(image, interpolation="area_down_linear_up"), expected)
    assert tensor.shape == (3, 1024, 1024) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, normalize(expected))
    # the padding is black pixels normalised like the rest (SAM2 normalises the padded square)
    pad = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))
    torch.testing.assert_close(tensor[:, 0, 0], pad)
    torch.testing.assert_close(tensor[:, -1, -1], pad)


def test_letterbox_interpolation_option_keeps_the_default():
    image = noise_image(200, 300, seed=4)
    box = Letterbox.fit(200, 300, 100)  # shrinks
    assert box.shrinks
    np.testing.assert_array_equal(box.array(image), box.array(image, interpolation="linear"))
    assert not np.array_equal(box.array(image), box.array(image, interpolation="area_down_linear_up"))
    torch.testing.assert_close(box.image(image), box.image(image, interpolation="linear"))
    with pytest.raises(ValueError, match="interpolation"):
        box.array(image, interpolation="cubic")


def test_target_is_eroded_once_at_1024_then_nearest_downsampled():
    mask = np.zeros((512, 1024), bool)  # wide: letterboxed 1:1 with 256 rows of padding above
    mask[100:300, 200:400] = True
    box = Letterbox.fit(512, 1024, 1024)
    assert (box.top, box.inner_height) == (256, 512)
    eroded = erode(np.pad(mask, ((256, 256), (0, 0))))
    expected = np.zeros((1024, 1024), bool)
    expected[356 + 2:556 - 2, 200 + 2:400 - 2] = True  # a 2-px border removed by 5 x 5 once
    np.testing.assert_array_equal(eroded, expected)
    target = make_target(mask, box)
    assert target.shape == (256, 256) and target.dtype == bool
    np.testing.assert_array_equal(target, cv2.resize(expected.astype(np.uint8), (256, 256),
                                                     interpolation=cv2.INTER_NEAREST) > 0)
    np.testing.assert_array_equal(target, expected[::4, ::4])


# ----------------------------------------------------------------------------- DataModule


def test_datamodule_items_and_batches_on_the_sample():
    dm = ConverSegDataModule(str(SAMPLE), train_jsonl="train/dataset.jsonl", test="eval/items.json",
                             val_fraction=0.2, batch_size=2, seed=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 2
    item = dm.datasets["val"][0]
    assert item["image_1024"].shape == (3, 1024, 1024) and item["image_1024"].dtype == torch.float32
    assert item["target_256"].shape == (1, 256, 256) and set(item["target_256"].unique().tolist()) <= {0.0, 1.0}
    assert item["target_256"].sum() > 0
    h, w = item["gt"].shape
    assert item["gt"].dtype == torch.bool and item["image"].shape == (h, w, 3) and item["image"].dtype == torch.uint8
    assert item["letterbox"] == Letterbox.fit(h, w, 1024) and item["split"] == "val"
    assert Path(item["image_path"]).is_file() and item["concept"] == "" and isinstance(item["prompt"], str)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_1024"].shape == (2, 3, 1024, 1024) and batch["target_256"].shape == (2, 1, 256, 256)
    assert len(batch["gt"]) == len(batch["prompt"]) == len(batch["letterbox"]) == 2
    # the hash split is reproducible and disjoint
    train, val = hash_split(read_train_jsonl(SAMPLE / "train" / "dataset.jsonl"), 0.2, seed=0)
    assert [s.id for s in val] == [s.id for s in dm.datasets["val"].samples]
    assert not {s.id for s in train} & {s.id for s in val}
    dm.setup("test")
    test_item = dm.datasets["test"][0]
    assert test_item["concept"] and test_item["split"] == "converseg_coco128"
    assert collate([test_item])["image_1024"].shape == (1, 3, 1024, 1024)


def test_setup_reports_every_missing_or_mis_sized_file_at_once(tmp_path):
    paths = write_converseg(tmp_path, n=4)
    samples = read_items_json(paths["items"])
    samples[0].image.unlink()  # missing image
    samples[1].mask.unlink()  # missing mask
    save_image(samples[2].mask, np.zeros((10, 10), np.uint8))  # another size than its 32 x 24 image
    dm = ConverSegDataModule(str(tmp_path), train_jsonl=None, val="items.json", size=64, target_size=16)
    with pytest.raises(DataError) as err:
        dm.setup("validate")
    message = str(err.value)
    assert "3 data problems" in message
    assert f"{samples[0].image}: file not found" in message
    assert f"{samples[1].mask}: file not found" in message
    assert f"{samples[2].mask}: mask size 10x10 does not match its image" in message and "(32x24)" in message
    assert "items[2] (id 00002)" in message


def test_in_memory_samples_and_make_item_at_small_size():
    image = noise_image(30, 40, seed=5)
    mask = np.zeros((30, 40), bool)
    mask[5:25, 10:30] = True
    sample = Sample(id="m", image=image, mask=mask, prompt="p", split="sam_seeded", where="row 0")
    item = make_item(sample, size=64, target_size=16)
    assert item["image_1024"].shape == (3, 64, 64) and item["target_256"].shape == (1, 16, 16)
    assert item["image_path"] == "" and torch.equal(item["gt"], torch.from_numpy(mask))
    bad = Sample(id="b", image=image, mask=mask[:20], prompt="p", where="row 1")
    with pytest.raises(DataError, match="mask size 40x20 does not match"):
        make_item(bad)


def test_hf_parquet_dataset_reads_images_masks_from_bytes_and_alpha(tmp_path):
    # The layout of a Hugging Face dataset repository snapshot: data/<split>-00000-of-00001.parquet with
    # image / mask as {"bytes", "path"} structs (masks RGBA, foreground in alpha).
    import io as _io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from litseg.readers.converseg import read_hf_dataset

    def png(array: np.ndarray) -> bytes:
        buf = _io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    image = np.full((6, 8, 3), 120, np.uint8)
    mask = np.zeros((6, 8, 4), np.uint8)
    mask[1:4, 2:6, 3] = 255  # alpha only: RGB stays black
    rows = {"id": ["a", "b"], "prompt": ["the mug", ""], "concept": ["affordances", "spatial"],
            "image": [{"bytes": png(image), "path": "a.png"}] * 2, "mask": [{"bytes": png(mask), "path": "m.png"}] * 2}
    (tmp_path / "data").mkdir()
    for split in ("human_annotated", "sam_seeded"):
        pq.write_table(pa.table(rows), tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    samples = read_hf_dataset(tmp_path)
    assert [s.split for s in samples] == ["sam_seeded", "sam_seeded", "human_annotated", "human_annotated"]
    assert samples[1].prompt == "segment" and samples[1].prompt_was_empty
    from litseg.readers.converseg import read_pair

    img, m = read_pair(samples[0])
    assert img.shape == (6, 8, 3) and m.sum() == 12 and m[1:4, 2:6].all()
