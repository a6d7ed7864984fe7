"""SemSeg speed, measured side by side in one run.

1. Training images/s of SemSeg's network against torchvision's stock Mask R-CNN with the same
   ResNet-FPN backbone, input size, batch and optimiser (random weights, real COCO128 photos and
   annotations); the ratio is SemSeg / stock.
2. Evaluation time of the open-set metric (AP_k, AR_unk, AP_unk, AOSE for segm and bbox) on
   COCO128-sized predictions: every ground-truth instance as a detection (shifted by 3 px), half of
   them under a wrong label, scores random.

    python benchmarks/semseg_speed.py                                    # CPU: resnet18, 320 px, 2 images
    python benchmarks/semseg_speed.py --backbone resnet50 --size 800 --device cuda --batch 4
    python benchmarks/semseg_speed.py --coco /path/to/coco_subset         # the full COCO128 for part 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from datamodules.semseg import SemSegDataModule
from litseg.metrics.open_set import evaluate_open_set
from litseg.nets.semseg import SemSegNet
from litseg.readers.coco import CocoInstances, encode_mask
from litseg.semseg.open_set import VOC_KNOWN_COCO_IDS, open_set_gt

SAMPLE = Path("sample_data/coco128_sample")
SAMPLE_KNOWN = [1, 3, 5, 7, 44, 64, 72]


def images_per_second(model: torch.nn.Module, batches: list, steps: int, device: str) -> float:
    model.train().to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step(images, targets) -> None:
        losses = model([i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(*batches[0])  # warm-up (allocations, cudnn autotune)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    for i in range(steps):
        images, targets = batches[i % len(batches)]
        step(images, targets)
        n += len(images)
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def metric_seconds(coco_root: Path, json_name: str, images: str, known: list[int]) -> tuple[float, int, int]:
    coco = CocoInstances.load(coco_root / json_name, coco_root / images)
    gt = open_set_gt(coco.to_dict(), [k for k in known if k in coco.categories])
    rng = np.random.default_rng(0)
    known_ids = [k for k in known if k in coco.categories]
    rows = []
    for ann in coco.annotations.values():
        if ann.iscrowd:
            continue
        image = coco.images[ann.image_id]
        mask = np.roll(coco.annotation_mask(ann), 3, axis=1)
        x, y, w, h = ann.bbox
        label = ann.category_id if ann.category_id in known_ids else 1000
        if rng.random() < 0.5:
            label = int(rng.choice([*known_ids, 1000]))
        rows.append({"image_id": image.id, "category_id": label, "score": float(rng.random()),
                     "bbox": [x + 3, y, w, h], "segmentation": encode_mask(mask)})
    start = time.perf_counter()
    evaluate_open_set(gt, rows, known_ids)
    return time.perf_counter() - start, len(coco.images), len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--coco", type=Path, default=None, help="COCO128 root (annotations/instances_train2017.json)")
    args = p.parse_args()
    torch.manual_seed(0)
    dm = SemSegDataModule(root=str(SAMPLE), train_json="annotations/instances.json", train_images="train2017",
                          known_ids=SAMPLE_KNOWN, batch_size=args.batch, flip_prob=0.0)
    dm.setup("fit")
    batches = [b for b, _ in zip(dm.train_dataloader(), range(4), strict=False)]
    batches = [(images, [{k: t[k] for k in ("boxes", "labels", "masks")} for t in targets])
               for images, targets in batches]
    k = len(SAMPLE_KNOWN)
    ours = SemSegNet(num_known=k, backbone_name=args.backbone, min_size=(args.size,), max_size=int(args.size * 5 / 3))
    stock = MaskRCNN(resnet_fpn_backbone(backbone_name=args.backbone, weights=None, trainable_layers=3),
                     num_classes=k + 1, min_size=args.size, max_size=int(args.size * 5 / 3))
    # stock labels: 1..K (0 = background)
    stock_batches = [(images, [t | {"labels": t["labels"] + 1} for t in targets]) for images, targets in batches]
    rate = {"SemSeg (OLN RPN, open-set heads, modulated mask head)": images_per_second(ours, batches, args.steps,
                                                                                      args.device),
            "torchvision maskrcnn (stock RPN and heads)": images_per_second(stock, stock_batches, args.steps,
                                                                            args.device)}
    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.backbone}-FPN, short side {args.size}, "
          f"batch {args.batch}, {args.steps} steps")
    print("| model | training images/s |")
    print("|---|---|")
    for name, r in rate.items():
        print(f"| {name} | {r:.2f} |")
    values = list(rate.values())
    print(f"SemSeg / stock: {values[0] / values[1]:.2f}")

    if args.coco is not None:
        secs, n_img, n_det = metric_seconds(args.coco, "annotations/instances_train2017.json", "train2017",
                                            list(VOC_KNOWN_COCO_IDS))
    else:
        secs, n_img, n_det = metric_seconds(SAMPLE, "annotations/instances.json", "train2017", SAMPLE_KNOWN)
    print(f"open-set metric (segm + bbox: AP_k, AR_unk@10/30/100, AP_unk, AOSE): {secs:.2f} s for {n_img} images, "
          f"{n_det} detections")


if __name__ == "__main__":
    main()
