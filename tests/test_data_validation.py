"""Bad data stops in setup(), before the first step, with every problem listed at once; the
up-front check is cached per run; clicks.csv rows and text files are checked the same way."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_pet_subset
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

import litseg.io
from datamodules.base import CHECK_CACHE_NAME
from datamodules.interactive import InteractiveDataModule
from datamodules.rclicks import ClickMapDataModule, read_stem_list
from datamodules.weak_unet import OxfordPetDataModule
from lit_modules.interactive import InteractiveBenchmark
from litseg.io import DataError, DataProblems, read_csv_rows, read_json, write_png
from litseg.rclicks.synthetic_clicks import CSV_NAME, PREVIOUS_MASKS, synthesize
from litseg.rclicks.user_clicks import COLUMNS
from litseg.weak_labels.format import load_weak_labels
from litseg.weak_labels.generate import GeneratorConfig, write_weak_labels
from tests.fakes import save_image, write_clicks_csv, write_ritm

PREDICTOR = "test_data_validation:SquarePredictor"  # import string for build_predictor


def pets(pet_root: Path, tmp_path: Path, n: int = 10, **kw) -> OxfordPetDataModule:
    root = copy_pet_subset(pet_root, tmp_path / "pets", n)
    return OxfordPetDataModule(root=str(root), **({"image_size": 64, "batch_size": 2, "val_fraction": 0.3,
                                                   "test_fraction": 0.3} | kw))


def splits_of(dm: OxfordPetDataModule) -> dict[str, list]:
    """The records of each split, as setup() builds them (built on a good copy, then kept)."""
    probe = OxfordPetDataModule(root=str(dm.root), image_size=64, val_fraction=dm.val_fraction,
                                test_fraction=dm.test_fraction)
    probe.setup(None)
    return {split: ds.records for split, ds in probe.datasets.items()}


def truncate(path: Path, keep: int = 100) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


class StepCounter(LightningModule):
    """Records every training step it is given (there must be none)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return (self.weight * batch["image"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def count_opens(monkeypatch) -> list[Path]:
    """Every image file the shared reader decodes from now on."""
    opened: list[Path] = []
    real = litseg.io._open

    def spy(path: Path):
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(litseg.io, "_open", spy)
    return opened


# ----------------------------------------------------------------------------- Oxford Pet


def test_corrupt_trimap_in_train_stops_fast_dev_run_before_any_step(pet_root, tmp_path):
    dm = pets(pet_root, tmp_path)
    victim = truncate(splits_of(dm)["train"][2].trimap)
    model = StepCounter()
    trainer = Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(DataError, match=rf"{victim.name}: cannot decode image") as err:
        trainer.fit(model, datamodule=dm)
    assert model.steps == 0
    assert err.value.path == victim
    assert str(err.value).startswith(str(victim))  # the message starts with the file
    assert "train + val splits, checked before the first step" in str(err.value)


def test_two_problems_in_two_files_are_reported_together(pet_root, tmp_path):
    dm = pets(pet_root, tmp_path)
    splits = splits_of(dm)
    values = splits["train"][0].trimap  # a value outside {1, 2, 3}
    arr = np.asarray(Image.open(values)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(values)
    size = splits["val"][0].trimap  # another size than its image
    Image.open(size).resize((50, 40)).save(size)
    untouched_test = truncate(splits["test"][0].image)  # the fit stage does not read the test split
    with pytest.raises(DataProblems) as err:
        dm.setup("fit")
    message = str(err.value)
    first_line = message.splitlines()[0]
    assert first_line == f"{dm.root}: 2 data problems (Oxford-IIIT Pet train + val splits, checked before the " \
                         "first step):"
    assert f"{values}: trimap values must be 1, 2 or 3; found [7]" in message
    assert f"{size}: size 50x40 does not match its image" in message
    assert untouched_test.name not in message
    assert [p.path for p in err.value.problems] == [values, size]
    with pytest.raises(DataError, match=rf"{untouched_test.name}: cannot decode image .*\(Oxford-IIIT Pet test split"):
        dm.setup("test")


def test_every_missing_trimap_is_listed_and_long_lists_are_cut(pet_root, tmp_path):
    dm = pets(pet_root, tmp_path, n=26)
    trimaps = sorted((dm.root / "annotations" / "trimaps").iterdir())
    for t in trimaps[:2]:
        t.unlink()
    for img in sorted((dm.root / "images").iterdir())[5:]:  # 21 corrupt images on top
        truncate(img, 60)
    with pytest.raises(DataProblems) as err:
        dm.setup(None)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{dm.root}: 23 data problems (Oxford-IIIT Pet train + val + test splits, checked before " \
                       "the first step):"
    assert lines[1] == f"  {trimaps[0]}: missing trimap for image {trimaps[0].stem}.jpg"
    assert lines[2] == f"  {trimaps[1]}: missing trimap for image {trimaps[1].stem}.jpg"
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "  ... and 3 more"


def test_weak_label_sizes_are_checked_at_setup(pet_root, tmp_path):
    dm = pets(pet_root, tmp_path, weak_labels=str(tmp_path / "weak.json"))
    write_weak_labels(dm.root, tmp_path / "weak.json", GeneratorConfig())
    rec = splits_of(dm)["train"][1]
    Image.open(rec.image).resize((60, 50)).save(rec.image, format="JPEG")  # image and trimap both resized
    Image.open(rec.trimap).resize((60, 50), Image.NEAREST).save(rec.trimap)
    with pytest.raises(DataError, match=rf"{rec.image.name}: image is 60x50 but the weak-label file .*weak\.json "
                                        "records"):
        dm.setup("fit")


# ----------------------------------------------------------------------------- the cache


def test_cache_skips_unchanged_files_and_rereads_a_changed_one(pet_root, tmp_path, monkeypatch):
    dm = pets(pet_root, tmp_path)
    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "run")
    dm.trainer = trainer
    opened = count_opens(monkeypatch)
    dm.setup("fit")
    n_fit = len(dm.datasets["train"]) + len(dm.datasets["val"])
    assert len(opened) == 2 * n_fit  # image + trimap of every train / val record
    cache = tmp_path / "run" / CHECK_CACHE_NAME
    assert cache.is_file()

    again = OxfordPetDataModule(root=str(dm.root), image_size=64, val_fraction=0.3, test_fraction=0.3)
    again.trainer = trainer  # a fresh datamodule (as after a requeue) in the same run folder
    opened.clear()
    again.setup("fit")
    assert opened == []  # nothing decoded: every file is unchanged since it passed

    changed = dm.datasets["val"].records[0].trimap
    arr = np.asarray(Image.open(changed)).copy()
    arr[0, :] = 3
    Image.fromarray(arr).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a distinct mtime on coarse clocks
    opened.clear()
    OxfordPetDataModule(root=str(dm.root), image_size=64, val_fraction=0.3, test_fraction=0.3).setup("fit")
    assert len(opened) == 2 * n_fit  # no trainer attached: no run folder, no cache
    fresh = OxfordPetDataModule(root=str(dm.root), image_size=64, val_fraction=0.3, test_fraction=0.3)
    fresh.trainer = trainer
    opened.clear()
    fresh.setup("fit")
    assert sorted(p.name for p in opened) == sorted([changed.name, dm.datasets["val"].records[0].image.name])

    truncate(changed)  # a file that passed before and is now broken is caught
    opened.clear()
    with pytest.raises(DataError, match=rf"{changed.name}: cannot decode image"):
        fresh.setup("fit")
    # The same datamodule also remembers what passed in this process (no trainer needed).
    solo = OxfordPetDataModule(root=str(dm.root), image_size=64, val_fraction=0.3, test_fraction=0.3)
    solo.setup("test")
    opened.clear()
    solo.setup("test")
    assert opened == []


def test_a_damaged_cache_is_rebuilt(pet_root, tmp_path):
    dm = pets(pet_root, tmp_path, n=6, val_fraction=0.2, test_fraction=0.2)
    dm.trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECK_CACHE_NAME).write_bytes(b"\xff not json")
    dm.setup("validate")
    assert read_json(tmp_path / "run" / CHECK_CACHE_NAME)["format"] == "litseg-data-check"


def test_no_cache_without_a_run_folder(pet_root, tmp_path, monkeypatch):
    # A trainer that neither logs nor checkpoints has no run folder: nothing lands in its
    # default_root_dir (the working directory unless set).
    dm = pets(pet_root, tmp_path, n=6, val_fraction=0.2, test_fraction=0.2)
    dm.trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         default_root_dir=tmp_path / "run")
    dm.setup("validate")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- RITM layouts


