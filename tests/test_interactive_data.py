"""Interactive benchmark data: layouts, mask encodings, errors, the DDP sampler, clicks.csv."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules.base import UnpaddedDistributedSampler
from datamodules.interactive import InteractiveDataModule, single_sample
from litseg.io import DataError
from litseg.rclicks.user_clicks import COLUMNS, first_clicks_by_instance, instance_key, nsr, read_user_clicks
from litseg.readers.ritm import decode_ids, limited_size, load_sample, scan_dataset
from tests.fakes import save_image as save
from tests.fakes import write_clicks_csv, write_ritm

SAMPLE_ROOT = Path(__file__).resolve().parents[1] / "sample_data"


def rgb(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * 1000 + w).integers(0, 255, (h, w, 3), dtype=np.uint8)


def rgb_of(stem: str, shape: tuple[int, int]) -> np.ndarray:
    return rgb(*shape)


def grabcut_root(tmp_path: Path, masks: dict[str, np.ndarray], image_ext: str = ".jpg") -> Path:
    return write_ritm(tmp_path, "GrabCut", masks, images=rgb_of, image_ext=image_ext, mask_ext=".bmp")


# ----------------------------------------------------------------------------- layouts


def test_bundled_grabcut_sample():
    records = scan_dataset(SAMPLE_ROOT, "GrabCut")
    assert [r.stem for r in records] == ["106024", "153077", "227092", "teddy"]
    sample = load_sample(records[1])  # 153077 has a 128 (ignore) boundary band
    assert sample["dataset"] == "GrabCut" and sample["image_stem"] == "153077"
    assert sample["image"].shape == (321, 481, 3) and sample["image"].dtype == np.uint8
    assert sample["instance_ids"] == [1]
    raw = np.asarray(Image.open(SAMPLE_ROOT / "GrabCut" / "boundary_GT" / "153077.bmp"))
    np.testing.assert_array_equal(sample["instances"][0], raw == 255)
    np.testing.assert_array_equal(sample["ignore"], raw == 128)
    assert sample["ignore"].sum() == 2116


def test_grabcut_encoding_threshold_128(tmp_path):
    mask = np.array([[0, 127, 128, 129, 255]], dtype=np.uint8).repeat(3, axis=0)
    root = grabcut_root(tmp_path, {"a": mask})
    sample = load_sample(scan_dataset(root, "GrabCut")[0])
    assert sample["instances"][0][0].tolist() == [False, False, False, True, True]
    assert sample["ignore"][0].tolist() == [False, False, True, False, False]


def test_berkeley_rgb_png_masks_use_the_first_channel(tmp_path):
    mask = np.zeros((4, 6, 3), dtype=np.uint8)
    mask[1:3, 1:4] = 255
    mask[0, 0] = 128
    write_ritm(tmp_path, "Berkeley", {"101085": mask}, images=rgb_of, mask_ext=".png")
    sample = load_sample(scan_dataset(tmp_path, "Berkeley")[0])
    assert sample["instances"][0].sum() == 6 and sample["ignore"].sum() == 1 and sample["ignore"][0, 0]


def test_davis_palette_masks_count_every_nonzero_index(tmp_path):
    idx = np.array([[0, 1, 2, 3], [0, 0, 255, 0]], dtype=np.uint8)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] + [7, 7, 7] * 252  # index 3 is black
    write_ritm(tmp_path, "DAVIS", {"000": idx}, images=rgb_of, mask_ext=".png", palette=palette)
    assert Image.open(tmp_path / "DAVIS" / "gt" / "000.png").mode == "P"
    sample = load_sample(scan_dataset(tmp_path, "DAVIS")[0])
    assert sample["instance_ids"] == [1]
    assert sample["instances"][0].tolist() == [[False, True, True, True], [False, False, True, False]]
    assert not sample["ignore"].any()


def test_coco_mval_rgb_masks_max_over_channels(tmp_path):
    mask = np.zeros((3, 3, 3), dtype=np.uint8)
    mask[0, 0, 2] = 1  # only blue: still object
    mask[2, 2] = (255, 255, 255)
    write_ritm(tmp_path, "COCO_MVal", {"x": mask}, images=rgb_of, mask_ext=".png")
    sample = load_sample(scan_dataset(tmp_path, "COCO_MVal")[0])
    assert np.argwhere(sample["instances"][0]).tolist() == [[0, 0], [2, 2]]


def test_tetris_rgb_instance_ids(tmp_path):
    # RClicks: ch0*65536 + ch1*256 + ch2 of the cv2 (BGR) read, i.e. B*65536 + G*256 + R.
    ids = np.zeros((4, 5, 3), dtype=np.uint8)
    ids[0, :2] = (1, 0, 0)  # R=1 -> id 1
    ids[2, 1:4] = (0, 0, 1)  # B=1 -> id 65536
    ids[3, 4] = (2, 1, 0)  # G=1, R=2 -> id 258
    assert decode_ids(ids)[[0, 2, 3], [0, 1, 4]].tolist() == [1, 65536, 258]
    write_ritm(tmp_path, "TETRIS", {"scene": ids}, images=rgb_of, mask_ext=".png")
    sample = load_sample(scan_dataset(tmp_path, "TETRIS")[0])
    assert sample["instance_ids"] == [1, 258, 65536]
    assert [m.sum() for m in sample["instances"]] == [2, 1, 3]
    assert sample["instances"][2][2, 1:4].all()


def test_tetris_longest_side_is_limited_to_2048_per_id(tmp_path):
    assert limited_size(30, 2100, 2048) == (29, 2048)  # int(30 / 2100 * 2048 + 0.5) = 29
    assert limited_size(2100, 30, 2048) == (2048, 29)
    assert limited_size(100, 50, 2048) == (100, 50)
    h, w = 30, 2100
    ids = np.zeros((h, w, 3), dtype=np.uint8)
    ids[:, :1000, 0] = 1  # id 1: left part
    ids[5:25, 1500:1700, 0] = 2  # id 2: a block
    # id 3: a 1-px column that bilinear downscaling loses entirely (found with the same cv2 call).
    lost_col = next(c for c in range(1800, 2100)
                    if not cv2.resize((np.arange(w) == c)[None].repeat(h, 0).astype(np.uint8), (2048, 29)).any())
    ids[:, lost_col, 0] = 3
    write_ritm(tmp_path, "TETRIS", {"wide": ids}, images=rgb_of, image_ext=".png", mask_ext=".png")
    with pytest.warns(UserWarning, match=r"wide\.png: instance id\(s\) \[3\] vanish"):
        sample = load_sample(scan_dataset(tmp_path, "TETRIS")[0])
    assert sample["image"].shape == (29, 2048, 3)
    assert sample["instance_ids"] == [1, 2]
    expected_2 = cv2.resize(((ids[..., 0] == 2)).astype(np.uint8), (2048, 29), interpolation=cv2.INTER_LINEAR) > 0
    np.testing.assert_array_equal(sample["instances"][1], expected_2)
    assert sample["ignore"].shape == (29, 2048)


def test_pairing_by_stem_with_mixed_extensions_and_sorted_order(tmp_path):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1:3, 1:3] = 255
    root = grabcut_root(tmp_path, {"b": mask, "a": mask}, image_ext=".bmp")
    save(root / "GrabCut" / "data_GT" / "c.JPG", rgb(4, 4))
    save(root / "GrabCut" / "boundary_GT" / "c.bmp", mask)
    assert [(r.stem, r.image.suffix) for r in scan_dataset(root, "GrabCut")] == [
        ("a", ".bmp"), ("b", ".bmp"), ("c", ".JPG")]


# ----------------------------------------------------------------------------- errors


def square_mask(h: int = 6, w: int = 6) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[1:4, 1:4] = 255
    return mask


def test_missing_mask_names_the_image(tmp_path):
    root = grabcut_root(tmp_path, {"a": square_mask()})
    save(root / "GrabCut" / "data_GT" / "lonely.jpg", rgb(6, 6))
    with pytest.raises(DataError, match=r"data_GT/lonely\.jpg: missing mask"):
        scan_dataset(root, "GrabCut")


def test_mask_without_image_names_the_mask(tmp_path):
    root = grabcut_root(tmp_path, {"a": square_mask()})
    save(root / "GrabCut" / "boundary_GT" / "orphan.bmp", square_mask())
    with pytest.raises(DataError, match=r"boundary_GT/orphan\.bmp: mask without image"):
        scan_dataset(root, "GrabCut")


def test_size_mismatch_names_the_mask(tmp_path):
    root = grabcut_root(tmp_path, {"a": square_mask()})
    save(root / "GrabCut" / "boundary_GT" / "a.bmp", square_mask(6, 7))
    with pytest.raises(DataError, match=r"boundary_GT/a\.bmp: size 7x6 does not match its image \(6x6\)"):
        load_sample(scan_dataset(root, "GrabCut")[0])


def test_empty_mask_names_the_mask(tmp_path):
    only_ignore = np.full((5, 5), 128, dtype=np.uint8)  # ignore is not object
    root = grabcut_root(tmp_path, {"a": only_ignore})
    with pytest.raises(DataError, match=r"boundary_GT/a\.bmp: empty mask"):
        load_sample(scan_dataset(root, "GrabCut")[0])


def test_unknown_dataset_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'SBD'; known: \['Berkeley', 'COCO_MVal', 'DAVIS'"):
        InteractiveDataModule(root=str(tmp_path), datasets=["SBD"])
    with pytest.raises(DataError, match=r"Berkeley: dataset folder not found"):
        scan_dataset(tmp_path, "Berkeley")
    (tmp_path / "Berkeley" / "masks").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Berkeley/images: folder not found"):
        scan_dataset(tmp_path, "Berkeley")
    dm = InteractiveDataModule(root=str(tmp_path / "nowhere"), datasets=["GrabCut"])
    with pytest.raises(DataError, match="nowhere: data root not found"):
        dm.setup("test")


# ----------------------------------------------------------------------------- datamodule


def test_datamodule_max_images_and_unbatched_samples(tmp_path):
    root = grabcut_root(tmp_path, {s: square_mask() for s in "abc"})
    dm = InteractiveDataModule(root=str(root), datasets=["GrabCut"], max_images=2)
    dm.setup("test")
    samples = list(dm.test_dataloader())
    assert [s["image_stem"] for s in samples] == ["a", "b"]
    assert isinstance(samples[0]["image"], np.ndarray) and samples[0]["image"].shape == (6, 6, 3)
    with pytest.raises(ValueError, match="one image per step"):
        single_sample([samples[0], samples[1]])


def test_unpadded_sampler_splits_without_repeats():
    data = list(range(5))
    shares = [list(UnpaddedDistributedSampler(data, num_replicas=2, rank=r)) for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert [len(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)] == [2, 2, 1]
    assert list(UnpaddedDistributedSampler(data[:1], 2, 1)) == []  # more ranks than images


def test_datamodule_uses_the_unpadded_sampler_under_ddp(tmp_path):
    root = grabcut_root(tmp_path, {s: square_mask() for s in "abcde"})
    dm = InteractiveDataModule(root=str(root), datasets=["GrabCut"])

    class FakeTrainer:  # only what test_dataloader reads
        world_size, global_rank = 2, 1

    dm.trainer = FakeTrainer()
    loader = dm.test_dataloader()
    assert isinstance(loader.sampler, UnpaddedDistributedSampler)
    assert [s["image_stem"] for s in loader] == ["b", "d"]


# ----------------------------------------------------------------------------- clicks.csv


GOOD_ROWS = [
    ["GrabCut", "teddy", "teddy", "", "first", "", "pc", 10, 20, 284, 398],
    ["GrabCut", "teddy", "teddy", "", "first", "", "mobile", 11, 21, 284, 398],
    ["TETRIS", "scene_______258", "scene", 258, "first", "", "pc", 3999, 0, 4000, 3000],
    ["GrabCut", "teddy_ritm_fn_pc_3", "teddy", "", "fn", "ritm", "pc", 5, 6, 284, 398],
]


def test_read_clicks_and_group_first_clicks(tmp_path):
    clicks = read_user_clicks(write_clicks_csv(tmp_path / "clicks.csv", GOOD_ROWS))
    assert len(clicks) == 4
    assert clicks[2].object_id == 258 and clicks[2].line == 4 and clicks[3].is_positive
    grouped = first_clicks_by_instance(clicks)
    assert sorted(grouped) == [("GrabCut", "teddy"), ("TETRIS", "scene_______258")]
    assert [(c.x, c.y, c.device) for c in grouped[("GrabCut", "teddy")]] == [(10, 20, "pc"), (11, 21, "mobile")]
    assert instance_key("scene", 258, 2) == "scene_______258" and instance_key("teddy", 1, 1) == "teddy"


def test_clicks_are_rescaled_to_the_loaded_image(tmp_path):
    clicks = read_user_clicks(write_clicks_csv(tmp_path / "clicks.csv", GOOD_ROWS))
    assert clicks[0].in_image(398, 284) == (20, 10)  # same frame: unchanged
    # 4000x3000 frame, image limited to 2048x1536: pixel centres scale by 0.512.
    assert clicks[2].in_image(1536, 2048) == (0, 2047)
    with pytest.raises(DataError, match=r"clicks\.csv: line 4: click frame 4000x3000 does not match the image size"):
        clicks[2].in_image(2048, 1536)  # transposed image: another image's clicks


@pytest.mark.parametrize(("column", "value", "message"), [
    ("x", "1.5", r"line 3: x='1\.5' is not an integer"),
    ("y", "", r"line 3: y='' is not an integer"),
    ("click_type", "second", r"line 3: unknown click_type 'second'"),
    ("device", "tablet", r"line 3: unknown device 'tablet'"),
    ("x", "284", r"line 3: click \(x=284, y=21\) outside its 284x398 frame"),
    ("y", "-1", r"line 3: click \(x=11, y=-1\) outside its 284x398 frame"),
    ("w", "0", r"line 3: frame size w=0"),
    ("full_stem", "teddy_______1", r"line 3: full_stem 'teddy_______1' of a first click should be 'teddy'"),
    ("object_stem", "two", r"line 3: object_stem='two' is not an integer"),
])
def test_malformed_rows_name_file_and_line(tmp_path, column, value, message):
    rows = [list(r) for r in GOOD_ROWS]
    rows[1][COLUMNS.index(column)] = value
    with pytest.raises(DataError, match=r"clicks\.csv: " + message):
        read_user_clicks(write_clicks_csv(tmp_path / "clicks.csv", rows))


def test_fn_click_without_model_and_missing_columns(tmp_path):
    rows = [list(r) for r in GOOD_ROWS]
    rows[3][COLUMNS.index("model_type")] = ""
    with pytest.raises(DataError, match=r"line 5: a fn click needs the model_type"):
        read_user_clicks(write_clicks_csv(tmp_path / "clicks.csv", rows))
    (tmp_path / "short.csv").write_text("dataset,x,y\nGrabCut,1,2\n")
    with pytest.raises(DataError, match=r"short\.csv: missing column"):
        read_user_clicks(tmp_path / "short.csv")


def test_nsr_hand_worked():
    # instance A: IoU@1 0.5 and 1.0 -> std 0.25, mean 0.75 -> 1/3; instance B: one click -> 0.
    assert nsr([[0.5, 1.0], [0.8]]) == pytest.approx(100 * (1 / 3 + 0) / 2, rel=1e-6)
    assert nsr([[0.0, 0.0]]) == 0.0  # mean 0: the 1e-9 keeps it finite
    assert np.isnan(nsr([]))


def test_no_warning_when_nothing_vanishes(tmp_path):
    ids = np.zeros((10, 2100, 3), dtype=np.uint8)
    ids[:, :500, 0] = 1
    write_ritm(tmp_path, "TETRIS", {"ok": ids}, images=rgb_of, image_ext=".png", mask_ext=".png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_sample(scan_dataset(tmp_path, "TETRIS")[0])["instance_ids"] == [1]
