"""Run the whole weak-label comparison and write its report.

For every supervision kind (one recipe each in configs/weak_unet/) this trains the same
EffUNet, keeps the checkpoint with the best validation mIoU, evaluates it on the test split,
and then writes into ``--output_dir``:

    results.csv / results.md      per kind: mean and sample standard deviation (n - 1) over the seeds
                                  of mIoU, per-class IoU, pixel accuracy, ..., the best epoch of every
                                  seed, annotation effort and split sizes
    per_seed.csv                  one row per (kind, seed): the test metrics of that run, its best epoch
                                  (rewritten after every run)
    cost_effectiveness.png        relative annotation effort (x) vs mean test mIoU (y), one point per kind
    qualitative_grid.png          Input | Ground truth | one column per kind, fixed seeded test images
                                  (models of the first seed)
    weak_labels.json              the weak labels used (regenerated from the trimaps, seed recorded)

``--seeds N`` trains every kind with seeds ``seed .. seed + N - 1``: each seed sets
``seed_everything`` (initialisation, augmentation) and the data seed, which also re-draws the
train / val / test split (stratified by species; same sizes). The weak labels are generated once,
with ``--seed``. Every kind sees the same split under the same seed, so differences between
kinds are paired per seed; the standard deviation says which differences are noise.

With ``--logger wandb`` or ``wandb_offline`` every kind is its own W&B run (group
``weak-label-study``) and a summary run receives the table and both figures.

    python scripts/weak_label_study.py                      # bundled 26-image sample, CPU, a few minutes
    python scripts/weak_label_study.py --seeds 3            # the README table: mean +- std over 3 seeds
    python scripts/weak_label_study.py --data_root /data/oxford-iiit-pet --epochs 50 \
        --image_size 256 --trainer_preset configs/trainer/gpu.yaml --logger wandb
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from callbacks.run_config import run_directory  # noqa: E402
from litseg.checkpoint import load_checkpoint, load_weights  # noqa: E402
from litseg.cli import LitSegCLI  # noqa: E402
from litseg.imaging import denormalize, overlay  # noqa: E402
from litseg.io import atomic_path, markdown_table, write_table  # noqa: E402
from litseg.plots import image_grid, labelled_scatter  # noqa: E402
from litseg.seeding import item_rng  # noqa: E402
from litseg.weak_labels.generate import GeneratorConfig, write_weak_labels  # noqa: E402

KINDS = ("tags", "points", "scribbles", "boxes", "hybrid_tags_points", "points_boxes", "scribbles_boxes",
         "points_scribbles", "full")
# Relative annotation effort per image (weak_labels.md); combinations add their parts. Dense masks
# are not priced in the plan: 25 (five boxes' worth) is an assumption, change it with --effort full=N.
EFFORT = {"tags": 1.0, "points": 2.0, "scribbles": 5.0, "boxes": 5.0, "full": 25.0}
# Columns of a per-seed row that describe the run rather than measure it: not averaged.
NOT_AVERAGED = ("supervision", "seed", "effort", "n_train", "n_val", "n_test", "run_dir")
# Per-seed values worth listing next to their mean in the summary (e.g. "best_epochs": "19 28 33").
LISTED = ("best_epoch",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--data_root", default=str(REPO / "sample_data/oxford_pet_subset"))
    p.add_argument("--output_dir", default="results/weak_label_study")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's max_epochs")
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="first seed; also the weak-label generator's seed")
    p.add_argument("--seeds", type=int, default=1,
                   help="train every kind with seeds seed .. seed+N-1 and report mean +- std (sample, n-1)")
    p.add_argument("--trainer_preset", default=None, help="e.g. configs/trainer/gpu.yaml")
    p.add_argument("--logger", choices=["csv", "wandb", "wandb_offline"], default="csv")
    p.add_argument("--grid_images", type=int, default=4)
    p.add_argument("--effort", nargs="*", default=[], metavar="KIND=VALUE", help="override effort per base kind")
    p.add_argument("--limit_train_batches", type=float, default=None, help="for smoke tests")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def effort_of(supervision: list[str], effort: dict[str, float]) -> float:
    return float(sum(effort[k] for k in supervision))


def run_kind(kind: str, args: argparse.Namespace, weak_labels: Path, out: Path,
             seed: int | None = None) -> tuple[dict[str, Any], Any]:
    """Fit one recipe with one seed, reload its best checkpoint, test it. Returns (results row, CLI).

    With several seeds each run gets its own directory (``runs/<kind>/seed<N>``) and W&B run name.
    """
    seed = args.seed if seed is None else seed
    several = getattr(args, "seeds", 1) > 1
    run_name = f"{kind}/seed{seed}" if several else kind
    cli_args = ["--config", str(REPO / f"configs/weak_unet/{kind}.yaml")]
    if args.trainer_preset:
        cli_args += ["--config", args.trainer_preset]
    if args.logger != "csv":
        cli_args += ["--config", str(REPO / f"configs/logger/{args.logger}.yaml"),
                     "--trainer.logger.init_args.save_dir", str(out / "runs"),
                     "--trainer.logger.init_args.name", run_name.replace("/", "-"),
                     "--trainer.logger.init_args.group", "weak-label-study"]
    else:
        cli_args += ["--trainer.logger.init_args.save_dir", str(out / "runs"),
                     "--trainer.logger.init_args.name", run_name]
    cli_args += ["--data.init_args.root", args.data_root, "--data.init_args.weak_labels", str(weak_labels),
                 "--data.init_args.seed", str(seed), "--seed_everything", str(seed),
                 "--trainer.default_root_dir", str(out / "runs" / run_name)]
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
    best_epoch = None
    if best:
        checkpoint = load_checkpoint(best)
        best_epoch = int(checkpoint["epoch"]) if "epoch" in checkpoint else None
        load_weights(cli.model, best, key="state_dict", checkpoint=checkpoint)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    row = dict(cli.model.evaluation_rows[0])
    row["seed"] = seed
    row["effort"] = effort_of(cli.model.supervision, args.effort_table)
    row["best_val_mIoU"] = float(ckpt.best_model_score) if best and ckpt.best_model_score is not None else None
    row["best_epoch"] = best_epoch  # 0-based epoch of the checkpoint tested (best validation mIoU)
    row |= {f"n_{split}": len(stems) for split, stems in cli.datamodule.splits.items()}
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


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and *sample* standard deviation (n - 1 in the denominator) of per-seed values; the
    standard deviation is ``None`` for a single value (undefined, not zero)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def aggregate_seeds(rows: Sequence[dict[str, Any]], key: str = "supervision",
                    not_averaged: Sequence[str] = NOT_AVERAGED, listed: Sequence[str] = LISTED) -> list[dict[str, Any]]:
    """One summary row per ``key`` value (first-seen order) from per-seed result rows.

    Every numeric column outside ``not_averaged`` becomes its mean (same column name) and its
    sample standard deviation ``<column>_std`` (n - 1; ``None`` with one seed); a column
    missing or ``None`` in some seeds is averaged over the seeds that have it. Columns in
    ``not_averaged`` (bookkeeping: effort, split sizes, ...) keep their value when all seeds
    agree, else the per-seed values joined by spaces; ``seed`` becomes ``seeds`` (all of them),
    ``run_dir`` is dropped (see the per-seed rows). Columns in ``listed`` also get the per-seed
    values as ``<column>s``, e.g. ``best_epochs = "19 28 33"``. ``n_seeds`` counts the rows.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    summary = []
    for name, group in groups.items():
        columns: list[str] = []
        for row in group:
            columns.extend(c for c in row if c not in columns)
        out: dict[str, Any] = {key: name, "n_seeds": len(group)}
        if any("seed" in r for r in group):
            out["seeds"] = " ".join(str(r.get("seed")) for r in group)
        for column in columns:
            if column in (key, "seed", "run_dir"):
                continue
            values = [r.get(column) for r in group]
            if column in not_averaged:
                out[column] = values[0] if all(v == values[0] for v in values) else " ".join(map(str, values))
                continue
            numbers = [float(v) for v in values if v is not None]
            if not numbers or not all(_is_number(v) for v in values if v is not None):
                continue  # text columns other than the bookkeeping ones are per-seed only
            out[column], out[f"{column}_std"] = mean_std(numbers)
            if column in listed:
                out[f"{column}s"] = " ".join("" if v is None else str(v) for v in values)
        summary.append(out)
    return summary


