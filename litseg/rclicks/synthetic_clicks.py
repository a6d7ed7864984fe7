"""SYNTHETIC clicks in RClicks' ``clicks.csv`` schema, for demos and tests. NOT real user clicks.

RClicks (Antonov et al., NeurIPS 2024) trains its clickability model on ~475k crowd-sourced
clicks that are not published with the code. To exercise the training pipeline without
them, this module *invents* clicks for every instance of a benchmark-layout dataset:

* a ``first`` full_stem per instance: clicks scattered with Gaussian jitter (std
  ``jitter`` x sqrt(object area)) around the pixel farthest from the object boundary (the
  distance-transform maximum), kept only where they land on the object;
* optionally an ``fn`` and an ``fp`` full_stem per instance with a made-up previous mask:
  the object minus a disc on its boundary (fn: the disc's object part is missing) or plus
  such a disc (fp: the disc's background part is extra); their clicks are drawn the same
  way around the error region's distance-transform maximum.

Outputs (all names say "synthetic"): ``synthetic_clicks.csv`` (RClicks columns; model_type
``synthetic``), ``synthetic_previous_masks/<full_stem>.png`` (0/255, the SUBSEC_MASKS
layout) and ``synthetic_train.txt`` / ``synthetic_val.txt`` (image-stem split).
A model trained on these learns "click near the centre of the error", nothing about people.

    python -m litseg.rclicks.synthetic_clicks --root sample_data --dataset GrabCut --out runs/rclicks_synthetic
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

from litseg.geometry import padded_distance_transform
from litseg.io import atomic_path, write_png, write_table
from litseg.rclicks.user_clicks import COLUMNS, instance_key
from litseg.readers.ritm import DATASETS, load_sample, scan_dataset
from litseg.seeding import item_rng

CSV_NAME = "synthetic_clicks.csv"
PREVIOUS_MASKS = "synthetic_previous_masks"
MODEL_TYPE = "synthetic"


def jittered_clicks(region: np.ndarray, count: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` (x, y) clicks around the distance-transform maximum of ``region`` (bool H x W),
    each inside the region; N x 2 int64."""
    dt = padded_distance_transform(region)
    cy, cx = np.unravel_index(int(np.argmax(dt)), dt.shape)
    spread = max(1.0, jitter * float(np.sqrt(region.sum())))
    kept: list[tuple[int, int]] = []
    for _ in range(50):  # rejection sampling; a thin region may need a few rounds
        xy = np.rint(rng.normal((cx, cy), spread, size=(count, 2))).astype(np.int64)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < region.shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < region.shape[0])
        xy = xy[inside]
        kept.extend((int(x), int(y)) for x, y in xy[region[xy[:, 1], xy[:, 0]]])
        if len(kept) >= count:
            break
    kept = kept[:count]
    kept += [(int(cx), int(cy))] * (count - len(kept))  # the centre itself always lies in the region
    return np.array(kept, dtype=np.int64)


