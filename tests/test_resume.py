"""A crashed run resumed from last.ckpt ends exactly where an uninterrupted run ends, in the same directory."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import RunCheckpoint
from litseg.cli import LitSegCLI
from tests.helpers import REPO, TINY_PET


class _EarlyBest(BoringModel):
    """Its monitored score is best at epoch 0 and worse every epoch after."""

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("score", -float(self.current_epoch))
        return out


def _last_epoch(callback_cls, tmp_path) -> int:
    ckpt = callback_cls(dirpath=tmp_path, monitor="score", mode="max", save_last=True)
    trainer = Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[ckpt], logger=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_EarlyBest())
    assert ckpt.best_model_path.endswith("epoch=0-step=2.ckpt")
    return torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"]


def test_last_checkpoint_holds_the_latest_epoch_even_when_the_best_was_early(tmp_path):
    # Lightning's ModelCheckpoint rewrites last.ckpt only when the monitor improves: it still holds epoch 0.
    assert _last_epoch(ModelCheckpoint, tmp_path / "stock") == 0
    assert _last_epoch(RunCheckpoint, tmp_path / "ours") == 3


class CrashAtEpoch(Callback):
    """A job dying in the middle of ``epoch``: raises (``kill=False``) or SIGKILLs its own process."""

    def __init__(self, epoch: int, kill: bool = False) -> None:
        self.epoch, self.kill = epoch, kill

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            if self.kill:  # no teardown, no logger flush: what a node failure or `kill -9` leaves behind
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


def _fit(tmp_path, name, crash_at=None, ckpt_path=None, kill=False):
    callbacks = [{"class_path": "callbacks.RunCheckpoint",
                  "init_args": {"monitor": "val/mIoU", "mode": "max", "filename": "best-epoch{epoch:02d}",
                                "auto_insert_metric_name": False}}]
    if crash_at is not None:
        callbacks.append({"class_path": "tests.test_resume.CrashAtEpoch", "init_args": {"epoch": crash_at,
                                                                                       "kill": kill}})
    extra = tmp_path / f"{name}-{crash_at}-{bool(ckpt_path)}.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    args = ["fit", "--config", str(REPO / "configs/weak_unet/full.yaml"), "--config", str(extra), *TINY_PET,
            "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", name,
            "--trainer.default_root_dir", str(tmp_path / name)]
    if ckpt_path:
        args += ["--ckpt_path", str(ckpt_path)]
    if kill:  # in its own process, which SIGKILLs itself
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True,
                              env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=600)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        return None
    return LitSegCLI(args=args)


def _metrics(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_run_killed_mid_epoch_then_resumed_equals_the_uninterrupted_run(tmp_path):
    straight = _fit(tmp_path, "straight")
    _fit(tmp_path, "crashed", crash_at=2, kill=True)  # killed in the middle of epoch 2
    run_dir = tmp_path / "crashed" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the latest completed epoch, whatever the best was

    resumed = _fit(tmp_path, "crashed", ckpt_path=last)
    # Same run directory: no version_1, Lightning keeps the best-model state it had.
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == ["version_0"]
    assert resumed.trainer.log_dir == str(run_dir)
    a, b = straight.trainer.checkpoint_callback, resumed.trainer.checkpoint_callback
    assert a.best_model_path.rsplit("/", 1)[-1] == b.best_model_path.rsplit("/", 1)[-1]
    assert b.best_model_path.startswith(str(run_dir))
    assert a.best_model_score.item() == b.best_model_score.item()
    assert resumed.trainer.global_step == straight.trainer.global_step == 12
    for (name, x), (_, y) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    # The run's metrics.csv holds every epoch once, equal to the uninterrupted run's.
    assert _metrics(run_dir) == _metrics(tmp_path / "straight" / "version_0")
    # The best checkpoint tests the same.
    results = [cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
               for cli in (straight, resumed)]
    assert results[0] == results[1]


def test_wandb_run_resumes_in_its_own_folder_and_keeps_the_best_score(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["--config", str(REPO / "configs/logger/wandb_offline.yaml"), "--trainer.logger.init_args.save_dir",
              str(tmp_path)]

    def fit(crash_at=None, ckpt_path=None):
        callbacks = [{"class_path": "callbacks.RunCheckpoint", "init_args": {"monitor": "val/mIoU", "mode": "max"}}]
        if crash_at is not None:
            callbacks.append({"class_path": "tests.test_resume.CrashAtEpoch", "init_args": {"epoch": crash_at}})
        extra = tmp_path / f"cb-{crash_at}.yaml"
        extra.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        args = ["fit", "--config", str(REPO / "configs/weak_unet/full.yaml"), *common, "--config", str(extra),
                *TINY_PET, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path)]
        return LitSegCLI(args=[*args, "--ckpt_path", str(ckpt_path)] if ckpt_path else args)

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crash_at=2)
    runs = [p for p in (tmp_path / "litseg").iterdir() if p.is_dir()]
    assert len(runs) == 1
    last = runs[0] / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["callbacks"]
    best_before = next(v for k, v in saved.items() if k.startswith("RunCheckpoint"))["best_model_score"]
    resumed = fit(ckpt_path=last)
    assert [p for p in (tmp_path / "litseg").iterdir() if p.is_dir()] == runs  # same W&B run id, same folder
    assert resumed.trainer.logger.version == runs[0].name
    assert resumed.trainer.checkpoint_callback.best_model_score.item() >= best_before.item()
    assert resumed.trainer.checkpoint_callback.dirpath == str(runs[0] / "checkpoints")
