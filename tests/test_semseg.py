"""SemSeg's LightningModule: COCO results rows, lr scaling, evaluate.py (tables, results file,
--detections rescoring), the known-class check and a 2-process DDP evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer

import evaluate
from datamodules.semseg import SemSegDataModule
from lit_modules.semseg import SemSeg, zoo_rows
from litseg.io import ConfigError
from litseg.metrics.open_set import evaluate_open_set
from tests.helpers import REPO, WriteOnRankZero

DEMO = str(REPO / "configs/semseg/coco128_demo.yaml")
KNOWN = [1, 3, 5, 7, 44, 64, 72]
TINY = {"num_known": 7, "backbone_name": "resnet18", "min_size": [128], "max_size": 192}

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def sample_dm(**kw) -> SemSegDataModule:
    args = {"root": str(REPO / "sample_data/coco128_sample"), "train_json": "annotations/instances.json",
            "train_images": "train2017", "known_ids": KNOWN, "batch_size": 2} | kw
    return SemSegDataModule(**args)


def test_detections_become_coco_rows_with_known_ids_and_unknown_1000():
    torch.manual_seed(0)
    m = SemSeg(**TINY)
    m.known_ids = KNOWN
    masks = torch.zeros(2, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    out = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 8.0, 6.0]]), "scores": torch.tensor([0.8, 0.4]),
           "labels": torch.tensor([-1, 3]), "masks": masks}
    rows = m.to_coco_rows(out, image_id=42)
    assert [r["category_id"] for r in rows] == [1000, 7]
    assert rows[0]["bbox"] == [2.0, 1.0, 3.0, 2.0] and rows[0]["image_id"] == 42
    from pycocotools import mask as mask_utils

    assert mask_utils.area(rows[0]["segmentation"]) == 6 and mask_utils.area(rows[1]["segmentation"]) == 0


def test_lr_scales_with_the_global_batch(tmp_path):
    m = SemSeg(**TINY, lr=0.005, base_batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=4, logger=False,
                      default_root_dir=str(tmp_path), max_steps=1)
    dm = sample_dm(batch_size=2)
    trainer.strategy.connect(m)
    m.trainer = trainer
    trainer.datamodule = dm
    groups = m.param_groups()
    assert groups[0]["lr_scale"] == 2 * 4 / 4  # 2 images x 1 rank x 4 accumulated / 4
    opt = m.configure_optimizers()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_num_known_must_match_the_known_class_list(tmp_path):
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="num_known.*7 classes"):
        trainer.validate(SemSeg(**(TINY | {"num_known": 5})), datamodule=sample_dm())


def _perfect_detections(gt: dict, known_label_for_unknown: int | None = None) -> list[dict]:
    from litseg.readers.coco import CocoInstances

    coco = CocoInstances.from_dict(gt, "gt.json", check_files=False)
    rows = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        image = coco.images[ann["image_id"]]
        from litseg.readers.coco import decode_segmentation, encode_mask

        cat = ann["category_id"]
        if cat == 1000 and known_label_for_unknown is not None:
            cat = known_label_for_unknown
        rows.append({"image_id": ann["image_id"], "category_id": cat, "score": 0.9, "bbox": ann["bbox"],
                     "segmentation": encode_mask(decode_segmentation(ann["segmentation"], image.height, image.width))})
    return rows


def test_evaluate_detections_rescores_a_results_file_without_a_model(tmp_path):
    dm = sample_dm()
    dm.setup("test")
    gt = dm.eval_gt("test")
    n_unknown = sum(1 for a in gt["annotations"] if a["category_id"] == 1000 and not a["iscrowd"])
    assert n_unknown > 0
    for name, known_for_unknown in (("perfect", None), ("confused", 1)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_perfect_detections(gt, known_for_unknown)))
        rows = evaluate.evaluate(["--config", DEMO, "--detections", str(path), "--output_dir", str(tmp_path / name),
                                  "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
        segm = next(r for r in rows if r["iou_type"] == "segm")
        if name == "perfect":
            assert segm["AP_k"] == pytest.approx(100.0)
            assert segm["AR_unk@100"] == pytest.approx(100.0) and segm["AOSE"] == 0
        else:  # every unknown object detected as "person": one open-set error each, and person FPs
            assert segm["AOSE"] == n_unknown and segm["AR_unk@100"] == 0.0 and segm["AP_k"] < 100.0
        assert (tmp_path / name / "results.md").read_text().startswith("| iou_type | AOSE | AP_k")


def test_evaluate_detections_rejects_a_file_of_another_split(tmp_path):
    from litseg.io import DataError

    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"image_id": 999999, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(DataError, match="image id"):
        evaluate.evaluate(["--config", DEMO, "--detections", str(path), "--output_dir", str(tmp_path / "o"),
                           "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])


def test_zoo_rows_put_aose_as_a_count_and_the_rest_in_percent():
    rows = zoo_rows({"segm/AOSE": 12.0, "segm/AP_k": 0.301, "segm/AR_unk@10": 0.117}, ["segm"])
    assert rows[0]["AOSE"] == 12 and rows[0]["AP_k"] == pytest.approx(30.1)
    assert rows[0]["AR_unk@10"] == pytest.approx(11.7)


def test_test_loop_writes_results_and_a_results_file_that_rescores_the_same(tmp_path):
    torch.manual_seed(0)
    m = SemSeg(**TINY)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      default_root_dir=str(tmp_path))
    dm = sample_dm()
    trainer.test(m, datamodule=dm)
    m.write_evaluation(tmp_path / "out")
    detections = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= set(KNOWN) | {1000}
    rescored = evaluate_open_set(dm.eval_gt("test"), detections, KNOWN)
    for row in m.evaluation_rows:
        for col in ("AP_k", "AR_unk@100"):
            assert row[col] == pytest.approx(100 * rescored[f"{row['iou_type']}/{col}"], nan_ok=True)
    assert (tmp_path / "out" / "prototype_distance.csv").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").glob("*.png"))


def test_two_process_ddp_evaluation_equals_one_process(tmp_path):
    torch.manual_seed(0)
    single = SemSeg(**TINY)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            default_root_dir=str(tmp_path)).test(single, datamodule=sample_dm())
    single.write_evaluation(tmp_path / "single")
    ddp = SemSeg(**TINY)
    ddp.load_state_dict(state)
    Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
            default_root_dir=str(tmp_path), callbacks=[WriteOnRankZero(tmp_path / "ddp")]).test(
        ddp, datamodule=sample_dm())
    assert (tmp_path / "ddp" / "results.csv").read_text() == (tmp_path / "single" / "results.csv").read_text()
    single_rows = json.loads((tmp_path / "single" / "coco_instances_results.json").read_text())
    ddp_rows = json.loads((tmp_path / "ddp" / "coco_instances_results.json").read_text())
    assert len(ddp_rows) == len(single_rows) and [r["image_id"] for r in ddp_rows] == [r["image_id"]
                                                                                      for r in single_rows]