def boundary_disc(gt: np.ndarray, rng: np.random.Generator, radius_fraction: float = 0.3) -> np.ndarray:
    """A disc centred on a random boundary pixel of ``gt``, radius ``radius_fraction`` x sqrt(area)."""
    eroded = cv2.erode(gt.astype(np.uint8), np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero(gt & ~eroded.astype(bool))
    k = int(rng.integers(len(ys)))
    radius = max(2, int(radius_fraction * np.sqrt(gt.sum())))
    disc = np.zeros(gt.shape, dtype=np.uint8)
    cv2.circle(disc, (int(xs[k]), int(ys[k])), radius, 1, thickness=-1)
    return disc.astype(bool)


def synthesize(root: str | os.PathLike[str], dataset: str, out_dir: str | os.PathLike[str],
               clicks_per_stem: int = 20, jitter: float = 0.1, subsequent: bool = True,
               val_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write the synthetic clicks.csv, previous masks and split lists for ``<root>/<dataset>``.

    Returns counts: images, first / fn / fp full_stems, clicks, and fn / fp stems skipped
    because their made-up error region came out empty (printed by the CLI).
    """
    if clicks_per_stem < 1:
        raise ValueError(f"clicks_per_stem must be >= 1, got {clicks_per_stem}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root, out_dir = Path(root), Path(out_dir)
    name_in_csv = DATASETS[dataset].clicks_name
    records = scan_dataset(root, dataset)
    rows: list[dict[str, object]] = []
    counts = dict.fromkeys(("images", "first", "fn", "fp", "clicks", "skipped"), 0)
    for record in records:
        sample = load_sample(record)
        height, width = sample["image"].shape[:2]
        counts["images"] += 1
        n_instances = len(sample["instance_ids"])
        for inst, gt in zip(sample["instance_ids"], sample["instances"], strict=True):
            rng = item_rng(seed, dataset, record.stem, inst)
            first_stem = instance_key(record.stem, inst, n_instances)
            tasks: list[tuple[str, str, np.ndarray]] = [("first", first_stem, gt)]
            if subsequent:
                disc = boundary_disc(gt, rng)
                for click_type, previous, error in (("fn", gt & ~disc, gt & disc), ("fp", gt | disc, disc & ~gt)):
                    if not error.any():
                        counts["skipped"] += 1
                        continue
                    full_stem = f"{first_stem}_{MODEL_TYPE}_{click_type}_pc_0"
                    write_png(out_dir / PREVIOUS_MASKS / f"{full_stem}.png", previous.astype(np.uint8) * 255)
                    tasks.append((click_type, full_stem, error))
            for click_type, full_stem, region in tasks:
                counts[click_type] += 1
                for i, (x, y) in enumerate(jittered_clicks(region, clicks_per_stem, jitter, rng)):
                    rows.append({
                        "dataset": name_in_csv, "full_stem": full_stem, "image_stem": record.stem,
                        "object_stem": "" if n_instances == 1 else inst, "click_type": click_type,
                        "model_type": "" if click_type == "first" else MODEL_TYPE,
                        "device": "pc" if i % 2 == 0 else "mobile", "x": x, "y": y, "w": width, "h": height,
                    })
    counts["clicks"] = len(rows)
    write_table(rows, out_dir / CSV_NAME, columns=COLUMNS)
    stems = [r.stem for r in records]
    order = item_rng(seed, "split", dataset).permutation(len(stems))
    n_val = max(1, round(val_fraction * len(stems))) if val_fraction > 0 and len(stems) > 1 else 0
    val = sorted(stems[i] for i in order[:n_val])
    train = sorted(stems[i] for i in order[n_val:])
    for name, part in (("synthetic_train.txt", train), ("synthetic_val.txt", val)):
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text("".join(f"{s}\n" for s in part))
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m litseg.rclicks.synthetic_clicks",
        description="Write SYNTHETIC clicks (NOT real user clicks) in RClicks' clicks.csv schema: clicks jittered "
                    "around the distance-transform maximum of each object (first) and of made-up fn / fp error "
                    "regions, with their previous masks as PNG and a train / val image-stem split. For demos and "
                    "tests of the clickability-model pipeline only.",
    )
    parser.add_argument("--root", required=True, help="folder holding <dataset>/ in a benchmark layout")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--out", required=True, help="output folder (synthetic_clicks.csv, previous masks, lists)")
    parser.add_argument("--clicks-per-stem", type=int, default=20)
    parser.add_argument("--jitter", type=float, default=0.1, help="click spread as a fraction of sqrt(object area)")
    parser.add_argument("--first-only", action="store_true", help="no synthetic fn / fp rounds")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = synthesize(args.root, args.dataset, args.out, args.clicks_per_stem, args.jitter,
                        not args.first_only, args.val_fraction, args.seed)
    print(f"SYNTHETIC clicks written to {Path(args.out) / CSV_NAME}: {counts}")


if __name__ == "__main__":
    main()
