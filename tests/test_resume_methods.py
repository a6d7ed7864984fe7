"""Every training method survives ``kill -9``: a fit SIGKILLed in the middle of its second epoch and
resumed from ``last.ckpt`` ends with the same weights, metrics.csv and best checkpoint as an
uninterrupted run of the same config and seed (CPU, exact), in the same run directory.

Each method runs its own recipe through the real CLI with the tiny settings of tests/test_recipes.py
(tiny models, bundled or fake data), 3 epochs of 2 batches. Marked slow (about 3 minutes on 2 cores):
``pytest -m slow tests/test_resume_methods.py``; CI runs it in its second stage.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from litseg.cli import LitSegCLI, read_recipe
from tests.helpers import REPO
from tests.test_recipes import converseg_args, rclicks_args, saom_args, semseg_args, weak_unet_args

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RECIPES = {
    "weak_unet/points.yaml": weak_unet_args,
    "rclicks/train_clickability.yaml": rclicks_args,
    "saom/demo.yaml": saom_args,
    "semseg/coco128_demo.yaml": semseg_args,
    "converseg/tiny_demo.yaml": converseg_args,
}
# fast_dev_run off: whole (short) epochs with validation and checkpoints
RUN = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--trainer.accelerator", "cpu", "--trainer.devices", "1",
    "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
    "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0"]


def _args(recipe: str, tmp_path: Path, name: str, data_args: list[str], crash: bool) -> list[str]:
    callbacks = list(read_recipe(REPO / "configs" / recipe)["trainer"].get("callbacks") or [])
    if crash:
        callbacks.append({"class_path": "tests.test_resume.CrashAtEpoch", "init_args": {"epoch": 1, "kill": True}})
    extra = tmp_path / f"{name}-{crash}.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks,
                                                 "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                            "init_args": {"save_dir": str(tmp_path), "name": name}}}}))
    return ["fit", "--config", str(REPO / "configs" / recipe), "--config", str(extra), *RUN,
            "--trainer.default_root_dir", str(tmp_path / name), *data_args]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("recipe", list(RECIPES), ids=[r.split("/")[0] for r in RECIPES])
def test_killed_then_resumed_equals_uninterrupted(recipe, tmp_path):
    data_args = RECIPES[recipe](REPO / "configs" / recipe, tmp_path)
    straight = LitSegCLI(args=_args(recipe, tmp_path, "straight", data_args, crash=False))

    proc = subprocess.run([sys.executable, "train.py", *_args(recipe, tmp_path, "crashed", data_args, crash=True)],
                          cwd=REPO, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)},
                          timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = tmp_path / "crashed" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True, map_location="cpu")["epoch"] == 0  # the completed epoch

    resumed = LitSegCLI(args=[*_args(recipe, tmp_path, "crashed", data_args, crash=False), "--ckpt_path", str(last)])
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["version_0"]
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert _metrics(run_dir) == _metrics(tmp_path / "straight" / "version_0")
    a, b = straight.trainer.checkpoint_callback, resumed.trainer.checkpoint_callback
    assert Path(a.best_model_path).name == Path(b.best_model_path).name
