"""Seconds per click of every interactive predictor family, side by side in one run (random weights).

Each family's published architecture at a small input where it is cheap on CPU: SAM ViT-B at 256 px
input (the upstream ViT-B, decoder and prompt encoder), SAM-HQ vit_tiny and MobileSAM (TinyViT) at
256 px, RITM HRNet-18s ITER-M with Zoom-In at 256 px, SimpleClick ViT-B at 224 px without flip.
The SAM family encodes the image once (its ``set_image`` time is printed apart); RITM and SimpleClick
run the whole network at every click. One GrabCut image, 5 clicks of the RITM clicker.

    python benchmarks/predictor_zoo_speed.py [--clicks 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from litseg.interactive.clicker import build_strategy
from litseg.interactive.episode import run_episode
from litseg.readers.ritm import load_sample, scan_dataset


def predictors(device: str) -> dict[str, object]:
    from litseg.interactive.predictors.ritm import RITMClickPredictor
    from litseg.interactive.predictors.sam import SamClickPredictor
    from litseg.interactive.predictors.sam_hq import MobileSamClickPredictor, SamHQClickPredictor, mobile_sam
    from litseg.interactive.predictors.simpleclick import SimpleClickPredictor
    from litseg.nets.hrnet_ritm import RITM_PRESETS, RITMHRNetModel
    from litseg.nets.sam import random_sam
    from litseg.nets.simpleclick import PlainVitModel

    torch.manual_seed(0)
    out: dict[str, object] = {
        "sam (ViT-B, 256 px)": SamClickPredictor(model=random_sam("vit_b", img_size=256), device=device),
        "mobile_sam (TinyViT, 256 px)": MobileSamClickPredictor(model=mobile_sam(img_size=256), device=device),
        "ritm (HRNet-18s, Zoom-In 256)": RITMClickPredictor(
            model=RITMHRNetModel(**RITM_PRESETS["hrnet18s_itermask"]), device=device,
            zoom_in={"target_size": 256}, with_flip=True),
        "simpleclick (ViT-B, 224 px, no flip)": SimpleClickPredictor(
            model=PlainVitModel(
                dict(img_size=(224, 224), patch_size=(16, 16), in_chans=3, embed_dim=768, depth=12, num_heads=12,
                     mlp_ratio=4, qkv_bias=True),
                dict(in_dim=768, out_dims=[128, 256, 512, 1024]),
                dict(in_channels=[128, 256, 512, 1024], in_index=[0, 1, 2, 3], channels=256, dropout_ratio=0.1,
                     num_classes=1, align_corners=False, upsample="x1"),
                with_prev_mask=True, use_disks=True, norm_radius=5),
            device=device, input_size=224, with_flip=False),
    }
    try:
        from litseg.interactive.predictors.sam_hq import tiny_sam_hq

        out["sam_hq (tiny ViT, 64 px)"] = SamHQClickPredictor(model=tiny_sam_hq(), device=device)
    except ImportError:  # segment-anything-hq missing
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    record = scan_dataset(Path("sample_data"), "GrabCut")[0]
    sample = load_sample(record)
    image, gt = sample["image"], sample["instances"][0]
    ignore = sample["ignore"]
    print(f"device {args.device}, threads {torch.get_num_threads()}, image {image.shape[1]}x{image.shape[0]}, "
          f"{args.clicks} clicks")
    print("| predictor | set_image s | s / click | IoU after last click |")
    print("|---|---|---|---|")
    for name, predictor in predictors(args.device).items():
        start = time.perf_counter()
        predictor.set_image(image)
        encode = time.perf_counter() - start
        predictor.reset()
        strategy = build_strategy("baseline")
        records = run_episode(predictor, image, gt, ignore, strategy, np.random.default_rng(0), max_clicks=args.clicks)
        timed = [r.seconds for r in records if r.click is not None]
        per_click = float(np.mean(timed)) if timed else float("nan")
        print(f"| {name} | {encode:.2f} | {per_click:.3f} | {records[-1].iou:.3f} |")


if __name__ == "__main__":
    main()
