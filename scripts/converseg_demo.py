"""ConverSeg on one image and a free-text prompt: mask, colour mask and overlay PNGs (upstream demo.py).

    python scripts/converseg_demo.py --config configs/converseg/tiny_demo.yaml \
        --ckpt_path runs/converseg/tiny_demo/version_0/checkpoints/last.ckpt \
        --image photo.jpg --prompt "the mug someone could drink from" --out runs/converseg/demo

The model comes from the recipe (any key can be overridden as in train.py) and the checkpoint
(weights only). The image is letterboxed as in training, the mask taken by the recipe's
``mask_selection`` and returned to the original size (demo.py's geometry). Writes
``<stem>_mask.png`` (0 / 255), ``<stem>_mask_color.png`` and ``<stem>_overlay.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from litseg.checkpoint import load_weights  # noqa: E402
from litseg.cli import LitSegCLI  # noqa: E402
from litseg.io import read_image, write_png  # noqa: E402
from litseg.nets.converseg import logits_to_original  # noqa: E402
from litseg.readers.converseg import letterbox_1024  # noqa: E402

COLOUR = np.array([255, 64, 64], np.float32)


def segment(model, image: np.ndarray, prompt: str) -> np.ndarray:
    """Bool H x W mask of ``prompt`` in the uint8 RGB ``image``."""
    import torch

    model.eval()
    size = model.segmenter.image_size
    x, box = letterbox_1024(image, size)
    batch = {"image_1024": x[None], "image": [torch.from_numpy(image)], "prompt": [prompt.strip() or "segment"],
             "id": ["demo"], "letterbox": [box]}
    with torch.no_grad():
        logits = model.low_res_logits(batch, model.mask_selection, "letterbox")
    return (logits_to_original(logits.float().cpu(), [box], "letterbox")[0] > 0).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", default="runs/converseg/demo")
    p.add_argument("--ckpt_path", default=None, help="a ConverSeg checkpoint (weights only); none = the recipe's")
    args, rest = p.parse_known_args(argv)
    cli = LitSegCLI(args=rest, run=False)
    model = cli.model
    if args.ckpt_path:
        load_weights(model, args.ckpt_path, key="state_dict")
    image = read_image(args.image)
    mask = segment(model, image, args.prompt)
    out, stem = Path(args.out), Path(args.image).stem
    colour = np.zeros_like(image)
    colour[mask] = COLOUR.astype(np.uint8)
    overlay = image.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * COLOUR
    write_png(out / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
    write_png(out / f"{stem}_mask_color.png", colour)
    write_png(out / f"{stem}_overlay.png", overlay.round().astype(np.uint8))
    print(f"{args.prompt!r}: {int(mask.sum())} of {mask.size} pixels; wrote {out}/{stem}_mask*.png, _overlay.png")


if __name__ == "__main__":
    from litseg.cli import run_cli

    run_cli(main)
