"""Every recipe under configs/ runs through the real CLI for one batch (``fast_dev_run``), with tiny
models and tiny data from ``tests/fakes.py`` or the bundled sample_data; and the fake-data writers
produce what the readers (or, where no reader exists yet, the specs) expect."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from litseg.cli import read_recipe
from tests import fakes
from tests.helpers import REPO

CONFIGS = REPO / "configs"
PRESET_DIRS = {"trainer", "logger"}  # presets mixed into recipes, not recipes
SHARED_DIRS = {"_shared", "shared", "base", "common", "includes"}  # include files of several recipes

# pycocotools 2.0.x under numpy 2 warns on every decode (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def is_recipe(rel: Path) -> bool:
    if rel.parts[0] in PRESET_DIRS or len(rel.parts) < 2:
        return False
    return not any(p.startswith("_") or p in SHARED_DIRS for p in rel.parts[:-1]) and not rel.name.startswith("_")


RECIPES = sorted(p.relative_to(CONFIGS) for p in [*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")]
                 if is_recipe(p.relative_to(CONFIGS)))

COMMON = ["--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]


# ----------------------------------------------------------------------------- per-method tiny settings


def weak_unet_args(recipe: Path, tmp_path: Path) -> list[str]:
    # A fake Oxford-Pet set of 10 small images with its weak_labels.json, at 64 px, 2 images a batch.
    fakes.tiny_pet(tmp_path / "pets", n=10, size=(48, 64))
    return ["--data.init_args.root", str(tmp_path / "pets"),
            "--data.init_args.weak_labels", str(tmp_path / "pets" / "weak_labels.json"),
            "--data.init_args.image_size", "64", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0"]


def rclicks_args(recipe: Path, tmp_path: Path, n: int = 4, val_fraction: float = 0.5) -> list[str]:
    # The recipe's own dataset layout (GrabCut for the demo, TETRIS's RGB ids for the full recipe), faked,
    # with synthetic clicks; random-init backbone, 64 px input, 16 decoder channels.
    dataset = read_recipe(recipe)["data"]["init_args"]["dataset"]
    fakes.tiny_ritm(tmp_path / "data", dataset, n=n, size=(48, 56))
    c = fakes.write_synthetic_clicks(tmp_path / "data", dataset, tmp_path / "clicks", clicks_per_stem=3,
                                     val_fraction=val_fraction)
    return ["--data.init_args.root", str(tmp_path / "data"), "--data.init_args.clicks", str(c["clicks"]),
            "--data.init_args.previous_masks", str(c["previous_masks"]),
            "--data.init_args.train_list", str(c["train_list"]), "--data.init_args.val_list", str(c["val_list"]),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "2", "--data.init_args.input_size", "64",
            "--model.init_args.decoder_channels", "16", "--model.init_args.pretrained", "false",
            "--model.init_args.eval_draws", "2"]


TINY_PREDICTORS = {"sam": "tests.tiny_models:tiny_sam_predictor", "sam2": "tests.tiny_models:tiny_sam2_predictor",
                   "sam_hq": "litseg.interactive.predictors.sam_hq:tiny_sam_hq_predictor",
                   "mobile_sam": "litseg.interactive.predictors.sam_hq:tiny_mobile_sam_predictor",
                   "ritm": "tests.tiny_models:tiny_ritm_predictor",
                   "simpleclick": "tests.tiny_models:tiny_simpleclick_predictor"}


def interactive_args(recipe: Path, tmp_path: Path) -> list[str]:
    # Every dataset the recipe names, faked in its own layout and encoding; tiny SAM / SAM2 for the
    # learned predictors; the user-clicks recipe replays synthetic clicks of the fake GrabCut.
    cfg = read_recipe(recipe)
    init = cfg["model"]["init_args"]
    datasets = cfg["data"]["init_args"]["datasets"]
    root = tmp_path / "data"
    for name in datasets:
        fakes.tiny_ritm(root, name, n=2, size=(24, 32))
    args = ["--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
            "--model.init_args.max_clicks", str(min(2, init.get("max_clicks", 2)))]
    if init["predictor"] in TINY_PREDICTORS:
        args += ["--model.init_args.predictor", TINY_PREDICTORS[init["predictor"]],
                 "--model.init_args.predictor_args", "{}"]
    if init.get("strategy") == "user":
        args += ["--data.init_args.datasets", json.dumps(datasets[:1])]
        c = fakes.write_synthetic_clicks(root, datasets[0], tmp_path / "clicks", clicks_per_stem=2,
                                         subsequent=False)
        args += ["--model.init_args.user_clicks", str(c["clicks"])]
    return args


def saom_args(recipe: Path, tmp_path: Path) -> list[str]:
    # The full recipes: fake SAOM metadata (5 classes) with a tiny random SAM, a 4 x 4 lattice, fp32 on CPU.
    # The demo recipe already runs a tiny SAM on the bundled COCO128 sample: it only gets the small lattice.
    args = ["--model.init_args.nx", "4", "--model.init_args.ny", "4", "--trainer.precision", "32-true"]
    if read_recipe(recipe)["data"]["init_args"].get("source") == "coco":
        return args
    metadata = fakes.write_saom(tmp_path / "saom", size=32)
    return args + ["--model.init_args.model_type", "tiny", "--model.init_args.checkpoint", "null",
                   "--model.init_args.num_classes", str(len(fakes.SAOM_CLASSES)),
                   "--data.init_args.root", str(tmp_path / "saom"), "--data.init_args.metadata", str(metadata),
                   "--data.init_args.eval_classes", "null", "--data.init_args.num_workers", "0"]


def semseg_args(recipe: Path, tmp_path: Path) -> list[str]:
    # Every recipe on the bundled COCO128 sample with the 7 VOC classes it has, a random resnet18-FPN at 128 px.
    sample = REPO / "sample_data/coco128_sample"
    return ["--data.init_args.root", str(sample), "--data.init_args.train_json", "annotations/instances.json",
            "--data.init_args.train_images", "train2017", "--data.init_args.val_json", "null",
            "--data.init_args.val_images", "null", "--data.init_args.known_ids", "[1, 3, 5, 7, 44, 64, 72]",
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
            "--model.init_args.num_known", "7", "--model.init_args.backbone_name", "resnet18",
            "--model.init_args.backbone_weights", "null", "--model.init_args.min_size", "[128]",
            "--model.init_args.max_size", "192", "--trainer.precision", "32-true"]


def converseg_args(recipe: Path, tmp_path: Path) -> list[str]:
    # A tiny random Qwen2.5-VL (built once per machine under the temp dir) and a tiny SAM2 (128 px) on the
    # bundled generated COCO128 referring sample.
    import tempfile

    from litseg.converseg.tiny_qwen import tiny_qwen_folder
    from litseg.nets.sam import TINY_SAM2_CONFIG, tiny_sam2_overrides

    qwen = tiny_qwen_folder(Path(tempfile.gettempdir()) / "litseg-tiny-qwen")
    return ["--model.init_args.qwen", str(qwen), "--model.init_args.qwen_dtype", "float32",
            "--model.init_args.sam2_config", TINY_SAM2_CONFIG, "--model.init_args.sam2_checkpoint", "null",
            "--model.init_args.sam2_overrides", json.dumps(tiny_sam2_overrides(128)),
            "--model.init_args.artefacts", "null",
            "--data.init_args.root", str(REPO / "sample_data/converseg_coco128"),
            "--data.init_args.train_jsonl", "train/dataset.jsonl", "--data.init_args.val", "eval/items.json",
            "--data.init_args.test", "eval/items.json", "--data.init_args.size", "128",
            "--data.init_args.target_size", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--trainer.precision", "32-true",
            "--trainer.accumulate_grad_batches", "1"]


# method folder -> (subcommand, tiny arguments)
METHODS: dict[str, tuple[str, Callable[[Path, Path], list[str]]]] = {
    "weak_unet": ("fit", weak_unet_args),
    "rclicks": ("fit", rclicks_args),
    "interactive": ("test", interactive_args),  # a benchmark: it only tests
    "saom": ("fit", saom_args),
    "semseg": ("fit", semseg_args),
    "converseg": ("fit", converseg_args),
}


def test_every_recipe_folder_is_collected():
    assert {r.parts[0] for r in RECIPES} >= {"weak_unet", "rclicks", "interactive", "saom", "semseg", "converseg"}
    assert not any(r.parts[0] in PRESET_DIRS for r in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.with_suffix("")) for r in RECIPES])
def test_recipe_runs_one_batch(recipe, tmp_path):
    from litseg.cli import LitSegCLI

    method = recipe.parts[0]
    if method not in METHODS:
        pytest.fail(f"configs/{recipe}: no tiny settings for method folder '{method}'; add them to METHODS in "
                    "tests/test_recipes.py (or, for an include file, name it with a leading '_')")
    subcommand, tiny = METHODS[method]
    # The recipe's own logger, written under tmp_path (some callbacks need one); none if it has none.
    logger = (read_recipe(CONFIGS / recipe).get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and "save_dir" in logger.get("init_args", {}):
        logging = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    else:
        logging = ["--trainer.logger", "false"]
    args = [subcommand, "--config", str(CONFIGS / recipe), *COMMON, *logging,
            "--trainer.default_root_dir", str(tmp_path / "run"), *tiny(CONFIGS / recipe, tmp_path)]
    cli = LitSegCLI(args=args)
    trainer = cli.trainer
    if subcommand == "fit":
        assert trainer.global_step == 1
        loss = trainer.callback_metrics["train/loss"]
        assert math.isfinite(float(loss))
    else:
        # fast_dev_run: one batch = one image of the first dataset; every dataset still gets its row.
        rows = cli.model.evaluation_rows
        assert [r["dataset"] for r in rows] == cli.datamodule.datasets
        assert rows[0]["n_instances"] >= 1 and 0.0 <= rows[0]["mIoU@1"] <= 1.0
        assert {r["image"] for r in cli.model.click_rows} == {cli.datamodule.datasets[0].lower() + "00"}


# ----------------------------------------------------------------------------- the fake-data writers


@pytest.mark.parametrize("dataset", ["GrabCut", "Berkeley", "DAVIS", "COCO_MVal", "TETRIS", "PREVIEW"])
def test_fake_ritm_layouts_load_with_their_encoding(tmp_path, dataset):
    from litseg.readers.ritm import load_sample, scan_dataset

    stems = fakes.tiny_ritm(tmp_path, dataset, n=2, size=(24, 32))
    records = scan_dataset(tmp_path, dataset)
    assert [r.stem for r in records] == stems
    sample = load_sample(records[0])
    assert sample["image"].shape == (24, 32, 3)
    encoding = fakes.DATASETS[dataset].encoding
    if encoding == "rgb_ids":
        assert sample["instance_ids"] == [1, 300]
    else:
        assert sample["instance_ids"] == [1] and sample["instances"][0].sum() > 20
    assert sample["ignore"].any() == (encoding == "grabcut")


def test_encode_ids_inverts_decode_ids():
    from litseg.readers.ritm import decode_ids

    ids = np.array([[0, 1, 255, 256], [65535, 65536, 300, (1 << 24) - 1]])
    np.testing.assert_array_equal(decode_ids(fakes.encode_ids(ids)), ids)


def test_fake_clicks_are_read_by_the_clicks_reader(tmp_path):
    from litseg.rclicks.user_clicks import read_user_clicks

    fakes.tiny_ritm(tmp_path / "data", "Berkeley", n=2)
    c = fakes.write_synthetic_clicks(tmp_path / "data", "Berkeley", tmp_path / "clicks", clicks_per_stem=2,
                                     val_fraction=0.5)
    assert c["counts"]["images"] == 2
    clicks = read_user_clicks(c["clicks"])
    assert {k.click_type for k in clicks} <= {"first", "fn", "fp"} and len(clicks) == c["counts"]["clicks"]
    assert any(c["previous_masks"].glob("*.png"))
    assert len(c["train_list"].read_text().split()) == len(c["val_list"].read_text().split()) == 1


def test_fake_pet_reads_with_weak_labels(tmp_path):
    from litseg.readers.oxford_pet import scan_pets
    from litseg.weak_labels.format import load_weak_labels

    stems = fakes.tiny_pet(tmp_path, n=4)
    assert sorted(r.stem for r in scan_pets(tmp_path)) == sorted(stems)
    assert {r.is_cat for r in scan_pets(tmp_path)} == {True, False}
    labels = load_weak_labels(tmp_path / "weak_labels.json")
    assert labels is not None


def test_fake_coco_has_polygon_rle_and_crowd(tmp_path):
    from litseg.readers.coco import CocoInstances

    fake = fakes.tiny_coco(tmp_path)
    coco = CocoInstances.load(fake["json"], fake["images"])
    anns = [a for image_id in coco.image_ids for a in coco.annotations_of(image_id)]
    assert sorted(a.id for a in anns) == sorted(fake["masks"])
    for ann in anns:
        decoded, mask = coco.annotation_mask(ann), fake["masks"][ann.id]
        if ann.kind == "polygon":  # rasterised by pycocotools: compare by overlap
            assert (decoded & mask).sum() / (decoded | mask).sum() > 0.7
        else:
            np.testing.assert_array_equal(decoded, mask)
    assert [a.id for a in coco.annotations_of(1, crowd=False)] == [1]
    assert coco.image_instances(1).ignore.sum() == fake["masks"][2].sum()
    kinds = {type(a["segmentation"]).__name__ + ("-crowd" if a["iscrowd"] else "")
             for a in json.loads(fake["json"].read_text())["annotations"]}
    assert kinds == {"list", "dict", "dict-crowd"}


def test_fake_saom_metadata_follows_the_spec(tmp_path):
    from PIL import Image

    path = fakes.write_saom(tmp_path, size=32)
    doc = json.loads(path.read_text())
    assert doc["entity classes"] == list(fakes.SAOM_CLASSES)
    assert {k for k in doc if k.endswith("_data")} == {"train_data", "val_data", "test_data"}
    for split in ("train", "val", "test"):
        for rec in doc[f"{split}_data"]:
            assert set(rec) == {"image_name", "entity_masks", "entity_indices"}
            assert len(rec["entity_masks"]) == len(rec["entity_indices"]) >= 1
            assert all(0 <= i < len(doc["entity classes"]) for i in rec["entity_indices"])
            image = Image.open(Path(str(tmp_path)) / rec["image_name"])
            assert image.mode == "RGB" and image.size == (32, 32)
            assert len(Path(rec["image_name"]).stem.split("-")) >= 4
            for m in rec["entity_masks"]:
                assert m.startswith("/")
                mask = np.asarray(Image.open(str(tmp_path) + m))  # upstream joins data_path + str
                assert mask.shape == (32, 32, 3) and (mask[..., 0] > 0).any()
                assert len(Path(m).stem.split("-")) == 4


def test_fake_converseg_jsonl_and_items_follow_the_spec(tmp_path):
    from PIL import Image

    fake = fakes.write_converseg(tmp_path, n=3)
    lines = [json.loads(line) for line in fake["jsonl"].read_text().splitlines() if line.strip()]
    assert len(lines) == 3
    for line in lines:
        assert {"image", "mask_merged"} <= set(line) and isinstance(line.get("prompt", ""), str)
        image = Image.open(tmp_path / line["image"])
        mask = np.asarray(Image.open(tmp_path / line["mask_merged"]))
        assert mask.ndim == 2 and mask.shape == (image.height, image.width)
        assert set(np.unique(mask).tolist()) == {0, 255}
    doc = json.loads(fake["items"].read_text())
    assert isinstance(doc["dataset"], str) and doc["count"] == len(doc["items"]) == 3
    for item in doc["items"]:
        assert {"id", "image", "mask", "prompt"} <= set(item) and item["concept"] in fakes.CONVERSEG_CONCEPTS
        assert (fake["items"].parent / item["image"]).is_file() and (fake["items"].parent / item["mask"]).is_file()
