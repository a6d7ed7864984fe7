"""Every recipe in configs/ resolves through the CLI; bad config values stop with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from litseg.cli import LitSegCLI
from tests.helpers import REPO, run_script

RECIPES = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name not in ("trainer", "logger"))
PRESETS = sorted((REPO / "configs" / "trainer").glob("*.yaml")) + sorted((REPO / "configs" / "logger").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_prints_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LitSegCLI(args=["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert isinstance(printed["seed_everything"], int), "recipes must pin their seed"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_presets_compose_with_a_recipe(preset, capsys):
    with pytest.raises(SystemExit):
        LitSegCLI(args=["fit", "--config", str(REPO / "configs/weak_unet/points.yaml"), "--config", str(preset),
                        "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load(preset.read_text())["trainer"]
    for key, value in expected.items():
        if key == "logger":
            assert printed["trainer"]["logger"]["class_path"] == value["class_path"]
        elif key != "plugins":
            assert printed["trainer"][key] == value, key


def test_any_init_argument_can_be_overridden(capsys):
    with pytest.raises(SystemExit):
        LitSegCLI(args=["fit", "--config", str(REPO / "configs/weak_unet/points.yaml"), "--data.root", "/x/pets",
                        "--model.init_args.lambdas", "{points: 2.5}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["root"] == "/x/pets"
    assert printed["model"]["init_args"]["lambdas"] == {"points": 2.5}


def test_unknown_supervision_kind_is_rejected_with_the_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load((REPO / "configs/weak_unet/points.yaml").read_text())
    cfg["model"]["init_args"]["supervision"] = ["pointz"]
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(AssertionError) as err:
        run_script(["train.py", "fit", "--config", str(bad), "--print_config"])
    message = str(err.value)
    assert "pointz" in message and "supervision" in message
    assert "points" in message and "scribbles" in message  # the allowed values are listed


def test_num_classes_mismatch_with_label_set_is_explained(tmp_path):
    cli = LitSegCLI(run=False, args=["--config", str(REPO / "configs/weak_unet/full.yaml"),
                                     "--data.init_args.label_set", "species", "--trainer.fast_dev_run", "1",
                                     "--trainer.default_root_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="num_classes=2 but the data's label set 'species' has 3 classes"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_config_is_saved_in_the_run_directory_without_secrets(tmp_path):
    cli = LitSegCLI(run=False, args=["--config", str(REPO / "configs/weak_unet/full.yaml"),
                                     "--data.init_args.image_size", "64", "--trainer.max_epochs", "1",
                                     "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                                     "--trainer.logger.init_args.save_dir", str(tmp_path),
                                     "--trainer.enable_progress_bar", "false"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = Path(cli.trainer.log_dir) / "config.yaml"
    assert saved.is_file() and str(tmp_path) in str(saved)
    assert yaml.safe_load(saved.read_text())["model"]["class_path"].endswith("WeakLabelUNet")