def noise_by_stem_length(stem: str, shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(len(stem)).integers(0, 255, (*shape, 3), dtype=np.uint8)


def ritm_root(tmp_path: Path, masks: dict[str, np.ndarray], dataset: str = "Berkeley") -> Path:
    return write_ritm(tmp_path, dataset, masks, images=noise_by_stem_length, image_ext=".jpg", mask_ext=".png")


def object_mask(h: int = 20, w: int = 20) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 5:15] = 255
    return mask


def test_ritm_mask_of_another_size_and_empty_mask_are_caught_at_setup(tmp_path):
    root = ritm_root(tmp_path, {"a": object_mask(), "b": object_mask(), "c": object_mask(), "d": object_mask()})
    save_image(root / "Berkeley" / "masks" / "b.png", object_mask(20, 24))  # another size
    save_image(root / "Berkeley" / "masks" / "d.png", np.full((20, 20), 128, np.uint8))  # only ignore pixels
    (root / "Berkeley" / "images" / "e.jpg").write_bytes(b"")  # an image without mask (and not an image)
    dm = InteractiveDataModule(root=str(root), datasets=["Berkeley"])
    with pytest.raises(DataProblems) as err:
        dm.setup("test")
    assert [(p.path.name, p.problem.split(":")[0]) for p in err.value.problems] == [
        ("e.jpg", "missing mask"), ("b.png", "size 24x20 does not match its image (20x20)"), ("d.png", "empty mask")]
    assert str(err.value).splitlines()[0] == f"{root}: 3 data problems (Berkeley (4 images), checked before the " \
                                             "first step):"
    (root / "Berkeley" / "images" / "e.jpg").unlink()
    save_image(root / "Berkeley" / "masks" / "b.png", object_mask())
    save_image(root / "Berkeley" / "masks" / "d.png", object_mask())
    dm.setup("test")
    assert dm.summaries[("Berkeley", "b")].instance_ids == (1,)
    assert (dm.summaries[("Berkeley", "b")].height, dm.summaries[("Berkeley", "b")].width) == (20, 20)


