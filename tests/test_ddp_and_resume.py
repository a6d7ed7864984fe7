"""Multi-process evaluation counts each sample once; resuming gives the same run as not stopping."""

from __future__ import annotations

import csv

import torch

from litseg.cli import LitSegCLI
from tests.helpers import REPO, TINY_PET, run_script


def _results(path) -> dict[str, float]:
    with open(path) as fh:
        row = next(csv.DictReader(fh))
    return {k: float(v) for k, v in row.items() if k != "supervision"}


def test_two_process_ddp_fit_then_validation_equals_single_process(tmp_path):
    # Train under plain 2-process DDP (every trained parameter must reach the loss, or DDP fails at
    # the second step), then evaluate its checkpoint with one and with two processes.
    run_script(["train.py", "fit", "--config", "configs/weak_unet/points.yaml", *TINY_PET,
                "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.name", "ddp"])
    ckpt = tmp_path / "ddp" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    common = ["evaluate.py", "--config", "configs/weak_unet/points.yaml", "--ckpt_path", str(ckpt),
              "--split", "val", *TINY_PET, "--data.init_args.batch_size", "2", "--trainer.logger", "false"]
    run_script([*common, "--output_dir", str(tmp_path / "one")])
    # The val split has 5 images: ranks get 3 and 2 with the unpadded sampler (padding would repeat one).
    run_script([*common, "--output_dir", str(tmp_path / "two"), "--trainer.strategy", "ddp",
                "--trainer.devices", "2", "--trainer.accelerator", "cpu"])
    one, two = _results(tmp_path / "one/results.csv"), _results(tmp_path / "two/results.csv")
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == one[key], key


def _fit(tmp_path, name, epochs, ckpt_path=None):
    cli = LitSegCLI(run=False, args=[
        "--config", str(REPO / "configs/weak_unet/full.yaml"), *TINY_PET, "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", "2", "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.name", name, "--trainer.default_root_dir", str(tmp_path / name)])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return cli


def test_resume_from_last_checkpoint_matches_uninterrupted_run(tmp_path):
    straight = _fit(tmp_path, "straight", 2)
    first = _fit(tmp_path, "first", 1)
    last_ckpt = first.trainer.checkpoint_callback.last_model_path
    assert last_ckpt.endswith("last.ckpt")
    resumed = _fit(tmp_path, "resumed", 2, ckpt_path=last_ckpt)
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == straight.trainer.global_step == 4
    for key in ("val/mIoU", "val/pixel_acc", "train/loss_epoch"):
        assert resumed.trainer.callback_metrics[key].item() == straight.trainer.callback_metrics[key].item(), key
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
