"""The suite-wide bad-input table: per method, each bad input that is rejected and the first line of
the message it gets. ``scripts/bad_input_table.py`` prints :data:`CASES` as the Markdown table of
README.md; the parametrised test below walks the whole table.

Every case builds its own bad input under ``tmp_path`` (from ``tests/fakes.py`` writers or a copy of
the bundled samples) and returns a callable that must stop with a :class:`litseg.io.DataError` /
:class:`litseg.io.ConfigError` (or, for the ``cli`` cases, the CLI's one sentence on stderr with exit
code 2) whose first line matches ``expected`` and names the offending file or config key.
``{tmp}`` / ``{repo}`` in ``expected`` stand for the (escaped) temp folder / repository root.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from PIL import Image

from litseg.io import ConfigError, DataError
from tests import fakes
from tests.helpers import REPO

PET_SAMPLE = REPO / "sample_data" / "oxford_pet_subset"
COCO_SAMPLE = REPO / "sample_data" / "coco128_sample"
CONFIGS = REPO / "configs"

# pycocotools 2.0.x under numpy 2 warns on every decode (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class CliExit(Exception):
    """The CLI stopped: ``code`` is its exit status, ``stderr`` what it printed (the message is the
    text after ``error: ``)."""

    def __init__(self, code: object, stderr: str) -> None:
        self.code, self.stderr = code, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        super().__init__(errors[0][len("error: "):] if errors else stderr)


@dataclass(frozen=True)
class BadInput:
    method: str
    what: str  # short description, for the table
    build: Callable[[Path], Callable[[], object]]  # tmp_path -> the call that must be refused
    expected: str  # regex on the first line of the message; {tmp} / {repo} = the escaped folders
    xfail: str | None = None  # a known defect: the input is not refused (strict xfail)

    @property
    def id(self) -> str:
        return f"{self.method}-" + re.sub(r"[^a-z0-9]+", "_", self.what.lower()).strip("_")

    def pattern(self, tmp_path: Path) -> str:
        return self.expected.replace("{tmp}", re.escape(str(tmp_path))).replace("{repo}", re.escape(str(REPO)))


# ----------------------------------------------------------------------------- shared helpers


def truncate(path: Path, keep: int = 60) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return path


def resize(path: Path, size: tuple[int, int] = (50, 40)) -> Path:
    Image.open(path).resize(size, Image.NEAREST).save(path)
    return path


def set_pixel(path: Path, value: int) -> Path:
    arr = np.asarray(Image.open(path)).copy()
    arr[0, 0] = value
    Image.fromarray(arr).save(path)
    return path


def cli(tmp_path: Path, recipe: str, *args: str, edit: Callable[[dict], None] | None = None,
        subcommand: str | None = None) -> Callable[[], object]:
    """The CLI as ``train.py`` runs it (``litseg.cli.run_cli``), on ``recipe`` (edited into a copy
    under ``tmp_path`` when ``edit`` is given): building model and data without running a loop, or
    running ``subcommand``."""
    from litseg.cli import LitSegCLI, read_recipe, run_cli

    config = CONFIGS / recipe
    if edit is not None:
        cfg = read_recipe(config)
        edit(cfg)
        config = tmp_path / f"bad_{Path(recipe).stem}.yaml"
        config.write_text(yaml.safe_dump(cfg))

    def call() -> None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), mock.patch.object(sys, "argv", sys.argv[:1]):
                run_cli(lambda a: LitSegCLI(args=a, run=subcommand is not None),
                        [*([subcommand] if subcommand else []), "--config", str(config), "--trainer.logger", "false",
                         "--trainer.default_root_dir", str(tmp_path / "run"), *args])
        except SystemExit as stop:
            raise CliExit(stop.code, err.getvalue()) from None

    return call


def init_args(section: str, **values) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        cfg[section]["init_args"].update(values)
    return edit


# ----------------------------------------------------------------------------- weak_unet (Oxford Pet)


def pets(tmp_path: Path, n: int = 6) -> Path:
    from tests.helpers import copy_pet_subset

    return copy_pet_subset(PET_SAMPLE, tmp_path / "pets", n)


def pet_setup(root: Path, **kw) -> Callable[[], object]:
    from datamodules.weak_unet import OxfordPetDataModule

    kw = {"image_size": 64, "batch_size": 2, "val_fraction": 0.3, "test_fraction": 0.3} | kw
    return lambda: OxfordPetDataModule(root=str(root), **kw).setup(None)


def pet_first(root: Path, folder: str) -> Path:
    return sorted((root / folder).iterdir())[0]


def pet_missing_trimap(tmp_path):
    root = pets(tmp_path)
    pet_first(root, "annotations/trimaps").unlink()
    return pet_setup(root)


def pet_corrupt_image(tmp_path):
    root = pets(tmp_path)
    truncate(pet_first(root, "images"), 500)
    return pet_setup(root)


def pet_size_mismatch(tmp_path):
    root = pets(tmp_path)
    resize(pet_first(root, "annotations/trimaps"))
    return pet_setup(root)


def pet_trimap_value(tmp_path):
    root = pets(tmp_path)
    set_pixel(pet_first(root, "annotations/trimaps"), 7)
    return pet_setup(root)


def pet_empty_split(tmp_path):
    return pet_setup(pets(tmp_path, 2), val_fraction=0.2, test_fraction=0.2)


def pet_weak_labels_malformed(tmp_path):
    root = pets(tmp_path)
    (tmp_path / "weak.json").write_text('{"format": "litseg-weak-labels", "images": [\n')
    return pet_setup(root, weak_labels=str(tmp_path / "weak.json"))


def pet_weak_labels_missing(tmp_path):
    return pet_setup(pets(tmp_path), weak_labels=str(tmp_path / "weak.json"))


def pet_weak_labels_other_dataset(tmp_path):
    from litseg.weak_labels.generate import GeneratorConfig, write_weak_labels

    root = pets(tmp_path, 6)
    other = pets(tmp_path / "other", 3)
    write_weak_labels(other, tmp_path / "weak.json", GeneratorConfig())
    return pet_setup(root, weak_labels=str(tmp_path / "weak.json"))


def pet_missing_init_weights(tmp_path):
    from lit_modules.weak_unet import WeakLabelUNet

    return lambda: WeakLabelUNet(init_weights=str(tmp_path / "unet.ckpt"))


def pet_corrupt_init_weights(tmp_path):
    from lit_modules.weak_unet import WeakLabelUNet

    (tmp_path / "unet.ckpt").write_bytes(b"\x00\x01 not a checkpoint")
    return lambda: WeakLabelUNet(init_weights=str(tmp_path / "unet.ckpt"))


WEAK_UNET = [
    BadInput("weak_unet", "missing trimap", pet_missing_trimap,
             r"^{tmp}/pets/annotations/trimaps/\S+\.png: missing trimap"),
    BadInput("weak_unet", "corrupt (truncated) image", pet_corrupt_image,
             r"^{tmp}/pets/images/\S+\.jpg: cannot decode image"),
    BadInput("weak_unet", "trimap of another size than its image", pet_size_mismatch,
             r"^{tmp}/pets/annotations/trimaps/\S+\.png: size 50x40 does not match its image"),
    BadInput("weak_unet", "trimap value outside 1, 2, 3", pet_trimap_value,
             r"^{tmp}/pets/annotations/trimaps/\S+\.png: trimap values must be 1, 2 or 3; found \[7\]"),
    BadInput("weak_unet", "empty split (2 images)", pet_empty_split, r"^{tmp}/pets\S*: .*split is empty"),
    BadInput("weak_unet", "missing weak-label file", pet_weak_labels_missing, r"^{tmp}/weak\.json: .*not found"),
    BadInput("weak_unet", "malformed weak-label JSON", pet_weak_labels_malformed, r"^{tmp}/weak\.json: malformed JSON"),
    BadInput("weak_unet", "weak-label file of another image set", pet_weak_labels_other_dataset,
             r"^{tmp}/weak\.json: does not match the dataset"),
    BadInput("weak_unet", "unknown config value (label_set: breeds)",
             lambda t: cli(t, "weak_unet/points.yaml", edit=init_args("data", label_set="breeds")),
             r"^{tmp}/bad_points\.yaml: data\.init_args\.label_set: 'breeds' is not allowed"),
    BadInput("weak_unet", "out-of-range config value (lr: -0.1)",
             lambda t: cli(t, "weak_unet/points.yaml", edit=init_args("model", lr=-0.1)),
             r"^{tmp}/bad_points\.yaml: model\.init_args\.lr: lr must be positive"),
    BadInput("weak_unet", "missing init_weights checkpoint", pet_missing_init_weights,
             r"^{tmp}/unet\.ckpt: checkpoint not found"),
    BadInput("weak_unet", "corrupt init_weights checkpoint", pet_corrupt_init_weights,
             r"^{tmp}/unet\.ckpt: not a readable checkpoint"),
]


# ----------------------------------------------------------------------------- rclicks (clickability)


def synthetic_clicks(tmp_path: Path) -> dict[str, Path]:
    fakes.tiny_ritm(tmp_path / "data", "GrabCut", n=4, size=(48, 56))
    return fakes.write_synthetic_clicks(tmp_path / "data", "GrabCut", tmp_path / "clicks", clicks_per_stem=2,
                                        val_fraction=0.5)


def click_setup(tmp_path: Path, c: dict[str, Path], **kw) -> Callable[[], object]:
    from datamodules.rclicks import ClickMapDataModule

    args = {"root": str(tmp_path / "data"), "clicks": str(c["clicks"]), "dataset": "GrabCut",
            "previous_masks": str(c["previous_masks"]), "train_list": str(c["train_list"]),
            "val_list": str(c["val_list"]), "input_size": 32, "batch_size": 2,
            "cache_dir": str(tmp_path / "cache")} | kw
    return lambda: ClickMapDataModule(**args).setup("fit")


def rewrite_csv(path: Path, change: Callable[[list[list[str]]], None]) -> None:
    lines = [ln.split(",") for ln in path.read_text().splitlines()]
    change(lines)
    path.write_text("\n".join(",".join(ln) for ln in lines) + "\n")


def column(name: str) -> int:
    from litseg.rclicks.user_clicks import COLUMNS

    return COLUMNS.index(name)


def rc_missing_clicks(tmp_path):
    c = synthetic_clicks(tmp_path)
    c["clicks"].unlink()
    return click_setup(tmp_path, c)


def rc_corrupt_image(tmp_path):
    c = synthetic_clicks(tmp_path)
    truncate(sorted((tmp_path / "data" / "GrabCut" / "data_GT").iterdir())[0], 50)
    return click_setup(tmp_path, c)


def rc_previous_mask_size(tmp_path):
    from litseg.io import write_png

    c = synthetic_clicks(tmp_path)
    write_png(sorted(c["previous_masks"].iterdir())[0], np.zeros((10, 12), np.uint8))
    return click_setup(tmp_path, c)


def rc_malformed_csv(tmp_path):
    c = synthetic_clicks(tmp_path)
    rewrite_csv(c["clicks"], lambda rows: rows[1].__setitem__(column("x"), "twelve"))
    return click_setup(tmp_path, c)


def rc_missing_column(tmp_path):
    c = synthetic_clicks(tmp_path)
    rewrite_csv(c["clicks"], lambda rows: [r.pop(column("x")) for r in rows])
    return click_setup(tmp_path, c)


def rc_click_outside(tmp_path):
    c = synthetic_clicks(tmp_path)
    rewrite_csv(c["clicks"], lambda rows: rows[1].__setitem__(column("x"), "999"))
    return click_setup(tmp_path, c)


def rc_unknown_object(tmp_path):
    c = synthetic_clicks(tmp_path)

    def change(rows):
        rows[1][column("object_stem")] = "7"
        rows[1][column("full_stem")] = f"{rows[1][column('image_stem')]}_______7"
    rewrite_csv(c["clicks"], change)
    return click_setup(tmp_path, c)


def rc_empty_split(tmp_path):
    c = synthetic_clicks(tmp_path)
    c["train_list"].write_text("")
    return click_setup(tmp_path, c)


def rc_unknown_dataset(tmp_path):
    c = synthetic_clicks(tmp_path)
    return click_setup(tmp_path, c, dataset="Grabcut")


def rc_missing_backbone_weights(tmp_path):
    from lit_modules.rclicks import ClickabilityModel

    return lambda: ClickabilityModel(decoder_channels=16, backbone_weights=str(tmp_path / "resnet18.pth"))


RCLICKS = [
    BadInput("rclicks", "missing clicks.csv", rc_missing_clicks, r"^{tmp}/clicks/synthetic_clicks\.csv: .*not found"),
    BadInput("rclicks", "corrupt (truncated) image", rc_corrupt_image,
             r"^{tmp}/data/GrabCut/data_GT/\S+: cannot decode image"),
    BadInput("rclicks", "previous mask of another size", rc_previous_mask_size,
             r"^{tmp}/clicks/\S+\.png: size 12x10 matches neither the image"),
    BadInput("rclicks", "malformed clicks.csv line (x not a number)", rc_malformed_csv,
             r"^{tmp}/clicks/synthetic_clicks\.csv: line 2: "),
    BadInput("rclicks", "clicks.csv without a required column", rc_missing_column,
             r"^{tmp}/clicks/synthetic_clicks\.csv: missing column"),
    BadInput("rclicks", "click outside the image", rc_click_outside, r"^{tmp}/clicks/synthetic_clicks\.csv: line 2: "),
    BadInput("rclicks", "click on an object the mask does not have", rc_unknown_object,
             r"^{tmp}/clicks/synthetic_clicks\.csv: line 2: object 7 not in the mask"),
    BadInput("rclicks", "empty train split list", rc_empty_split, r"^{tmp}/clicks/synthetic_train\.txt: "),
    BadInput("rclicks", "unknown dataset name (Grabcut)", rc_unknown_dataset, r"^{tmp}/data/Grabcut: unknown dataset"),
    BadInput("rclicks", "unknown config value (fusion: middle)",
             lambda t: cli(t, "rclicks/train_clickability.yaml", edit=init_args("model", fusion="middle")),
             r"^{tmp}/bad_train_clickability\.yaml: model\.init_args\.fusion: "),
    BadInput("rclicks", "missing backbone weights", rc_missing_backbone_weights,
             r"^{tmp}/resnet18\.pth: .*not found"),
]


# ----------------------------------------------------------------------------- interactive (benchmark)


def ritm(tmp_path: Path, dataset: str = "GrabCut", n: int = 3) -> Path:
    fakes.tiny_ritm(tmp_path / "data", dataset, n=n, size=(24, 32))
    return tmp_path / "data"


def bench_setup(root: Path, datasets=("GrabCut",)) -> Callable[[], object]:
    from datamodules.interactive import InteractiveDataModule

    return lambda: InteractiveDataModule(root=str(root), datasets=list(datasets)).setup("test")


def it_missing_mask(tmp_path):
    root = ritm(tmp_path)
    sorted((root / "GrabCut" / "boundary_GT").iterdir())[0].unlink()
    return bench_setup(root)


def it_corrupt_image(tmp_path):
    root = ritm(tmp_path)
    truncate(sorted((root / "GrabCut" / "data_GT").iterdir())[0], 50)
    return bench_setup(root)


def it_size_mismatch(tmp_path):
    root = ritm(tmp_path)
    resize(sorted((root / "GrabCut" / "boundary_GT").iterdir())[0], (20, 24))
    return bench_setup(root)


def it_empty_mask(tmp_path):
    root = ritm(tmp_path)
    mask = sorted((root / "GrabCut" / "boundary_GT").iterdir())[0]
    Image.fromarray(np.zeros(np.asarray(Image.open(mask)).shape[:2], np.uint8)).save(mask)
    return bench_setup(root)


def it_empty_dataset(tmp_path):
    root = ritm(tmp_path)
    for p in (root / "GrabCut" / "data_GT").iterdir():
        p.unlink()
    for p in (root / "GrabCut" / "boundary_GT").iterdir():
        p.unlink()
    return bench_setup(root)


def it_unknown_dataset(tmp_path):
    return bench_setup(ritm(tmp_path), ["SBD"])


def it_missing_dataset(tmp_path):
    return bench_setup(ritm(tmp_path), ["Berkeley"])


def user_bench(tmp_path: Path, rows: list[list[object]] | None = None, columns=None, text: bytes | None = None):
    from lightning.pytorch import Trainer

    from datamodules.interactive import InteractiveDataModule
    from lit_modules.interactive import InteractiveBenchmark

    root = ritm(tmp_path)
    clicks = tmp_path / "clicks.csv"
    if text is not None:
        clicks.write_bytes(text)
    elif rows is not None:
        fakes.write_clicks_csv(clicks, rows, columns)

    def call():
        model = InteractiveBenchmark(predictor="tests.tiny_models:tiny_ritm_predictor", predictor_args={},
                                     strategy="user", user_clicks=str(clicks), max_clicks=1)
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path / "run")
        trainer.test(model, datamodule=InteractiveDataModule(str(root), ["GrabCut"]), verbose=False)
    return call


GOOD_ROW = ["GrabCut", "grabcut00", "grabcut00", "", "first", "", "pc", 9, 9, 32, 24]


def it_clicks_missing(tmp_path):
    return user_bench(tmp_path)


def it_clicks_missing_column(tmp_path):
    from litseg.rclicks.user_clicks import COLUMNS

    return user_bench(tmp_path, [GOOD_ROW[:-1]], COLUMNS[:-1])


def it_clicks_malformed_line(tmp_path):
    return user_bench(tmp_path, [GOOD_ROW[:7] + ["nine", 9, 32, 24]])


def it_clicks_frame(tmp_path):
    return user_bench(tmp_path, [GOOD_ROW[:9] + [40, 10]])


def it_clicks_outside(tmp_path):
    return user_bench(tmp_path, [GOOD_ROW[:7] + [99, 9, 32, 24]])


def it_clicks_not_utf8(tmp_path):
    return user_bench(tmp_path, text=b"dataset\xff\n")


def it_missing_checkpoint(tmp_path):
    from lightning.pytorch import Trainer

    from datamodules.interactive import InteractiveDataModule
    from lit_modules.interactive import InteractiveBenchmark

    root = ritm(tmp_path)

    def call():
        model = InteractiveBenchmark(predictor="sam", predictor_args={"checkpoint": str(tmp_path / "sam_vit_b.pth"),
                                                                     "device": "cpu"})
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=tmp_path / "run").test(model, datamodule=InteractiveDataModule(str(root), ["GrabCut"]))
    return call


INTERACTIVE = [
    BadInput("interactive", "image without mask", it_missing_mask, r"^{tmp}/data/GrabCut/data_GT/\S+: missing mask"),
    BadInput("interactive", "corrupt (truncated) image", it_corrupt_image,
             r"^{tmp}/data/GrabCut/data_GT/\S+: cannot decode image"),
    BadInput("interactive", "mask of another size than its image", it_size_mismatch,
             r"^{tmp}/data/GrabCut/boundary_GT/\S+: size 20x24 does not match its image"),
    BadInput("interactive", "empty mask (no object)", it_empty_mask,
             r"^{tmp}/data/GrabCut/boundary_GT/\S+: empty mask"),
    BadInput("interactive", "dataset folder without images", it_empty_dataset, r"^{tmp}/data/GrabCut\S*: "),
    BadInput("interactive", "dataset folder not found", it_missing_dataset,
             r"^{tmp}/data/Berkeley: dataset folder not found"),
    BadInput("interactive", "unknown dataset name (SBD)", it_unknown_dataset,
             r"^{tmp}/data/SBD: unknown dataset 'SBD'"),
    BadInput("interactive", "unknown config value (strategy: sideways)",
             lambda t: cli(t, "interactive/grabcut_classical.yaml", "--data.init_args.root", str(t),
                           edit=init_args("model", strategy="sideways")),
             r"^{tmp}/bad_grabcut_classical\.yaml: model\.init_args\.strategy: 'sideways' is not allowed"),
    BadInput("interactive", "unknown config value (predictor: nope)",
             lambda t: cli(t, "interactive/grabcut_classical.yaml", "--data.init_args.root", str(ritm(t, n=2)),
                           "--trainer.enable_progress_bar", "false", edit=init_args("model", predictor="nope"),
                           subcommand="test"),
             r"^{tmp}/bad_grabcut_classical\.yaml: model\.init_args\.predictor: unknown predictor 'nope'"),
    BadInput("interactive", "missing user clicks.csv", it_clicks_missing, r"^{tmp}/clicks\.csv: .*not found"),
    BadInput("interactive", "clicks.csv without a required column", it_clicks_missing_column,
             r"^{tmp}/clicks\.csv: missing column"),
    BadInput("interactive", "malformed clicks.csv line (x not a number)", it_clicks_malformed_line,
             r"^{tmp}/clicks\.csv: line 2: "),
    BadInput("interactive", "clicks.csv not UTF-8", it_clicks_not_utf8, r"^{tmp}/clicks\.csv: not UTF-8 text"),
    BadInput("interactive", "click frame of another image size", it_clicks_frame,
             r"^{tmp}/clicks\.csv: line 2: click frame 40x10 does not match the image size"),
    BadInput("interactive", "click outside the image", it_clicks_outside, r"^{tmp}/clicks\.csv: line 2: "),
    BadInput("interactive", "missing predictor checkpoint", it_missing_checkpoint,
             r"^{tmp}/sam_vit_b\.pth: checkpoint not found"),
]


# ----------------------------------------------------------------------------- saom


def saom(tmp_path: Path, edit: Callable[[dict], None] | None = None, **kw) -> tuple[Path, Callable[[], object]]:
    from datamodules.saom import SAOMDataModule

    json_path = fakes.write_saom(tmp_path / "saom")
    if edit is not None:
        doc = json.loads(json_path.read_text())
        edit(doc)
        json_path.write_text(json.dumps(doc))
    return json_path, lambda: SAOMDataModule(str(tmp_path / "saom"), metadata=str(json_path), **kw).setup(None)


def saom_entry(tmp_path: Path, json_path: Path, split: str = "train_data", index: int = 0, mask: int = 0) -> Path:
    rec = json.loads(json_path.read_text())[split][index]
    return tmp_path / "saom" / rec["entity_masks"][mask].lstrip("/")


def saom_image(tmp_path: Path, json_path: Path) -> Path:
    return tmp_path / "saom" / json.loads(json_path.read_text())["train_data"][0]["image_name"]


def sa_missing_mask(tmp_path):
    json_path, call = saom(tmp_path)
    saom_entry(tmp_path, json_path).unlink()
    return call


def sa_missing_metadata(tmp_path):
    json_path, call = saom(tmp_path)
    json_path.unlink()
    return call


def sa_corrupt_image(tmp_path):
    json_path, call = saom(tmp_path)
    garbage(saom_image(tmp_path, json_path))
    return call


def sa_size_mismatch(tmp_path):
    json_path, call = saom(tmp_path)
    resize(saom_entry(tmp_path, json_path), (20, 24))
    return call


def sa_malformed_json(tmp_path):
    json_path, call = saom(tmp_path)
    json_path.write_text(json_path.read_text()[:-10])
    return call


def sa_index_out_of_range(tmp_path):
    return saom(tmp_path, lambda doc: doc["train_data"][0]["entity_indices"].__setitem__(0, 99))[1]


def sa_counts_mismatch(tmp_path):
    return saom(tmp_path, lambda doc: doc["train_data"][0].__setitem__("entity_indices", [1]))[1]


def sa_empty_split(tmp_path):
    return saom(tmp_path, lambda doc: doc.__setitem__("val_data", []))[1]


def sa_unknown_eval_class(tmp_path):
    return saom(tmp_path, eval_classes=["Sofa", "Toaster"])[1]


def sa_missing_checkpoint(tmp_path):
    from lit_modules.saom import SAOM

    return lambda: SAOM(num_classes=3, model_type="vit_b", checkpoint=str(tmp_path / "sam_vit_b.pth"))


SAOM_CASES = [
    BadInput("saom", "missing metadata JSON", sa_missing_metadata, r"^{tmp}/saom/DSmetadata\S*\.json: .*not found"),
    BadInput("saom", "missing instance mask", sa_missing_mask, r"^{tmp}/saom/\S+\.png: "),
    BadInput("saom", "corrupt image", sa_corrupt_image, r"^{tmp}/saom/\S+: cannot decode image"),
    BadInput("saom", "mask of another size than its image", sa_size_mismatch,
             r"^{tmp}/saom/\S+\.png: .*does not match"),
    BadInput("saom", "malformed metadata JSON", sa_malformed_json, r"^{tmp}/saom/DSmetadata\S*\.json: malformed JSON"),
    BadInput("saom", "entity index out of range", sa_index_out_of_range, r"^{tmp}/saom/DSmetadata\S*\.json: "),
    BadInput("saom", "entity_masks / entity_indices counts differ", sa_counts_mismatch,
             r"^{tmp}/saom/DSmetadata\S*\.json: .*2 entity_masks but 1 entity_indices"),
    BadInput("saom", "empty val split", sa_empty_split, r"^{tmp}/saom/DSmetadata\S*\.json: "),
    BadInput("saom", "unknown eval class (Toaster)", sa_unknown_eval_class,
             r"^data\.init_args\.eval_classes: .*Toaster"),
    BadInput("saom", "unknown config value (source: cocoa)",
             lambda t: cli(t, "saom/demo.yaml", edit=init_args("data", source="cocoa")),
             r"^{tmp}/bad_demo\.yaml: data\.init_args\.source: "),
    BadInput("saom", "missing SAM checkpoint", sa_missing_checkpoint, r"^{tmp}/sam_vit_b\.pth: checkpoint not found"),
]


# ----------------------------------------------------------------------------- semseg


def coco(tmp_path: Path, edit: Callable[[dict], None] | None = None, **kw) -> tuple[dict, Callable[[], object]]:
    from datamodules.semseg import SemSegDataModule

    fake = fakes.tiny_coco(tmp_path / "coco")
    if edit is not None:
        doc = json.loads(fake["json"].read_text())
        edit(doc)
        fake["json"].write_text(json.dumps(doc))
    args = {"known_ids": [1], "val_json": "instances.json", "val_images": "images", "flip_prob": 0.0} | kw
    return fake, lambda: SemSegDataModule(str(tmp_path / "coco"), "instances.json", "images", **args).setup("fit")


def ss_missing_image(tmp_path):
    fake, call = coco(tmp_path)
    (fake["images"] / "a.png").unlink()
    return call


def ss_missing_json(tmp_path):
    fake, call = coco(tmp_path)
    fake["json"].unlink()
    return call


def ss_corrupt_image(tmp_path):
    fake, call = coco(tmp_path)
    garbage(fake["images"] / "a.png")
    return call


def ss_size_mismatch(tmp_path):
    fake, call = coco(tmp_path)
    fakes.save_image(fake["images"] / "b.png", np.zeros((21, 24, 3), np.uint8))
    return call


def ss_malformed_json(tmp_path):
    fake, call = coco(tmp_path)
    fake["json"].write_text(fake["json"].read_text()[:-5])
    return call


def ss_unknown_category(tmp_path):
    return coco(tmp_path, lambda doc: doc["annotations"][0].__setitem__("category_id", 77))[1]


def ss_known_id_absent(tmp_path):
    return coco(tmp_path, known_ids=[1, 2])[1]


def ss_empty_split(tmp_path):
    return coco(tmp_path, lambda doc: (doc.__setitem__("images", []), doc.__setitem__("annotations", [])))[1]


def ss_missing_backbone_weights(tmp_path):
    from lit_modules.semseg import SemSeg

    return lambda: SemSeg(num_known=1, backbone_name="resnet18", backbone_weights=str(tmp_path / "r18.pth"))


SEMSEG = [
    BadInput("semseg", "missing instances JSON", ss_missing_json, r"^{tmp}/coco/instances\.json: .*not found"),
    BadInput("semseg", "missing image", ss_missing_image,
             r"^{tmp}/coco/instances\.json: image 1 \(a\.png\): file not found under {tmp}/coco/images"),
    BadInput("semseg", "corrupt image", ss_corrupt_image, r"^{tmp}/coco/images/a\.png: "),
    BadInput("semseg", "image of another size than the JSON says", ss_size_mismatch,
             r"^{tmp}/coco/images/b\.png: .*24x21"),
    BadInput("semseg", "malformed instances JSON", ss_malformed_json, r"^{tmp}/coco/instances\.json: malformed JSON"),
    BadInput("semseg", "annotation of an unknown category id", ss_unknown_category, r"^{tmp}/coco/instances\.json: "),
    BadInput("semseg", "known id absent from the JSON", ss_known_id_absent, r"^data\.init_args\.known_ids: .*\[2\]"),
    BadInput("semseg", "empty split (no images)", ss_empty_split, r"^{tmp}/coco/instances\.json: "),
    BadInput("semseg", "out-of-range config value (flip_prob: 2)",
             lambda t: cli(t, "semseg/coco128_demo.yaml", edit=init_args("data", flip_prob=2.0)),
             r"^{tmp}/bad_coco128_demo\.yaml: data\.init_args\.flip_prob: must be in \[0, 1\]"),
    BadInput("semseg", "unknown config value (backbone_name: resnet999)",
             lambda t: cli(t, "semseg/coco128_demo.yaml", edit=init_args("model", backbone_name="resnet999")),
             r"^{tmp}/bad_coco128_demo\.yaml: model\.init_args\.backbone_name: "),
    BadInput("semseg", "missing backbone weights", ss_missing_backbone_weights, r"^{tmp}/r18\.pth: .*not found"),
]


# ----------------------------------------------------------------------------- converseg


def converseg(tmp_path: Path, stage: str = "fit", **kw) -> tuple[dict, Callable[[], object]]:
    from datamodules.converseg import ConverSegDataModule

    paths = fakes.write_converseg(tmp_path / "cs", n=4)
    args = {"train_jsonl": "dataset.jsonl", "val": "items.json", "size": 64, "target_size": 16} | kw
    return paths, lambda: ConverSegDataModule(str(tmp_path / "cs"), **args).setup(stage)


def cs_sample(paths: dict, index: int = 0) -> dict:
    return json.loads(paths["jsonl"].read_text().splitlines()[index])


def cs_missing_image(tmp_path):
    paths, call = converseg(tmp_path)
    (paths["root"] / cs_sample(paths)["image"]).unlink()
    return call


def cs_missing_jsonl(tmp_path):
    paths, call = converseg(tmp_path)
    paths["jsonl"].unlink()
    return call


def cs_corrupt_mask(tmp_path):
    paths, call = converseg(tmp_path)
    garbage(paths["root"] / cs_sample(paths)["mask_merged"])
    return call


def cs_size_mismatch(tmp_path):
    paths, call = converseg(tmp_path)
    fakes.save_image(paths["root"] / cs_sample(paths)["mask_merged"], np.zeros((10, 10), np.uint8))
    return call


def cs_malformed_jsonl(tmp_path):
    paths, call = converseg(tmp_path)
    lines = paths["jsonl"].read_text().splitlines()
    lines[1] = '{"image": "b.png", "mask_merged": '
    paths["jsonl"].write_text("\n".join(lines) + "\n")
    return call


def cs_count_mismatch(tmp_path):
    paths, call = converseg(tmp_path)
    doc = json.loads(paths["items"].read_text())
    doc["count"] = 9
    paths["items"].write_text(json.dumps(doc))
    return call


def cs_empty_split(tmp_path):
    paths, call = converseg(tmp_path)
    paths["jsonl"].write_text("")
    return call


def cs_val_fraction(tmp_path):
    from datamodules.converseg import ConverSegDataModule

    fakes.write_converseg(tmp_path / "cs", n=2)
    return lambda: ConverSegDataModule(str(tmp_path / "cs"), val=None, val_fraction=1.5)


def cs_missing_qwen(tmp_path):
    from lit_modules.converseg import ConverSeg

    return lambda: ConverSeg(qwen=str(tmp_path / "Qwen2.5-VL-3B-Instruct"), qwen_dtype="float32")


CONVERSEG = [
    BadInput("converseg", "missing training JSONL", cs_missing_jsonl, r"^{tmp}/cs/dataset\.jsonl: .*not found"),
    BadInput("converseg", "missing image", cs_missing_image, r"^{tmp}/cs/images/\S+\.png: file not found"),
    BadInput("converseg", "corrupt mask", cs_corrupt_mask, r"^{tmp}/cs/masks/\S+\.png: cannot decode image"),
    BadInput("converseg", "mask of another size than its image", cs_size_mismatch,
             r"^{tmp}/cs/masks/\S+\.png: mask size 10x10 does not match its image"),
    BadInput("converseg", "malformed JSONL line", cs_malformed_jsonl,
             r"^{tmp}/cs/dataset\.jsonl: line 2: malformed JSON"),
    BadInput("converseg", "items.json count differs from its items", cs_count_mismatch,
             r"^{tmp}/cs/items\.json: 'count' is 9 but 'items' holds 4"),
    BadInput("converseg", "empty training JSONL", cs_empty_split, r"^{tmp}/cs/dataset\.jsonl: "),
    BadInput("converseg", "out-of-range config value (val_fraction: 1.5)", cs_val_fraction,
             r"^data\.init_args\.val_fraction: must be in \(0, 1\), got 1\.5"),
    BadInput("converseg", "unknown config value (qwen_dtype: float16)",
             lambda t: cli(t, "converseg/tiny_demo.yaml", edit=init_args("model", qwen_dtype="float16")),
             r"^{tmp}/bad_tiny_demo\.yaml: model\.init_args\.qwen_dtype: "),
    BadInput("converseg", "missing Qwen model folder", cs_missing_qwen, r"^{tmp}/Qwen2\.5-VL-3B-Instruct: "),
]


CASES: list[BadInput] = [*WEAK_UNET, *RCLICKS, *INTERACTIVE, *SAOM_CASES, *SEMSEG, *CONVERSEG]
METHODS = ("weak_unet", "rclicks", "interactive", "saom", "semseg", "converseg")


# ----------------------------------------------------------------------------- running a case


def run_case(case: BadInput, tmp_path: Path) -> Exception | None:
    """Build the bad input, call it; the exception it raised (None if it was accepted)."""
    call = case.build(tmp_path)
    try:
        call()
    except Exception as err:  # noqa: BLE001 - checked by check_refusal (a raw error is a failure there)
        return err
    return None


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else ""


def check_refusal(case: BadInput, err: BaseException | None, tmp_path: Path) -> str:
    """Assert ``err`` is the refusal the table promises; return its first line."""
    assert err is not None, f"{case.id}: the bad input was accepted silently"
    if not isinstance(err, (DataError, ConfigError, CliExit)):
        raise AssertionError(f"{case.id}: raw {type(err).__name__} instead of a DataError / ConfigError") from err
    if isinstance(err, CliExit):
        assert err.code == 2, (err.code, err.stderr)
        assert "Traceback" not in err.stderr, err.stderr
        assert err.stderr.startswith("error: "), err.stderr
    line = first_line(err)
    assert re.search(case.pattern(tmp_path), line), f"{case.id}: {line!r} does not match {case.expected!r}"
    assert str(tmp_path) in line or str(REPO) in line or re.search(r"\b(data|model|trainer)\.init_args\.\w+", line), \
        f"{case.id}: the message names neither a file nor a config key: {line!r}"
    return line


MESSAGES: dict[str, str] = {}  # case id -> its table cell (filled as the parametrised cases run)


def table_cell(err: BaseException | None, tmp_path: Path) -> str:
    """What the table shows for a case: the first line of its message (temp folder as ``<tmp>``, the
    repository as ``<repo>``), or the defect when the input was accepted or hit a raw error."""
    if err is None:
        return "*accepted silently (defect)*"
    if not isinstance(err, (DataError, ConfigError, CliExit)):
        return f"*raw {type(err).__name__} traceback (defect)*"
    line = first_line(err).replace(str(tmp_path), "<tmp>").replace(str(REPO), "<repo>")
    return f"`` {line} ``" if "`" in line else f"`{line}`"


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_is_refused_with_a_sentence_naming_it(case, tmp_path):
    err = run_case(case, tmp_path)
    MESSAGES[case.id] = table_cell(err, tmp_path)
    check_refusal(case, err, tmp_path)


def test_every_method_covers_every_kind_of_bad_input():
    assert {c.method for c in CASES} == set(METHODS)
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for method in METHODS:
        whats = " | ".join(c.what.lower() for c in CASES if c.method == method)
        for kind in ("missing", "corrupt|malformed|not utf-8", "size|differ", "empty", "config value",
                     "checkpoint|weights|qwen model"):
            assert re.search(kind, whats), f"{method}: no case of kind {kind!r}"


README_START, README_END = "<!-- bad-input-table -->", "<!-- /bad-input-table -->"


def readme_table() -> str | None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return None
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip()


@pytest.mark.skipif(readme_table() is None, reason="README.md has no <!-- bad-input-table --> markers yet")
def test_readme_table_is_the_generated_one(tmp_path_factory):
    from scripts.bad_input_table import markdown

    for case in CASES:  # the cases not run in this session (e.g. when this test runs alone)
        if case.id not in MESSAGES:
            tmp = tmp_path_factory.mktemp("case")
            MESSAGES[case.id] = table_cell(run_case(case, tmp), tmp)
    assert readme_table() == markdown(MESSAGES).strip(), \
        "README.md's bad-input table is stale: regenerate it with python scripts/bad_input_table.py"