def test_ritm_check_is_cached_in_the_run_folder(tmp_path, monkeypatch):
    root = ritm_root(tmp_path / "data", {s: object_mask() for s in "abc"}, "GrabCut")
    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "run")
    opened = count_opens(monkeypatch)
    for expected in (6, 0):  # a fresh datamodule each time: the second reads nothing
        dm = InteractiveDataModule(root=str(root), datasets=["GrabCut"])
        dm.trainer = trainer
        opened.clear()
        dm.setup("test")
        assert len(opened) == expected
    assert sorted(dm.summaries) == [("GrabCut", "a"), ("GrabCut", "b"), ("GrabCut", "c")]


# ----------------------------------------------------------------------------- user mode


class SquarePredictor:
    """Paints a 7x7 square around each positive click (enough for IoU > 0 on the test objects)."""

    threshold = 0.5

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]

    def reset(self) -> None:
        pass

    def predict(self, clicks) -> np.ndarray:
        probs = np.zeros(self.shape, np.float32)
        for c in clicks:
            probs[max(0, c.y - 3): c.y + 4, max(0, c.x - 3): c.x + 4] = float(c.is_positive)
        return probs


USER_ROWS = [
    ["GrabCut", "a", "a", "", "first", "", "pc", 9, 9, 20, 20],  # line 2: fine
    ["GrabCut", "zzz", "zzz", "", "first", "", "pc", 9, 9, 20, 20],  # line 3: no such image
    ["GrabCut", "b", "b", "", "first", "", "mobile", 8, 8, 20, 20],  # line 4: fine
    ["GrabCut", "b_______5", "b", 5, "first", "", "pc", 9, 9, 20, 20],  # line 5: no object 5
    ["Berkeley", "x", "x", "", "first", "", "pc", 1, 1, 20, 20],  # line 6: a dataset not evaluated here
    ["Grabcut", "a", "a", "", "first", "", "pc", 1, 1, 20, 20],  # line 7: no such dataset (typo)
    ["GrabCut", "a_ritm_fn_pc_1", "a", "", "fn", "ritm", "pc", 0, 0, 20, 20],  # line 8: not a first click
]


