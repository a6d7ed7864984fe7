"""RClicks clickability model: cost of one simulated click, and training throughput.

Every click of a clicking-group trajectory (RClicks, NeurIPS 2024, note 2.2) runs the
clickability network on the letterboxed image (416 x 416), maps it back to the image
and band-samples a location. This prints, in one run, side by side:

* the band sampler alone on a full-resolution map (restrict to the error region, sort
  all pixels, cumsum, thresholds, one categorical draw) on a 2048 x 1536 image (TETRIS
  longest side);
* the network's map for that image (letterbox + forward + unletterbox + min-max), and the
  UD / DT baselines' maps;
* training images/s of ``ClickabilityModel`` (forward + KL loss + backward + Adam step).

    python benchmarks/clickability_speed.py [--backbone resnet18] [--repeats 5] [--train-size 416]

Real images from ``/work/shared/data/DAVIS`` are used when present (resized to 2048 px),
else a random image. Timings are wall-clock medians on whatever device runs it (CPU here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litseg.io import list_images, read_image, read_mask  # noqa: E402
from litseg.losses import kl_loss  # noqa: E402
from litseg.nets.rclicks import ClickabilityNet  # noqa: E402
from litseg.rclicks.band_sampler import group_band, sample_click_location  # noqa: E402
from litseg.rclicks.maps import distance_transform_baseline, predict_clickability, uniform_baseline  # noqa: E402

DAVIS = Path("/work/shared/data/DAVIS")


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_image(width: int = 2048, height: int = 1536) -> tuple[np.ndarray, np.ndarray, str]:
    if DAVIS.is_dir():
        path = list_images(DAVIS / "img")[0]
        image = read_image(path)
        mask = read_mask(DAVIS / "gt" / f"{path.stem}.png", "first_channel") > 0
        source = f"DAVIS {path.name} resized"
    else:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        mask = np.zeros((480, 640), bool)
        mask[120:360, 160:480] = True
        source = "random image, box object"
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return image, mask, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--decoder-channels", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=416)
    parser.add_argument("--train-batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    image, gt, source = test_image()
    height, width = gt.shape
    net = ClickabilityNet(args.backbone, decoder_channels=args.decoder_channels).to(device).eval()
    rng = np.random.default_rng(0)
    not_clicked = np.ones_like(gt)
    raw = predict_clickability(net, image, gt, gt)

    rows = [
        ("band sampler (G10), full-res map", median_seconds(
            lambda: sample_click_location(raw, gt, not_clicked, *group_band(10), rng, fallback=(0, 0)), args.repeats)),
        ("network map (letterbox 416 + fwd + unletterbox)", median_seconds(
            lambda: predict_clickability(net, image, gt, gt), args.repeats)),
        ("UD baseline map", median_seconds(lambda: uniform_baseline(gt), args.repeats)),
        ("DT baseline map", median_seconds(lambda: distance_transform_baseline(gt), args.repeats)),
    ]
    sampler = rows[0][1]
    print(f"Per-click cost on a {width}x{height} image ({source}), {device}, backbone {args.backbone}, "
          f"median of {args.repeats}:")
    print(f"{'step':<50} {'ms':>9} {'x sampler':>10}")
    for name, seconds in rows:
        print(f"{name:<50} {seconds * 1e3:9.1f} {seconds / sampler:10.2f}")

    train_net = ClickabilityNet(args.backbone, decoder_channels=args.decoder_channels).to(device).train()
    optimizer = torch.optim.Adam(train_net.parameters(), lr=0.01)
    b, s = args.train_batch, args.train_size
    images = torch.randn(b, 3, s, s, device=device)
    maps = (torch.rand(b, 2, s, s, device=device) > 0.5).float()
    target = torch.rand(b, 1, s, s, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        kl_loss(train_net(images, maps), target).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds(step, max(2, args.repeats // 2))
    print(f"\nTraining ({args.backbone}, batch {b}, {s}x{s}, {device}, {torch.get_num_threads()} threads): "
          f"{seconds:.2f} s/step = {b / seconds:.1f} images/s")
    print(f"An epoch of TETRIS train (~5.7k full_stems, estimated from 3/4 of ~7.6k) at this rate: "
          f"{5700 / (b / seconds) / 60:.0f} min")


if __name__ == "__main__":
    main()
