"""W&B in offline mode: the study's runs write metrics, config, the table and figures locally."""

from __future__ import annotations

import json

from tests.helpers import run_script


def test_study_logs_metrics_config_table_and_grid_offline(tmp_path):
    out = tmp_path / "study"
    proc = run_script(["scripts/weak_label_study.py", "--kinds", "points", "full", "--epochs", "1",
                       "--image_size", "64", "--grid_images", "2", "--logger", "wandb_offline",
                       "--limit_train_batches", "2", "--output_dir", str(out)],
                      env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert "[study] points: test mIoU" in proc.stdout
    # Study outputs.
    for name in ("results.csv", "results.md", "cost_effectiveness.png", "qualitative_grid.png", "weak_labels.json"):
        assert (out / name).is_file(), name
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"supervision", "mIoU", "IoU/background", "IoU/pet", "pixel_acc", "effort"} <= set(header)

    runs = sorted((out / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # one run per kind + the summary run
    records = {r: next(r.glob("run-*.wandb")).read_bytes() for r in runs}
    # wandb 0.31 keeps an offline run's config and history as protobuf records in run-<id>.wandb
    # (strings stored verbatim); `wandb sync` uploads exactly these.
    per_kind = [r for r, data in records.items() if b"WeakLabelUNet" in data]
    assert len(per_kind) == 2
    for run in per_kind:
        data = records[run]
        for key in (b"val/mIoU", b"val/IoU/pet", b"train/loss_epoch", b"OxfordPetDataModule", b"supervision"):
            assert key in data, (run.name, key)
        masks = list((run / "files" / "media" / "images").rglob("*.png"))
        assert masks, "validation overlays (image + GT/prediction masks) were not logged"
    summary_run = next(r for r in runs if r not in per_kind)
    tables = list((summary_run / "files" / "media" / "table").rglob("*.table.json"))
    assert tables and json.loads(tables[0].read_text())["columns"][0] == "supervision"
    images = [p.name for p in (summary_run / "files" / "media" / "images").rglob("*.png")]
    assert any("qualitative_grid" in n for n in images) and any("cost_effectiveness" in n for n in images)
