"""Interactive benchmark speed: encode-once SAM vs the upstream re-encode loop, and the clicker.

RClicks' SAM-family wrappers re-encode the unchanged image at every click (rclicks.md §6:
"20x image-encoder cost per trajectory"); ``litseg.interactive.predictors.sam`` encodes it once per
image. In one run this prints, side by side, on a random-weight SAM (timings do not depend
on the weights):

(a) the full evaluation loop (``litseg.interactive.episode.run_image``: set_image, then per click the
    baseline clicker, ``predict`` and the IoU) vs the image encoder alone (goal <= 1.3x);
(b) the same loop re-encoding at every click, as upstream (goal >= 10x slower), and whether
    both loops give identical IoU curves;
(c) the baseline clicker's per-click cost (``error_state`` + ``baseline_location``) on a
    2048-px mask vs two bare ``cv2.distanceTransform`` calls on the same mask.

    python benchmarks/interactive_speed.py [--model vit_b --img-size 512] [--device cpu|cuda]
        [--images 2] [--reencode-images 1] [--clicks 20] [--repeats 3] [--threads 1]

``--model vit_b`` is the upstream ViT-B encoder with the real 256-d prompt encoder / mask
decoder at ``--img-size`` (1024 is exactly ``sam_model_registry["vit_b"]``; 512 keeps CPU
runs to minutes); ``--model tiny`` is the 64-px test model, whose encoder is so cheap that
ratio (a) is meaningless. Images come from ``sample_data/GrabCut`` (one object each), else a
synthetic scene. Timings are wall-clock medians over ``--repeats`` after a warm-up; the
re-encode loop runs once per image (it is the slow one) on the first ``--reencode-images``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from litseg.interactive.clicker import BaselineClicker, baseline_location, error_state  # noqa: E402
from litseg.interactive.episode import iou_curve, run_image  # noqa: E402
from litseg.interactive.predictors.sam import SamClickPredictor  # noqa: E402
from litseg.io import list_images, read_image, read_mask  # noqa: E402
from tests.tiny_models import random_sam, tiny_sam  # noqa: E402

GRABCUT = REPO / "sample_data" / "GrabCut"


def load_scenes(n: int) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], str]:
    """``n`` (name, image, gt, ignore) scenes from the GrabCut sample, else synthetic."""
    if (GRABCUT / "data_GT").is_dir():
        scenes = []
        for path in list_images(GRABCUT / "data_GT")[:n]:
            mask = read_mask(next((GRABCUT / "boundary_GT").glob(f"{path.stem}.*")))
            scenes.append((path.stem, read_image(path), mask == 255, mask == 128))
        return scenes, "sample_data/GrabCut"
    rng = np.random.default_rng(0)
    scenes = []
    for i in range(n):
        gt = np.zeros((321, 481), bool)
        gt[60 + 10 * i : 250, 120 : 380 - 10 * i] = True
        image = (np.where(gt[..., None], 190, 60) + rng.integers(-30, 31, (321, 481, 3))).astype(np.uint8)
        scenes.append((f"synthetic{i}", image, gt, np.zeros_like(gt)))
    return scenes, "synthetic squares"


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # set_image leaves the embedding computing asynchronously
    return time.perf_counter() - start, out


def median_time(fn: Callable[[], object], device: str, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        timed(fn, device)
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def clicker_timing(gt_small: np.ndarray, repeats: int) -> tuple[float, float, tuple[int, int]]:
    """Per-click clicker time vs two bare distance transforms on a 2048-px version of a mask."""
    h, w = gt_small.shape
    scale = 2048 / max(h, w)
    size = (round(w * scale), round(h * scale))
    gt = cv2.resize(gt_small.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    pred = np.roll(gt, (40, 60), axis=(0, 1))  # a shifted prediction: both fn and fp are non-empty
    ignore = np.zeros_like(gt)
    not_clicked = np.ones_like(gt)

    def clicker() -> object:
        return baseline_location(error_state(gt, pred, ignore, not_clicked))

    fn = (gt & ~pred).astype(np.uint8)
    fp = (~gt & pred).astype(np.uint8)

    def bare() -> object:
        return (cv2.distanceTransform(fn, cv2.DIST_L2, cv2.DIST_MASK_PRECISE),
                cv2.distanceTransform(fp, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))

    return median_time(clicker, "cpu", repeats), median_time(bare, "cpu", repeats), gt.shape


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vit_b", "vit_l", "vit_h", "tiny"], default="vit_b")
    parser.add_argument("--img-size", type=int, default=512, help="SAM input size for vit_* (1024 = upstream)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--reencode-images", type=int, default=1)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    # 1 by default: on a shared machine OpenMP threads of the small per-click ops spin against
    # other processes (measured: decoder 0.03 s/click with 1 thread, 0.41 s with 2 under load).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = tiny_sam() if args.model == "tiny" else random_sam(args.model, args.img_size)
    img_size = model.image_encoder.img_size
    encode_once = SamClickPredictor(model=model, device=args.device)
    reencode = SamClickPredictor(model=model, device=args.device, encode_every_click=True)
    scenes, source = load_scenes(args.images)
    print(f"model: random SAM {args.model} @ {img_size}px "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"data: {source}: {', '.join(f'{n} {im.shape[1]}x{im.shape[0]}' for n, im, _, _ in scenes)}; "
          f"{args.clicks} baseline clicks per instance, no early stop")

    def evaluate(predictor: SamClickPredictor, image, gt, ignore) -> list:
        return run_image(predictor, image, [gt], ignore, BaselineClicker(), np.random.default_rng(0), args.clicks)[0]

    # One warm-up episode (allocator, lazy init, first-call kernels), then every timing is measured.
    evaluate(encode_once, scenes[0][1], scenes[0][2], scenes[0][3])
    encoder_s, full_s, reencode_s, full_on_reencoded_s, predict_s = [], [], [], [], []
    identical = True
    for i, (name, image, gt, ignore) in enumerate(scenes):
        # Interleave the measurements so that a change of machine load hits all of them alike.
        enc, full = [], []
        for repeat in range(args.repeats):
            enc.append(timed(lambda: encode_once.set_image(image), args.device)[0])
            seconds, records = timed(lambda: evaluate(encode_once, image, gt, ignore), args.device)
            full.append(seconds)
            predict_s += [r.seconds for r in records if r.click is not None]
            if repeat == 0 and i < args.reencode_images:
                seconds, slow_records = timed(lambda: evaluate(reencode, image, gt, ignore), args.device)
                reencode_s.append(seconds)
                identical &= bool(np.array_equal(iou_curve(slow_records), iou_curve(records)))
        encoder_s.append(statistics.median(enc))
        full_s.append(statistics.median(full))
        line = f"  {name}: encoder {encoder_s[-1]:.3f} s, full loop {full_s[-1]:.3f} s"
        if i < args.reencode_images:
            full_on_reencoded_s.append(full_s[-1])
            line += f", re-encode loop {reencode_s[-1]:.3f} s"
        print(line, flush=True)

    clicker_s, bare_s, mask_shape = clicker_timing(scenes[0][2], max(args.repeats, 5))
    results = {
        "encoder_s": sum(encoder_s) / len(scenes),
        "full_s": sum(full_s) / len(scenes),
        "reencode_s": sum(reencode_s) / max(1, len(reencode_s)),
        "ratio_full_vs_encoder": sum(full_s) / sum(encoder_s),
        "ratio_reencode_vs_full": sum(reencode_s) / sum(full_on_reencoded_s) if reencode_s else float("nan"),
        "clicker_s": clicker_s,
        "bare_dt_s": bare_s,
        "ratio_clicker_vs_bare_dt": clicker_s / bare_s,
    }
    results["predict_s"] = statistics.median(predict_s)
    print()
    print("| measure (per instance) | seconds | ratio | goal |")
    print("|---|---|---|---|")
    print(f"| image encoder only (set_image) | {results['encoder_s']:.3f} | 1 | |")
    print(f"| full evaluation, encode once ({args.clicks} clicks) | {results['full_s']:.3f} | "
          f"{results['ratio_full_vs_encoder']:.2f}x encoder | <= 1.3x |")
    print(f"| re-encode at every click (upstream) | {results['reencode_s']:.3f} | "
          f"{results['ratio_reencode_vs_full']:.1f}x encode-once | >= 10x |")
    print(f"| predict() per click, encode once (median) | {results['predict_s']:.4f} | | |")
    print(f"| clicker per click, {mask_shape[1]}x{mask_shape[0]} mask | {clicker_s:.4f} | "
          f"{results['ratio_clicker_vs_bare_dt']:.2f}x bare | ~1x |")
    print(f"| 2 x cv2.distanceTransform, same mask | {bare_s:.4f} | 1 | |")
    print(f"\nre-encode and encode-once IoU curves identical: {'yes' if identical else 'NO'}")
    results["identical"] = float(identical)
    return results


if __name__ == "__main__":
    main()
