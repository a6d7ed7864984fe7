"""evaluate.py: results table from a checkpoint, and predicted label maps named by stem."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from PIL import Image

import evaluate
from lit_modules.weak_unet import WeakLabelUNet
from litseg.readers.oxford_pet import scan_pets, split_stems
from tests.helpers import REPO, TINY_PET


def test_evaluate_writes_results_and_predictions_at_original_size(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": WeakLabelUNet(num_classes=2, supervision=["full"]).state_dict()}, ckpt)
    rows = evaluate.evaluate(["--config", str(REPO / "configs/weak_unet/full.yaml"), *TINY_PET,
                              "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                              "--trainer.default_root_dir", str(tmp_path),
                              "--output_dir", str(tmp_path / "out"), "--save_predictions", str(tmp_path / "pred")])
    assert rows[0]["supervision"] == "full" and 0.0 <= rows[0]["mIoU"] <= 1.0
    assert (tmp_path / "out" / "results.csv").read_text().startswith("supervision,")
    # The config that produced these results sits beside them (the run root's copy is shared by evaluations).
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["ckpt_path"] == str(ckpt) and saved["model"]["class_path"].endswith("WeakLabelUNet")
    assert saved["output_dir"] == str(tmp_path / "out")
    preds = sorted((tmp_path / "pred").glob("*.png"))
    pet_root = REPO / "sample_data/oxford_pet_subset"
    test_stems = split_stems(scan_pets(pet_root), pet_root, 0.2, 0.2, seed=0)["test"]
    assert [p.stem for p in preds] == sorted(test_stems)  # one label map per test image, named by stem
    for p in preds:
        label = np.asarray(Image.open(p))
        image = Image.open(REPO / "sample_data/oxford_pet_subset/images" / f"{p.stem}.jpg")
        assert label.shape == (image.height, image.width)
        assert set(np.unique(label).tolist()) <= {0, 1}