def user_run(tmp_path: Path, rows: list[list[object]], **kw) -> InteractiveBenchmark:
    root = ritm_root(tmp_path / "data", {s: object_mask() for s in "abc"}, "GrabCut")
    clicks = write_clicks_csv(tmp_path / "clicks.csv", rows)
    model = InteractiveBenchmark(predictor=PREDICTOR, strategy="user", user_clicks=str(clicks), **kw)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.test(model, datamodule=InteractiveDataModule(root=str(root), datasets=["GrabCut"]), verbose=False)
    return model


def test_user_mode_stops_on_rows_the_dataset_does_not_have(tmp_path):
    with pytest.raises(DataError) as err:
        user_run(tmp_path, USER_ROWS)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'clicks.csv'}: 3 first-click row(s) refer to an image or object the "
                              "evaluated datasets do not have (lines 3, 5, 7).")
    assert "line 3: image 'zzz' is not in" in message and "line 5: object 5 is not in the mask of image 'b'" in message
    assert "line 7: dataset 'Grabcut' is none of" in message
    assert "allow_unmatched_clicks" in message


def test_user_mode_with_the_flag_warns_and_evaluates_the_rest(tmp_path):
    with pytest.warns(UserWarning, match=r"clicks\.csv: 3 first-click row\(s\) .*\(lines 3, 5, 7\)"):
        model = user_run(tmp_path, USER_ROWS, allow_unmatched_clicks=True)
    (summary,) = model.evaluation_rows
    assert summary["n_clicks"] == 2 and summary["n_instances"] == 2
    assert [r["source_line"] for r in model.click_rows] == [2, 4]


def test_user_mode_reports_frame_and_matching_problems_together(tmp_path):
    rows = [USER_ROWS[1], ["GrabCut", "c", "c", "", "first", "", "pc", 1, 1, 40, 10]]  # lines 2 and 3
    with pytest.raises(DataProblems) as err:
        user_run(tmp_path, rows)
    assert [p.problem[:60] for p in err.value.problems] == [
        "1 first-click row(s) refer to an image or object the evaluat",
        "line 3: click frame 40x10 does not match the image size 20x2"]


def test_user_mode_rows_of_images_left_out_by_max_images_are_not_errors(tmp_path):
    root = ritm_root(tmp_path / "data", {s: object_mask() for s in "abc"}, "GrabCut")
    clicks = write_clicks_csv(tmp_path / "clicks.csv", [USER_ROWS[0], ["GrabCut", "c", "c", "", "first", "", "pc", 9, 9,
                                                                   20, 20]])
    model = InteractiveBenchmark(predictor=PREDICTOR, strategy="user", user_clicks=str(clicks))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    trainer.test(model, datamodule=InteractiveDataModule(str(root), ["GrabCut"], max_images=2), verbose=False)
    assert model.evaluation_rows[0]["n_clicks"] == 1


# ----------------------------------------------------------------------------- text files


def test_non_utf8_weak_label_file_names_the_file_and_position(tmp_path):
    path = tmp_path / "weak.json"
    path.write_bytes(b'{"format": "litseg-weak-labels",\n "source_root": "/data/caf\xe9"}\n')
    with pytest.raises(DataError, match=r"weak\.json: not UTF-8 text: byte 0xe9 at line 2 column 27 "
                                        r"\(byte offset 59\)"):
        load_weak_labels(path)
    path.write_bytes(b"\xef\xbb\xbf" + b'{"format": "x"}')  # a byte-order mark is fine
    with pytest.raises(DataError, match=r"weak\.json: not a weak-label file: format is 'x'"):
        load_weak_labels(path)