def summary_markdown(summary: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """The summary as a Markdown table: ``mean ± std`` cells (just the mean with one seed), the
    per-seed best epochs listed instead of their mean; run bookkeeping (seed list, run time) left
    to results.csv."""
    hidden = {"n_seeds", "seeds", "fit_seconds"} | {c for c in LISTED if any(f"{c}s" in r for r in summary)}
    columns: list[str] = ["supervision", "effort", "mIoU"]  # then the rest in first-seen order
    for row in summary:
        columns.extend(c for c in row if c not in columns and c not in hidden and not c.endswith("_std"))
    columns = [c for c in columns if any(c in r for r in summary)]

    def cell(row: dict[str, Any], column: str) -> Any:
        value, std_key = row.get(column), f"{column}_std"
        if not (_is_number(value) and std_key in row):
            return f"{value:g}" if isinstance(value, float) else value
        std = row[std_key]
        return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"

    table = markdown_table([{c: cell(r, c) for c in columns} for r in summary], columns=columns)
    n = max((r.get("n_seeds", 1) for r in summary), default=1)
    if n > 1:
        table += (f"\nMean ± sample standard deviation (n − 1) over {n} seeds ({summary[0].get('seeds', '')}); "
                  "best_epochs: each seed's epoch (0-based) of the best validation mIoU, the checkpoint tested.\n")
    return table


def plot_cost_effectiveness(summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Effort vs mean test mIoU; error bars (sample std) when the plot function takes ``yerr``."""
    points = {r["supervision"]: (r["effort"], r["mIoU"]) for r in summary}
    kwargs: dict[str, Any] = {}
    if "yerr" in inspect.signature(labelled_scatter).parameters and any(r.get("mIoU_std") is not None for r in summary):
        kwargs["yerr"] = {r["supervision"]: r.get("mIoU_std") or 0.0 for r in summary}
    n = max((r.get("n_seeds", 1) for r in summary), default=1)
    ylabel = "test mIoU" if n == 1 else f"test mIoU (mean {'± std ' if kwargs else ''}of {n} seeds)"
    labelled_scatter(points, path, xlabel="relative annotation effort per image", ylabel=ylabel,
                     title="Weak-label UNet: cost-effectiveness", **kwargs)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the study; returns the summary rows (one per kind, mean and std over the seeds)."""
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
    seeds = list(range(args.seed, args.seed + args.seeds))

    rows, grid_columns, titles = [], [], ["Input", "Ground truth"]
    grid_inputs: list[np.ndarray] = []
    for kind in args.kinds:
        kind_rows = []
        for seed in seeds:
            row, cli = run_kind(kind, args, weak_labels, out, seed)
            rows.append(row)
            kind_rows.append(row)
            write_table(rows, out / "per_seed.csv")  # after every run: a crash keeps the finished ones
            label = kind if len(seeds) == 1 else f"{kind} (seed {seed})"
            print(f"[study] {label}: test mIoU {row['mIoU']:.4f} (effort {row['effort']}, "
                  f"best epoch {row['best_epoch']})", flush=True)
            if seed != seeds[0]:
                continue  # the qualitative grid shows the first seed's models (one split)
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
        if len(seeds) > 1:
            mean, std = mean_std([r["mIoU"] for r in kind_rows])
            print(f"[study] {kind}: test mIoU {mean:.4f} ± {std:.4f} over seeds {seeds}", flush=True)

    summary = aggregate_seeds(rows)
    write_table(summary, out / "results.csv")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    plot_cost_effectiveness(summary, out / "cost_effectiveness.png")
    image_grid(grid_columns, titles, out / "qualitative_grid.png")
    if args.logger != "csv":
        log_summary_to_wandb(summary, rows, out, offline=args.logger == "wandb_offline")
    print((out / "results.md").read_text())
    return summary


def _wandb_table(rows: Sequence[dict[str, Any]]):
    import wandb

    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    return wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])


def log_summary_to_wandb(summary: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path, offline: bool) -> None:
    import wandb

    run = wandb.init(project="litseg", group="weak-label-study", name="weak-label-study-summary",
                     job_type="report", dir=str(out / "runs"), mode="offline" if offline else None)
    run.log({
        "study/results": _wandb_table(summary),
        "study/per_seed": _wandb_table(rows),
        "study/cost_effectiveness": wandb.Image(str(out / "cost_effectiveness.png")),
        "study/qualitative_grid": wandb.Image(str(out / "qualitative_grid.png")),
    })
    run.finish()


if __name__ == "__main__":
    main()
