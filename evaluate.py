"""Evaluate a method on a split and write its results table (and optionally its predictions).

    python evaluate.py --config configs/weak_unet/points.yaml --ckpt_path runs/.../best.ckpt \
        [--split test|val] [--output_dir results/points] [--save_predictions results/points/pred]

The model, data and trainer come from the same config files as training (any key can be
overridden, e.g. ``--data.init_args.root PATH``). The checkpoint is loaded weights-only
(``torch.load(weights_only=True)``). The test loop runs under Lightning (progress bar, DDP,
loggers); the method then writes its tables / plots into ``--output_dir``; with a
``WandbLogger`` the results table is logged to the run as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from callbacks.run_config import write_config
from litseg.checkpoint import load_weights
from litseg.cli import LitSegCLI, run_cli
from litseg.io import ConfigError, markdown_table, write_png, write_table


class EvaluateCLI(LitSegCLI):
    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to evaluate (weights only); methods without weights need none")
        parser.add_argument("--split", type=Literal["val", "test"], default="test")
        parser.add_argument("--output_dir", type=str, default="results", help="where tables and plots go")
        parser.add_argument("--save_predictions", type=str | None, default=None,
                            help="also write predicted label maps as <stem>.png into this folder")
        parser.add_argument("--detections", type=str | None, default=None,
                            help="score this COCO results file (any method's) on the split's ground truth "
                                 "instead of running the model (methods with score_detections: SemSeg)")


def evaluate(args: list[str] | None = None) -> list[dict[str, Any]]:
    cli = EvaluateCLI(args=args, run=False)
    cfg, model, dm, trainer = cli.config, cli.model, cli.datamodule, cli.trainer
    if cfg.detections:
        return score_detections(cli, Path(cfg.detections))
    if cfg.ckpt_path:  # already loaded and checked against the config by the CLI, before building anything
        load_weights(model, cfg.ckpt_path, key="state_dict", checkpoint=cli.checkpoint)
    if cfg.split == "val":
        # Run the validation split through the test loop so the method's test hooks fill its results
        # (set up here: Lightning's test stage would only prepare the test split).
        dm.trainer = trainer
        dm.setup("validate")
        dm.test_dataloader = dm.val_dataloader
        dm.predict_dataloader = dm.val_dataloader
    resume_from = getattr(model, "resume_from", None)
    if resume_from is not None:  # methods whose test loop resumes (InteractiveBenchmark): finished images are reused
        resume_from(Path(cfg.output_dir) / "partial")
    trainer.test(model, datamodule=dm)
    output_dir = Path(cfg.output_dir)
    rows: list[dict[str, Any]] = []
    if trainer.is_global_zero:
        rows = model.write_evaluation(output_dir)  # also logs the table and figures to W&B
        # The config beside its results: the run root's config.yaml is rewritten by every evaluation.
        write_config(cli.parser, cfg, output_dir / "config.yaml")
        # Significant digits, as the Markdown files: PDE and similar metrics are ~1e-5.
        print(markdown_table(rows, float_format="{:.4g}"))
    if cfg.save_predictions:
        outputs = trainer.predict(model, datamodule=dm)
        # A method with its own prediction format (SAOM: pred/ + gt/ PNGs and a metadata JSON) writes it.
        writer = getattr(model, "write_predictions", None)
        if writer is not None:
            writer(outputs, Path(cfg.save_predictions), split=cfg.split)
        else:
            save_predictions(outputs, Path(cfg.save_predictions))
    return rows


def score_detections(cli: EvaluateCLI, detections: Path) -> list[dict[str, Any]]:
    """Score an existing results file without a model pass: the data module gives the open-set ground
    truth of the split, the method its metric; the table lands in ``--output_dir`` as usual."""
    cfg, model, dm = cli.config, cli.model, cli.datamodule
    scorer = getattr(model, "score_detections", None)
    if scorer is None:
        raise ConfigError("detections", f"{type(model).__name__} cannot score a detections file", "command line")
    dm.trainer = cli.trainer  # the data check cache lives in the run directory
    rows = scorer(detections, dm, cfg.split)
    output_dir = Path(cfg.output_dir)
    write_table(rows, output_dir / "results.csv", output_dir / "results.md", float_format="{:.1f}")
    write_config(cli.parser, cfg, output_dir / "config.yaml")
    print(markdown_table(rows, float_format="{:.4g}"))
    return rows


def save_predictions(outputs: list[dict[str, Any]], folder: Path) -> int:
    """Write every ``{"stem": [...], "pred": [H x W uint8, ...]}`` batch as ``<stem>.png``."""
    count = 0
    for batch in outputs:
        for stem, pred in zip(batch["stem"], batch["pred"], strict=True):
            write_png(folder / f"{stem}.png", pred.numpy())
            count += 1
    return count


if __name__ == "__main__":
    run_cli(evaluate)
