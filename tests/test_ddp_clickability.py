"""Clickability metrics (KS, PL1, WD, NSS, PDE per model and dataset) are exact under 2-process DDP:
the same results table as one process, on a split whose size is not a multiple of the world size."""

from __future__ import annotations

import csv

import pytest

from tests.helpers import REPO, run_script
from tests.test_recipes import rclicks_args

pytestmark = pytest.mark.slow  # two evaluate.py processes, one of them 2-rank DDP (~45 s); CI runs it


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_two_process_clickability_evaluation_equals_one_process(tmp_path):
    recipe = REPO / "configs/rclicks/train_clickability.yaml"
    # 5 fake GrabCut images with synthetic clicks, 3 val stems = the test split: ranks get 2 and 1 (unpadded)
    args = rclicks_args(recipe, tmp_path, n=5, val_fraction=0.6)
    val_list = args[args.index("--data.init_args.val_list") + 1]
    assert len(open(val_list).read().split()) % 2 == 1
    common = ["evaluate.py", "--config", str(recipe), *args, "--split", "test", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path / "run")]
    run_script([*common, "--output_dir", str(tmp_path / "one")])
    run_script([*common, "--output_dir", str(tmp_path / "two"), "--trainer.strategy", "ddp", "--trainer.devices", "2",
                "--trainer.accelerator", "cpu"])
    one, two = _rows(tmp_path / "one" / "results.csv"), _rows(tmp_path / "two" / "results.csv")
    assert one and one == two
    per_stem = _rows(tmp_path / "one" / "results_per_stem.csv")
    assert per_stem and _rows(tmp_path / "two" / "results_per_stem.csv") == per_stem