def test_csv_and_lists_with_bad_bytes_name_the_line(tmp_path):
    csv_path = tmp_path / "clicks.csv"
    csv_path.write_bytes(b"x,y\n1,2\n3,\xff\n")
    with pytest.raises(DataError, match=r"clicks\.csv: not UTF-8 text: byte 0xff at line 3 column 3"):
        read_csv_rows(csv_path, ["x", "y"])
    csv_path.write_bytes(b"\xef\xbb\xbfx,y\r\n1,2\r\n")  # Excel's UTF-8: BOM and CRLF
    assert read_csv_rows(csv_path, ["x", "y"]) == [{"x": "1", "y": "2", "_line": "2"}]
    csv_path.write_bytes(b"x,y\n1,2\n3," + b"9" * 200_000 + b"\n")  # over the csv module's field limit
    with pytest.raises(DataError, match=r"clicks\.csv: line 3: malformed CSV \(field larger than field limit"):
        read_csv_rows(csv_path, ["x", "y"])
    stems = tmp_path / "train.txt"
    stems.write_bytes(b"a\nb\x80\n")
    with pytest.raises(DataError, match=r"train\.txt: not UTF-8 text: byte 0x80 at line 2 column 2"):
        read_stem_list(stems)


# ----------------------------------------------------------------------------- clickability data


@pytest.fixture
def synthetic(tmp_path) -> dict[str, Path]:
    masks = {}
    for i in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[6 + i:24, 8:26 - i] = 255
        masks[f"img{i}"] = mask
    root = ritm_root(tmp_path / "data", masks, "GrabCut")
    synthesize(root, "GrabCut", tmp_path / "clicks", clicks_per_stem=2, jitter=0.05, val_fraction=0.5)
    return {"root": root, "clicks": tmp_path / "clicks"}


def click_maps(synthetic, **kw) -> ClickMapDataModule:
    c = synthetic["clicks"]
    return ClickMapDataModule(**({"root": str(synthetic["root"]), "clicks": str(c / CSV_NAME), "dataset": "GrabCut",
                                  "previous_masks": str(c / PREVIOUS_MASKS),
                                  "train_list": str(c / "synthetic_train.txt"),
                                  "val_list": str(c / "synthetic_val.txt"), "input_size": 32, "batch_size": 2} | kw))


def test_previous_mask_of_wrong_size_names_the_clicks_line(synthetic):
    dm = click_maps(synthetic)
    dm.setup("fit")
    index, task = next((i, t) for i, t in enumerate(dm.train_set.tasks) if t.click_type == "fn")
    write_png(task.previous_mask, np.zeros((10, 12), np.uint8))
    line = task.clicks[0].line
    with pytest.raises(DataError, match=rf"{task.previous_mask.name}: size 12x10 matches neither the image \(32x32\) "
                                        rf"nor the clicks' frame \(32x32\) of full_stem '{task.full_stem}' "
                                        rf"\({CSV_NAME} line {line}\)"):
        dm.train_set[index]


def test_clickability_setup_checks_previous_masks_objects_and_images(synthetic):
    dm = click_maps(synthetic)
    dm.setup("fit")
    fn = next(t for t in dm.val_set.tasks if t.click_type == "fn")
    truncate(fn.previous_mask, 30)
    image = dm.train_set.tasks[0].record.image
    truncate(image, 50)
    with pytest.raises(DataProblems) as err:
        click_maps(synthetic).setup("fit")
    problems = {p.path.name: p.problem for p in err.value.problems}
    assert problems[image.name].startswith("cannot decode image")
    assert problems[fn.previous_mask.name].endswith(
        f"(the previous mask of full_stem '{fn.full_stem}', {CSV_NAME} line {fn.clicks[0].line})")


def test_clickability_unknown_object_is_caught_at_setup(synthetic, tmp_path):
    src = synthetic["clicks"] / CSV_NAME
    lines = src.read_text().splitlines()
    fields = lines[1].split(",")
    fields[COLUMNS.index("object_stem")] = "7"
    fields[COLUMNS.index("full_stem")] = f"{fields[COLUMNS.index('image_stem')]}_______7"
    bad = tmp_path / "objects.csv"
    bad.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"objects\.csv: line 2: object 7 not in the mask of image 'img\d' "
                                        r"\(ids \[1\]\)"):
        click_maps(synthetic, clicks=str(bad)).setup(None)
