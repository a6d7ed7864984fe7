"""Lightning ``fit`` vs a plain PyTorch loop: same model, data, batch and step count, in one run.

Also measures the data pipeline alone (images/s out of the DataLoader) against the model
step alone (images/s on a batch already in memory), to show which one bounds training.

    python benchmarks/lightning_overhead.py                       # CPU, bundled pet sample
    python benchmarks/lightning_overhead.py --accelerator gpu --precision bf16-mixed --image_size 256

Each measurement is repeated ``--repeats`` times, alternating Lightning and plain runs so that
machine noise hits both alike; medians are reported. Goal: Lightning >= 0.95x the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402

from datamodules.weak_unet import OxfordPetDataModule  # noqa: E402
from lit_modules.weak_unet import WeakLabelUNet, partial_cross_entropy  # noqa: E402


def make(args: argparse.Namespace, device: torch.device) -> tuple[WeakLabelUNet, OxfordPetDataModule]:
    torch.manual_seed(0)
    dm = OxfordPetDataModule(root=args.root, image_size=args.image_size, batch_size=args.batch_size,
                             num_workers=args.num_workers, augment=False)
    dm.setup("fit")
    model = WeakLabelUNet(num_classes=2, supervision=["full"], lr=1e-3)
    return model.to(device), dm


def autocast(args: argparse.Namespace, device: torch.device):
    enabled = args.precision == "bf16-mixed"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """images/s of a hand-written loop over the same DataLoader for ``steps`` steps."""
    model, dm = make(args, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = dm.train_dataloader()
    step, images, start = 0, 0, None
    while step < args.warmup + args.steps:
        for batch in loader:
            if step == args.warmup:
                sync(device)
                start, images = time.perf_counter(), 0
            x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            with autocast(args, device):
                loss = partial_cross_entropy(model.net(x)["logits"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += x.shape[0]
            step += 1
            if step == args.warmup + args.steps:
                break
    sync(device)
    return images / (time.perf_counter() - start)


class _Throughput(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.images, self.start, self.end = warmup, 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and not self.start:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start:
            self.images += batch["image"].shape[0]

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.end = time.perf_counter()


def lightning_fit(args: argparse.Namespace, device: torch.device) -> float:
    """images/s of ``Trainer.fit`` on the same model, data, optimiser and step count."""
    model, dm = make(args, device)
    model.weight_decay = 1e-4
    meter = _Throughput(args.warmup)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.warmup + args.steps,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[meter], log_every_n_steps=50,
    )
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    return meter.images / (meter.end - meter.start)


def data_only(args: argparse.Namespace, device: torch.device) -> float:
    """images/s the DataLoader delivers with no model (decode, resize, render labels, collate)."""
    _, dm = make(args, device)
    images, start = 0, time.perf_counter()
    while images < args.steps * args.batch_size:
        for batch in dm.train_dataloader():
            images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def model_only(args: argparse.Namespace, device: torch.device) -> float:
    """images/s of forward + backward + step on one batch already on the device."""
    model, dm = make(args, device)
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["image"].to(device), batch["mask"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(args, device):
            loss = partial_cross_entropy(model.net(x)["logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return args.steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / "sample_data/oxford_pet_subset"))
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = p.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.set_float32_matmul_precision("high")

    plain, light = [], []
    for _ in range(args.repeats):  # alternate so drifting machine load hits both
        plain.append(plain_loop(args, device))
        light.append(lightning_fit(args, device))
    data = [data_only(args, device) for _ in range(args.repeats)]
    step = [model_only(args, device) for _ in range(args.repeats)]
    med = statistics.median
    print(f"device={device} precision={args.precision} image_size={args.image_size} batch={args.batch_size} "
          f"steps={args.steps} workers={args.num_workers} repeats={args.repeats} torch={torch.__version__}")
    print("| measurement | images/s (median) | runs |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop | {med(plain):.2f} | {', '.join(f'{v:.2f}' for v in plain)} |")
    print(f"| Lightning fit | {med(light):.2f} | {', '.join(f'{v:.2f}' for v in light)} |")
    print(f"| data pipeline only | {med(data):.2f} | {', '.join(f'{v:.2f}' for v in data)} |")
    print(f"| model step only | {med(step):.2f} | {', '.join(f'{v:.2f}' for v in step)} |")
    print(f"Lightning / plain throughput ratio: {med(light) / med(plain):.3f} (goal >= 0.95)")
    print(f"data pipeline / model step ratio: {med(data) / med(step):.2f} (> 1: the model bounds training)")


if __name__ == "__main__":
    main()
