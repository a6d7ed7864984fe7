"""Clickability metrics (KS, PL1, WD, NSS, PDE per model and dataset) are exact under 2-process DDP:
the same results table as one process, on a split whose size is not a multiple of the world size."""

from __future__ import annotations

import csv

import pytest

from tests import fakes
from tests.helpers import REPO, run_script

pytestmark = pytest.mark.slow  # two evaluate.py processes, one of them 2-rank DDP (~45 s); CI runs it


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_two_process_clickability_evaluation_equals_one_process(tmp_path):
    recipe = REPO / "configs/rclicks/train_clickability.yaml"
    # 5 fake GrabCut images with synthetic clicks, 3 val stems = the test split: ranks get 2 and 1 (unpadded)
    fakes.tiny_ritm(tmp_path / "data", "GrabCut", n=5, size=(48, 56))
    c = fakes.write_synthetic_clicks(tmp_path / "data", "GrabCut", tmp_path / "clicks", clicks_per_stem=3,
                                     val_fraction=0.6)
    val = c["val_list"].read_text().split()
    assert len(val) % 2 == 1
    args = ["--data.init_args.root", str(tmp_path / "data"), "--data.init_args.clicks", str(c["clicks"]),
            "--data.init_args.previous_masks", str(c["previous_masks"]),
            "--data.init_args.train_list", str(c["train_list"]), "--data.init_args.val_list", str(c["val_list"]),
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "2", "--data.init_args.input_size", "64",
            "--model.init_args.decoder_channels", "16", "--model.init_args.pretrained", "false",
            "--model.init_args.eval_draws", "2"]
    common = ["evaluate.py", "--config", str(recipe), *args, "--split", "test", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path / "run")]
    run_script([*common, "--output_dir", str(tmp_path / "one")])
    run_script([*common, "--output_dir", str(tmp_path / "two"), "--trainer.strategy", "ddp", "--trainer.devices", "2",
                "--trainer.accelerator", "cpu"])
    one, two = _rows(tmp_path / "one" / "results.csv"), _rows(tmp_path / "two" / "results.csv")
    assert one and one == two
    per_stem = _rows(tmp_path / "one" / "results_per_stem.csv")
    assert per_stem and _rows(tmp_path / "two" / "results_per_stem.csv") == per_stem
