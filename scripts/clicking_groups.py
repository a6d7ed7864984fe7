"""RClicks clicking-group benchmark of one predictor: Base + G1..G10, robustness table (Table 4).

For every dataset this runs the interactive benchmark (``lit_modules.interactive.InteractiveBenchmark``)
eleven times with the same predictor: once with RITM's baseline clicker ("Base") and once
per clicking group G1..G10 (clicks sampled from the band ``[(k-1)/10, k/10]`` of the
clickability map, :class:`litseg.rclicks.band_sampler.ClickabilityStrategy`), 20 clicks per
instance, one trajectory each, clicks seeded per image. With ``--user-clicks`` it also runs
the User mode (every real first click as its own 1-click episode) for NSR@1. It writes
into ``--output``:

    robustness.csv / .md   per dataset: Base and Sample NoC@90 (± std), ΔSB / ΔGR / ΔHH %,
                           the NoF and IoU-AUC versions, Sample NSR IoU-AUC (and NSR@1)
    per_instance.csv       NoC@90 and IoU-AUC of every instance in every mode
    <mode>/                the benchmark's own per_click.csv, summary.csv / .md, plot per mode

and, with ``--wandb-project``, logs the table and its numbers to a W&B run.

    python scripts/clicking_groups.py --root sample_data --datasets GrabCut --predictor grabcut \\
        --clickability distance_transform --output runs/clicking_groups/grabcut_dt
    python scripts/clicking_groups.py --root /data --datasets GrabCut Berkeley DAVIS COCO_MVal TETRIS \\
        --predictor sam --predictor-args '{"model_type": "vit_b", "checkpoint": "sam_vit_b.pth", "device": "auto"}' \\
        --checkpoint runs/rclicks/tetris_sigma5/version_0/checkpoints/best.ckpt --accelerator gpu \\
        --user-clicks /data/clicks.csv --output results/clicking_groups/sam_vit_b --wandb-project rclicks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import litseg.rclicks.band_sampler  # noqa: E402,F401  (registers the "clickability" strategy)
from datamodules.interactive import InteractiveDataModule  # noqa: E402
from lit_modules.interactive import InteractiveBenchmark  # noqa: E402
from litseg.io import write_table  # noqa: E402
from litseg.metrics.noc import InstanceTable  # noqa: E402
from litseg.metrics.robustness import CLICKING_GROUPS, robustness_summary  # noqa: E402
from litseg.readers.ritm import DATASETS  # noqa: E402


def _modes(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, strategy, strategy_args) of Base and G1..G10."""
    source = {"clickability": args.clickability, "input_size": args.input_size, "device": args.strategy_device}
    if args.clickability == "network":
        source["checkpoint"] = args.checkpoint
    return [("Base", "baseline", {})] + [
        (f"G{k}", "clickability", source | {"clicking_group": k}) for k in CLICKING_GROUPS
    ]


def _run_test(benchmark: InteractiveBenchmark, datamodule: InteractiveDataModule, accelerator: str) -> None:
    from lightning.pytorch import Trainer

    trainer = Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.test(benchmark, datamodule=datamodule, verbose=False)


