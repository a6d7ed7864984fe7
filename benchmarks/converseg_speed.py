"""ConverSeg training step, measured: the share of time in the VLM (Qwen2.5-VL + LoRA + adapter), the
SAM2 image encoder and the SAM2 mask decoder + loss + backward, and the step time with the SAM2 feature
cache against without (tiny random models on CPU; the same code runs real sizes on a GPU).

    python -m litseg.converseg.tiny_qwen runs/tiny_qwen     # once
    python benchmarks/converseg_speed.py [--qwen runs/tiny_qwen/tiny_qwen2_5_vl_seed0] [--steps 6]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from datamodules.converseg import ConverSegDataModule
from lit_modules.converseg import ConverSeg
from litseg.converseg.tiny_qwen import tiny_qwen_folder
from litseg.nets.converseg import converseg_loss
from litseg.nets.sam import TINY_SAM2_CONFIG, tiny_sam2_overrides


def timed_steps(model: ConverSeg, batches: list[dict], steps: int) -> dict[str, float]:
    opt = torch.optim.AdamW(model.param_groups()[0]["params"], lr=1e-4)
    totals: dict[str, float] = defaultdict(float)
    for i in range(steps + 1):  # the first step warms up (and fills the cache); not counted
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        ids = [f"letterbox:{k}" for k in batch["id"]]
        features = model.segmenter.encode_cached(ids, batch["image_1024"])
        t1 = time.perf_counter()
        prompts = model.prompter([img.numpy() for img in batch["image"]], list(batch["prompt"]))
        t2 = time.perf_counter()
        logits, _ = model.segmenter.predict(features, prompts["sparse"].float(), prompts["sparse_mask"],
                                            prompts["dense"].float())
        loss = converseg_loss(logits, batch["target_256"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if i:
            totals["SAM2 encoder"] += t1 - t0
            totals["VLM + adapter (forward)"] += t2 - t1
            totals["decoder + loss + backward + step"] += t3 - t2
    return {k: v / steps for k, v in totals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qwen", default=None, help="a local Qwen2.5-VL folder (default: the tiny one, built once)")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    qwen = args.qwen or str(tiny_qwen_folder("runs/tiny_qwen"))
    dm = ConverSegDataModule(root="sample_data/converseg_coco128", train_jsonl="train/dataset.jsonl",
                             val="eval/items.json", size=128, target_size=32, batch_size=2)
    dm.setup("fit")
    batches = [b for b, _ in zip(dm.train_dataloader(), range(4), strict=False)]
    rows = {}
    for cache in (False, True):
        torch.manual_seed(0)
        model = ConverSeg(qwen=qwen, qwen_dtype="float32", sam2_config=TINY_SAM2_CONFIG,
                          sam2_overrides=tiny_sam2_overrides(128), feature_cache=cache)
        rows[cache] = timed_steps(model, batches, args.steps)
    print(f"threads {torch.get_num_threads()}, batch 2, tiny Qwen2.5-VL + tiny SAM2 (128 px), {args.steps} steps")
    print("| part of a training step | no cache (s) | share | with cache (s) | share |")
    print("|---|---|---|---|---|")
    no, yes = sum(rows[False].values()), sum(rows[True].values())
    for part in rows[False]:
        a, b = rows[False][part], rows[True][part]
        print(f"| {part} | {a:.3f} | {a / no:.0%} | {b:.3f} | {b / yes:.0%} |")
    print(f"step time: {no:.3f} s without the feature cache, {yes:.3f} s with it (ratio {no / yes:.2f})")


if __name__ == "__main__":
    main()
