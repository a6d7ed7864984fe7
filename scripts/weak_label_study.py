"""Run the whole weak-label comparison and write its report.

For every supervision kind (one recipe each in configs/weak_unet/) this trains the same
EffUNet, keeps the checkpoint with the best validation mIoU, evaluates it on the test split,
and then writes into ``--output_dir``:

    results.csv / results.md      mIoU, per-class IoU, pixel accuracy, annotation effort per kind
    cost_effectiveness.png        relative annotation effort (x) vs test mIoU (y), one point per kind
    qualitative_grid.png          Input | Ground truth | one column per kind, fixed seeded test images
    weak_labels.json              the weak labels used (regenerated from the trimaps, seed recorded)

With ``--logger wandb`` or ``wandb_offline`` every kind is its own W&B run (group
``weak-label-study``) and a summary run receives the table and both figures.

    python scripts/weak_label_study.py                      # bundled 26-image sample, CPU, a few minutes
    python scripts/weak_label_study.py --data_root /data/oxford-iiit-pet --epochs 50 \
        --image_size 256 --trainer_preset configs/trainer/gpu.yaml --logger wandb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from callbacks.run_config import run_directory  # noqa: E402
from litseg.checkpoint import load_weights  # noqa: E402
from litseg.cli import LitSegCLI  # noqa: E402
from litseg.imaging import denormalize, overlay  # noqa: E402
from litseg.io import write_table  # noqa: E402
from litseg.plots import image_grid, labelled_scatter  # noqa: E402
from litseg.seeding import item_rng  # noqa: E402
from weak_labels.generate import GeneratorConfig, write_weak_labels  # noqa: E402

KINDS = ("tags", "points", "scribbles", "boxes", "hybrid_tags_points", "points_boxes", "scribbles_boxes",
         "points_scribbles", "full")
# Relative annotation effort per image (weak_labels.md); combinations add their parts. Dense masks
# are not priced in the plan: 25 (five boxes' worth) is an assumption, change it with --effort full=N.
EFFORT = {"tags": 1.0, "points": 2.0, "scribbles": 5.0, "boxes": 5.0, "full": 25.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--data_root", default=str(REPO / "sample_data/oxford_pet_subset"))
    p.add_argument("--output_dir", default="results/weak_label_study")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's max_epochs")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trainer_preset", default=None, help="e.g. configs/trainer/gpu.yaml")
    p.add_argument("--logger", choices=["csv", "wandb", "wandb_offline"], default="csv")
    p.add_argument("--grid_images", type=int, default=4)
    p.add_argument("--effort", nargs="*", default=[], metavar="KIND=VALUE", help="override effort per base kind")
    p.add_argument("--limit_train_batches", type=float, default=None, help="for smoke tests")
    return p.parse_args(argv)


def effort_of(supervision: list[str], effort: dict[str, float]) -> float:
    return float(sum(effort[k] for k in supervision))


def run_kind(kind: str, args: argparse.Namespace, weak_labels: Path, out: Path) -> tuple[dict[str, Any], Any]:
    """Fit one recipe, reload its best checkpoint, test it. Returns (results row, CLI)."""
    cli_args = ["--config", str(REPO / f"configs/weak_unet/{kind}.yaml")]
    if args.trainer_preset:
        cli_args += ["--config", args.trainer_preset]
    if args.logger != "csv":
        cli_args += ["--config", str(REPO / f"configs/logger/{args.logger}.yaml"),
                     "--trainer.logger.init_args.save_dir", str(out / "runs"),
                     "--trainer.logger.init_args.name", kind,
                     "--trainer.logger.init_args.group", "weak-label-study"]
    else:
        cli_args += ["--trainer.logger.init_args.save_dir", str(out / "runs")]
    cli_args += ["--data.init_args.root", args.data_root, "--data.init_args.weak_labels", str(weak_labels),
                 "--data.init_args.seed", str(args.seed), "--seed_everything", str(args.seed),
                 "--trainer.default_root_dir", str(out / "runs" / kind)]
    if args.epochs is not None:
        cli_args += ["--trainer.max_epochs", str(args.epochs)]
    if args.image_size is not None:
        cli_args += ["--data.init_args.image_size", str(args.image_size)]
    if args.limit_train_batches is not None:
        cli_args += ["--trainer.limit_train_batches", str(args.limit_train_batches)]
    cli = LitSegCLI(args=cli_args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    ckpt = cli.trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best:
        load_weights(cli.model, best, key="state_dict")
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    row = dict(cli.model.evaluation_rows[0])
    row["effort"] = effort_of(cli.model.supervision, args.effort_table)
    row["best_val_mIoU"] = float(ckpt.best_model_score) if best and ckpt.best_model_score is not None else None
    row["fit_seconds"] = round(fit_seconds, 1)
    row["run_dir"] = str(run_directory(cli.trainer))
    if isinstance(cli.trainer.logger, WandbLogger):
        cli.trainer.logger.experiment.finish()  # else the next kind would log into this run
    return row, cli


@torch.no_grad()
def predict_images(cli: Any, indices: list[int]) -> list[np.ndarray]:
    model = cli.model.eval()
    ds = cli.datamodule.datasets["test"]
    return [model(ds[i]["image"][None])[0].argmax(0).numpy() for i in indices]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    args.effort_table = dict(EFFORT)
    for item in args.effort:
        key, _, value = item.partition("=")
        if key not in EFFORT:
            raise SystemExit(f"--effort: unknown kind '{key}' (known: {sorted(EFFORT)})")
        args.effort_table[key] = float(value)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    weak_labels = out / "weak_labels.json"
    write_weak_labels(args.data_root, weak_labels, GeneratorConfig(seed=args.seed))

    rows, grid_columns, titles = [], [], ["Input", "Ground truth"]
    grid_inputs: list[np.ndarray] = []
    for kind in args.kinds:
        row, cli = run_kind(kind, args, weak_labels, out)
        rows.append(row)
        ds = cli.datamodule.datasets["test"]
        if not grid_inputs:
            rng = item_rng(args.seed, "qualitative-grid")
            grid_idx = sorted(rng.choice(len(ds), size=min(args.grid_images, len(ds)), replace=False).tolist())
            for i in grid_idx:
                sample = ds[i]
                image = denormalize(sample["image"])
                grid_inputs.append(image)
                grid_columns.append([image, overlay(image, sample["mask"].numpy())])
        preds = predict_images(cli, grid_idx)
        for r, pred in enumerate(preds):
            grid_columns[r].append(overlay(grid_inputs[r], pred))
        titles.append(row["supervision"])
        print(f"[study] {kind}: test mIoU {row['mIoU']:.4f} (effort {row['effort']})", flush=True)

    write_table(rows, out / "results.csv", out / "results.md")
    labelled_scatter({r["supervision"]: (r["effort"], r["mIoU"]) for r in rows}, out / "cost_effectiveness.png",
                     xlabel="relative annotation effort per image", ylabel="test mIoU",
                     title="Weak-label UNet: cost-effectiveness")
    image_grid(grid_columns, titles, out / "qualitative_grid.png")
    if args.logger != "csv":
        log_summary_to_wandb(rows, out, offline=args.logger == "wandb_offline")
    print((out / "results.md").read_text())
    return rows


def log_summary_to_wandb(rows: list[dict[str, Any]], out: Path, offline: bool) -> None:
    import wandb

    run = wandb.init(project="litseg", group="weak-label-study", name="weak-label-study-summary",
                     job_type="report", dir=str(out / "runs"), mode="offline" if offline else None)
    columns = list(rows[0])
    run.log({
        "study/results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows]),
        "study/cost_effectiveness": wandb.Image(str(out / "cost_effectiveness.png")),
        "study/qualitative_grid": wandb.Image(str(out / "qualitative_grid.png")),
    })
    run.finish()


if __name__ == "__main__":
    main()
