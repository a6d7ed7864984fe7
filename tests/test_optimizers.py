"""Optimiser and schedule injection: recipes keep their numbers, new recipes are expressible in YAML."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer

from lit_modules import ClickabilityModel, InteractiveBenchmark, LitSegModule, WeakLabelUNet
from litseg.cli import LitSegCLI, check_checkpoint_matches_config, read_recipe
from litseg.io import DataError
from litseg.schedules import WarmupCosine, WarmupMultiStep, no_decay_param_groups
from tests.helpers import REPO, RecordingWandbLogger

POINTS = REPO / "configs/weak_unet/points.yaml"
CLICKABILITY = REPO / "configs/rclicks/train_clickability.yaml"


def hand_warmup_cosine(peak: float, total: int, warmup: int, floor: float = 0.0) -> list[float]:
    """The RClicks / ConverSeg schedule written out: linear (s+1)/W, then cosine from 1 to floor."""
    lrs = []
    for s in range(total):
        if s < warmup:
            lrs.append(peak * (s + 1) / warmup)
        else:
            cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))
            lrs.append(peak * (floor + (1 - floor) * cos))
    return lrs


def stepped_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, steps: int, group: int = 0) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def attach(model: LitSegModule, **trainer_kwargs: Any) -> LitSegModule:
    trainer_kwargs = {"max_epochs": -1, "logger": False, "enable_checkpointing": False,
                      "enable_progress_bar": False, "enable_model_summary": False} | trainer_kwargs
    model.trainer = Trainer(accelerator="cpu", devices=1, **trainer_kwargs)
    return model


def cli(*configs: Path | str, extra: tuple[str, ...] = ()) -> LitSegCLI:
    args = [a for c in configs for a in ("--config", str(c))]
    return LitSegCLI(run=False, args=[*args, "--trainer.logger", "false", "--trainer.callbacks", "[]",
                                      "--trainer.default_root_dir", tempfile.mkdtemp(), *extra])


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("total", "fraction"), [(50, 0.1), (37, 0.25), (4, 0.1), (10, 0.0)])
def test_warmup_cosine_is_the_hand_formula(total, fraction):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.01)
    lrs = stepped_lrs(opt, WarmupCosine(opt, total_steps=total, warmup_fraction=fraction), total)
    assert lrs == pytest.approx(hand_warmup_cosine(0.01, total, int(fraction * total)), rel=1e-12, abs=1e-15)


def test_warmup_cosine_values_recorded_before_the_change():
    # The old base class (LambdaLR over warmup_cosine_factor, 4 steps, warm-up int(0.1 * 4) = 0) gave these.
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.01)
    lrs = stepped_lrs(opt, WarmupCosine(opt, total_steps=4, warmup_fraction=0.1), 4)
    assert lrs == [0.01, 0.008535533905932738, 0.005, 0.0014644660940672626]
    opt = torch.optim.Adam([param], lr=0.01)
    assert stepped_lrs(opt, WarmupCosine(opt, total_steps=50, warmup_fraction=0.1), 6) == pytest.approx(
        [0.002, 0.004, 0.006, 0.008, 0.01, 0.01], rel=1e-12)


def test_warmup_steps_and_floor():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    lrs = stepped_lrs(opt, WarmupCosine(opt, total_steps=20, warmup_steps=5, floor=0.1), 20)
    assert lrs == pytest.approx(hand_warmup_cosine(1e-3, 20, 5, floor=0.1), rel=1e-12)
    assert lrs[-1] > 1e-4  # the floor: 10 % of the peak at the end
    with pytest.raises(ValueError, match="not both"):
        WarmupCosine(opt, total_steps=20, warmup_steps=5, warmup_fraction=0.1)
    with pytest.raises(ValueError, match="total_steps is not set"):
        WarmupCosine(opt)


# ----------------------------------------------------------------------------- recipes keep their numbers
class _LrRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_points_recipe_keeps_adamw_at_a_constant_lr():
    c = cli(POINTS)
    opt = attach(c.model, max_steps=10).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)  # no scheduler: the optimiser alone, as before
    (group,) = opt.param_groups
    assert (group["lr"], group["weight_decay"], group["eps"], group["betas"]) == (0.003, 1e-4, 1e-8, (0.9, 0.999))
    n_trainable = sum(1 for p in c.model.parameters() if p.requires_grad)
    assert len(group["params"]) == n_trainable


def test_clickability_recipe_trains_with_the_recorded_lr_sequence(tmp_path):
    from litseg.rclicks.synthetic_clicks import CSV_NAME, PREVIOUS_MASKS, synthesize

    out = tmp_path / "synthetic"
    synthesize(REPO / "sample_data", "GrabCut", out, clicks_per_stem=5, subsequent=False)
    c = cli(CLICKABILITY, extra=(
        "--data.init_args.clicks", str(out / CSV_NAME), "--data.init_args.previous_masks", str(out / PREVIOUS_MASKS),
        "--data.init_args.train_list", str(out / "synthetic_train.txt"),
        "--data.init_args.val_list", str(out / "synthetic_val.txt"),
        "--data.init_args.input_size", "64", "--data.init_args.batch_size", "1",
        "--model.init_args.decoder_channels", "16", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"))
    recorder = _LrRecorder()
    c.trainer.callbacks.append(recorder)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    opt = c.trainer.optimizers[0]
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 0.0 and opt.defaults["eps"] == 1e-8
    # Recorded with the old `optimizer: adam, scheduler: warmup_cosine, warmup_fraction: 0.1` recipe.
    assert recorder.lrs == [0.01, 0.008535533905932738, 0.005, 0.0014644660940672626]
    assert recorder.lrs == pytest.approx(hand_warmup_cosine(0.01, 4, 0), rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_clickability_defaults_are_rclicks_and_saved_as_config():
    model = ClickabilityModel(decoder_channels=8)
    assert model.hparams.optimizer == {"class_path": "torch.optim.adam.Adam"}
    assert model.hparams.lr_scheduler == {"class_path": "litseg.schedules.WarmupCosine",
                                          "init_args": {"warmup_fraction": 0.1}}
    config = attach(model, max_steps=30).configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = stepped_lrs(config["optimizer"], config["lr_scheduler"]["scheduler"], 30)
    assert lrs == pytest.approx(hand_warmup_cosine(0.01, 30, 3), rel=1e-12)


# ----------------------------------------------------------------------------- the next recipes, in YAML
def _recipe(tmp_path: Path, model_args: dict[str, Any]) -> Path:
    cfg = read_recipe(POINTS)
    cfg["model"]["init_args"] |= model_args
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_semseg_sgd_warmup_and_step_decay_per_step(tmp_path):
    recipe = _recipe(tmp_path, {
        "lr": 0.02, "weight_decay": 1e-4,
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"momentum": 0.9}},
        "lr_scheduler": {"class_path": "litseg.schedules.WarmupMultiStep",
                         "init_args": {"warmup_steps": 4, "milestones": [0.6, 0.8], "gamma": 0.1}},
        "scheduler_interval": "step"})
    c = cli(recipe)
    config = attach(c.model, max_steps=20).configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    assert sched["interval"] == "step" and isinstance(sched["scheduler"], WarmupMultiStep)
    expected = [0.02 * min(1.0, (s + 1) / 4) * 0.1 ** ((s >= 12) + (s >= 16)) for s in range(20)]
    assert stepped_lrs(opt, sched["scheduler"], 20) == pytest.approx(expected, rel=1e-12)


def test_saom_adamw_eps_and_per_epoch_cosine(tmp_path):
    recipe = _recipe(tmp_path, {
        "lr": 1e-4, "weight_decay": 0.1,
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"eps": 1e-4}},
        "lr_scheduler": {"class_path": "litseg.schedules.WarmupCosine"},
        "scheduler_interval": "epoch"})
    c = cli(recipe)
    config = attach(c.model, max_epochs=5).configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]
    assert type(opt) is torch.optim.AdamW and opt.defaults["eps"] == 1e-4
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert sched["interval"] == "epoch" and sched["scheduler"].total_steps == 5  # epochs, not batches
    assert stepped_lrs(opt, sched["scheduler"], 5) == pytest.approx(hand_warmup_cosine(1e-4, 5, 0), rel=1e-12)


# ----------------------------------------------------------------------------- parameter groups
class _Tiny(LitSegModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = no_decay_param_groups(self)
        groups[0]["lr_scale"] = 0.5  # e.g. a LoRA / backbone group at half the lr
        return groups


def test_no_decay_groups_for_norm_layers_and_biases():
    model = _Tiny(lr=0.1, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = no_decay_param_groups(model)
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    assert sorted(names[id(p)] for p in groups[0]["params"]) == ["conv.weight", "head.weight"]
    assert sorted(names[id(p)] for p in groups[1]["params"]) == [
        "bn.bias", "bn.weight", "conv.bias", "head.bias", "norm.bias", "norm.weight"]
    opt = model.configure_optimizers()
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("decay", 0.05, 0.05), ("no_decay", 0.1, 0.0)]


# ----------------------------------------------------------------------------- CLI and checkpoints
def test_top_level_optimizer_is_rejected(capsys):
    # The CLI adds no optimizer / lr_scheduler of its own: they could replace a module's configure_optimizers.
    with pytest.raises(SystemExit):
        LitSegCLI(args=["fit", "--config", str(POINTS), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "optimizer" not in printed and "lr_scheduler" not in printed
    assert printed["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    from jsonargparse import ArgumentError

    with pytest.raises((ArgumentError, SystemExit)):
        LitSegCLI(run=False, args=["--config", str(POINTS), "--optimizer", "torch.optim.SGD"])


def test_checkpoint_check_compares_nested_optimizer_configs(tmp_path):
    recipe = _recipe(tmp_path, {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"eps": 1e-4}}})
    c = cli(recipe)
    ckpt = {"hyper_parameters": dict(c.model.hparams)}
    model_cfg = c.config["model"]
    check_checkpoint_matches_config("x.ckpt", ckpt, model_cfg, [str(recipe)])  # the same config: no error
    other = cli(_recipe(tmp_path, {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"eps": 1e-6}}}))
    differs = r"model\.init_args\.optimizer is .*'eps': 0\.0001.* in the checkpoint but .*'eps': 1e-06"
    with pytest.raises(DataError, match=differs):
        check_checkpoint_matches_config("x.ckpt", ckpt, other.config["model"], ["other.yaml"])


def test_base_loads_init_weights_and_the_benchmark_takes_no_optimiser(tmp_path):
    torch.manual_seed(1)
    source = WeakLabelUNet(num_classes=2, supervision=["points"])
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    torch.manual_seed(2)
    loaded = WeakLabelUNet(num_classes=2, supervision=["points"], init_weights=str(path))
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    import inspect

    assert not {"lr", "optimizer", "lr_scheduler"} & set(inspect.signature(InteractiveBenchmark).parameters)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        InteractiveBenchmark(predictor="grabcut").configure_optimizers()


# ----------------------------------------------------------------------------- W&B report of the clickability model
def test_clickability_write_evaluation_logs_its_table_to_wandb(tmp_path):
    import wandb

    model = ClickabilityModel(decoder_channels=8)
    scores = {"KS": 0.2, "PL1": 0.1, "WD": 3.0, "NSS": 1.5, "PDE": 0.01}
    model.test_rows = [{"model": m, "dataset": "GrabCut", "full_stem": s, "click_type": "first", "clicks": 5} | scores
                       for m in ("Ours", "UD") for s in ("a", "b")]
    model.evaluation_rows = [{"model": "Ours"}]
    logger = RecordingWandbLogger()
    attach(model, logger=logger)
    rows = model.write_evaluation(tmp_path / "eval")
    (logged,) = logger.logged
    table = logged["rclicks/summary"]
    assert isinstance(table, wandb.Table)
    assert table.columns[:3] == ["model", "dataset", "full_stems"] and "KS (ndtest ks2d2s)" in table.columns
    assert [r[0] for r in table.data] == ["Ours", "UD"] and len(rows) == 2