def run_clicking_groups(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every mode, write the outputs, return the robustness rows (one per dataset)."""
    output = Path(args.output)
    predictor_args = json.loads(args.predictor_args) if args.predictor_args else {}
    datamodule = InteractiveDataModule(root=args.root, datasets=args.datasets, max_images=args.max_images)
    tables: dict[str, list[InstanceTable]] = {name: [] for name in args.datasets}
    instance_rows: list[dict[str, Any]] = []
    for label, strategy, strategy_args in _modes(args):
        start = time.perf_counter()
        benchmark = InteractiveBenchmark(predictor=args.predictor, predictor_args=predictor_args, strategy=strategy,
                                         strategy_args=strategy_args, max_clicks=args.max_clicks, seed=args.seed)
        _run_test(benchmark, datamodule, args.accelerator)
        benchmark.write_evaluation(output / label)
        for name in args.datasets:
            table = benchmark.noc_metrics[name].per_instance()
            tables[name].append(table)
            for iid, group, noc, auc in zip(table.instance_ids.tolist(), table.groups.tolist(),
                                            table.noc(args.threshold).tolist(), table.auc().tolist(), strict=True):
                instance_rows.append({"dataset": name, "mode": label, "group": group, "instance_id": iid,
                                      "NoC": noc, "IoU-AUC": auc})
        print(f"{label}: done in {time.perf_counter() - start:.1f} s", flush=True)

    nsr_at_1: dict[str, float] = {}
    if args.user_clicks:
        user = InteractiveBenchmark(predictor=args.predictor, predictor_args=predictor_args, strategy="user",
                                    max_clicks=1, seed=args.seed, user_clicks=args.user_clicks)
        _run_test(user, datamodule, args.accelerator)
        user.write_evaluation(output / "User")
        nsr_at_1 = {row["dataset"]: row["NSR@1"] for row in user.evaluation_rows}

    rows = []
    for name in args.datasets:
        parts = tables[name]
        merged = InstanceTable(np.concatenate([t.instance_ids for t in parts]),
                               np.concatenate([t.groups for t in parts]),
                               np.concatenate([t.curves for t in parts]))
        row: dict[str, Any] = {"dataset": name, "predictor": args.predictor, "clickability": args.clickability}
        row |= robustness_summary(merged, threshold=args.threshold, max_clicks=args.max_clicks)
        if name in nsr_at_1:
            row["NSR@1 (User)"] = nsr_at_1[name]
        rows.append(row)
    write_table(instance_rows, output / "per_instance.csv")
    write_table(rows, output / "robustness.csv", output / "robustness.md")
    if args.wandb_project:
        _log_wandb(args, rows)
    return rows


def _log_wandb(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    import wandb

    run = wandb.init(project=args.wandb_project, mode=args.wandb_mode, job_type="clicking_groups",
                     name=f"clicking_groups-{args.predictor}-{args.clickability}", config=vars(args))
    columns = list(rows[0])
    run.log({"clicking_groups/robustness": wandb.Table(columns=columns,
                                                       data=[[r.get(c) for c in columns] for r in rows])})
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run.summary[f"{row['dataset']}/{key}"] = value
    run.finish()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding one benchmark-layout folder per dataset")
    p.add_argument("--datasets", nargs="+", required=True, choices=sorted(DATASETS))
    p.add_argument("--predictor", required=True, help="predictor name (grabcut, sam, sam2, or package.module:Factory)")
    p.add_argument("--predictor-args", default="", help="JSON object of predictor keyword arguments")
    p.add_argument("--clickability", default="network", choices=["network", "uniform", "distance_transform"],
                   help="click map of the groups: a trained model (--checkpoint) or the UD / DT baselines")
    p.add_argument("--checkpoint", default=None, help="ClickabilityModel checkpoint (clickability=network)")
    p.add_argument("--input-size", type=int, default=416, help="letterbox size of the clickability model")
    p.add_argument("--strategy-device", default="auto", help="device of the clickability model (auto, cpu, cuda)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--threshold", type=float, default=0.9, help="IoU threshold of NoC / NoF (NoC20@90)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images of each dataset")
    p.add_argument("--seed", type=int, default=42, help="per-image click seed (item_rng(seed, dataset, stem))")
    p.add_argument("--user-clicks", default=None, help="RClicks clicks.csv: also run the User mode (NSR@1)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--output", required=True)
    p.add_argument("--wandb-project", default=None)
    p.add_argument("--wandb-mode", default="online", choices=["online", "offline", "disabled"])
    args = p.parse_args(argv)
    if (args.clickability == "network") != (args.checkpoint is not None):
        p.error("--checkpoint is needed with --clickability network, and only then")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = run_clicking_groups(args)
    print((Path(args.output) / "robustness.md").read_text())
    return rows


if __name__ == "__main__":
    main()
