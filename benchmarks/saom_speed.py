"""SAOM speed, measured side by side in one run (CPU or GPU).

1. Training epoch time with the embedding cache against re-encoding every image every epoch
   (same model, data, steps, optimiser; epochs after the first, when the cache is warm).
2. Everything mode: seconds per image for the 32 x 32 and 64 x 64 lattices.

The SAM is the upstream architecture with random weights (no download): ViT-B image encoder and
the real 256-d prompt encoder / mask decoder, at ``--img-size`` input (1024 = SAM's own; smaller
keeps CPU runs short while keeping the encoder / decoder cost ratio of the real model, see
``litseg.nets.sam.random_sam``). Images are the bundled COCO128 sample (real photos, 1-20 instances).

    python benchmarks/saom_speed.py                       # CPU: --img-size 256 --epochs 3
    python benchmarks/saom_speed.py --img-size 1024 --device cuda --grids 32 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from datamodules.saom import SAOMDataModule
from lit_modules.saom import SAOM
from litseg.nets.sam import random_sam
from litseg.nets.saom import EverythingConfig, SAOMNet, everything_masks
from litseg.saom.prompts import grid_lattice


def build(num_classes: int, img_size: int, cache: bool, device: str) -> SAOM:
    model = SAOM(num_classes=num_classes, model_type="tiny", embedding_cache=cache, sam_baseline=False)
    model.net = SAOMNet(random_sam("vit_b", img_size=img_size, seed=0), num_classes).train()
    return model.to(device)


def epoch_times(model: SAOM, items: list[dict], epochs: int) -> list[float]:
    opt = torch.optim.AdamW(model.param_groups()[0]["params"], lr=1e-3, eps=1e-4)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for item in items:
            loss, _ = model._image_loss(item)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    p.add_argument("--everything-images", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    dm = SAOMDataModule(root="sample_data/coco128_sample", source="coco")
    dm.setup("fit")
    data = [d[i] for d in (dm.train_dataloader().dataset, dm.val_dataloader().dataset) for i in range(len(d))]
    items = data[: args.images]
    n_inst = sum(int(it["masks"].shape[0]) for it in items)
    print(f"device {args.device}, threads {torch.get_num_threads()}, SAM ViT-B (random) at {args.img_size} px, "
          f"{len(items)} COCO128 images, {n_inst} instances")

    results = {}
    for cache in (False, True):
        model = build(dm.num_classes, args.img_size, cache, args.device)
        results[cache] = epoch_times(model, items, args.epochs)
    warm = {c: float(np.mean(t[1:])) if len(t) > 1 else t[0] for c, t in results.items()}
    print("| training epoch | seconds (epochs 2..) | first epoch |")
    print("|---|---|---|")
    print(f"| re-encode every image | {warm[False]:.2f} | {results[False][0]:.2f} |")
    print(f"| embedding cache | {warm[True]:.2f} | {results[True][0]:.2f} |")
    print(f"cache speed-up after the first epoch: {warm[False] / warm[True]:.1f}x")

    model = build(dm.num_classes, args.img_size, True, args.device).eval()
    print("| everything mode | points | seconds / image | masks kept |")
    print("|---|---|---|---|")
    for n in args.grids:
        secs, kept = [], []
        for item in items[: args.everything_images]:
            h, w = item["image"].shape[:2]
            start = time.perf_counter()
            features, input_size = model.net.encode(item["image"])
            lattice = grid_lattice(n, n, h, w)
            out = everything_masks(model.net, features, input_size, (h, w), lattice, EverythingConfig())
            secs.append(time.perf_counter() - start)
            kept.append(len(out["masks"]))
        print(f"| {n} x {n} | {n * n} | {np.mean(secs):.2f} | {np.mean(kept):.0f} |")


if __name__ == "__main__":
    main()
