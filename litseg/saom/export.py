"""Export a trained SAOM checkpoint as a plain SAM state dict plus its classifier head.

    python -m litseg.saom.export runs/saom/<run>/version_0/checkpoints/best-*.ckpt sam_saom_vit_b.pth

writes ``sam_saom_vit_b.pth``, which ``segment_anything.sam_model_registry["vit_b"](checkpoint=...)``
loads unchanged (the keys of ``Sam.state_dict()``: the fine-tuned decoder and prompt embeddings with
the frozen encoder), and ``sam_saom_vit_b.classifier.pt`` = ``{"weight", "bias", "classes"}`` (the
``Linear`` on the IoU token and the class names in index order). The SAM file is the interactive
benchmark's ``sam`` predictor checkpoint as it is (``predictor_args.checkpoint``), so a fine-tuned
model's NoC is one command away. Both are plain tensors / strings: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from litseg.checkpoint import extract_state_dict, load_checkpoint
from litseg.io import DataError, atomic_path

SAM_PREFIX = "net.sam."
CLASSIFIER_PREFIX = "net.classifier."


def classifier_path(sam_path: str | os.PathLike[str]) -> Path:
    """Where the classifier of an exported SAM file lives (``x.pth`` -> ``x.classifier.pt``)."""
    p = Path(sam_path)
    return p.with_name(p.stem + ".classifier.pt")


def export_sam(ckpt_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Split a SAOM Lightning checkpoint into a SAM state dict and a classifier file."""
    ckpt = load_checkpoint(ckpt_path)
    state = extract_state_dict(ckpt, key="state_dict")
    sam = {k[len(SAM_PREFIX):]: v for k, v in state.items() if k.startswith(SAM_PREFIX)}
    head = {k[len(CLASSIFIER_PREFIX):]: v for k, v in state.items() if k.startswith(CLASSIFIER_PREFIX)}
    if not sam or set(head) != {"weight", "bias"}:
        raise DataError(ckpt_path, f"not a SAOM checkpoint (no '{SAM_PREFIX}*' / '{CLASSIFIER_PREFIX}*' weights)")
    classes = [str(c) for c in ckpt.get("saom_classes") or range(head["weight"].shape[0])]
    out = Path(out_path)
    with atomic_path(out) as tmp:
        torch.save(sam, tmp)
    with atomic_path(classifier_path(out)) as tmp:
        torch.save({"weight": head["weight"], "bias": head["bias"], "classes": classes}, tmp)
    return out, classifier_path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a SAOM Lightning checkpoint (.ckpt)")
    parser.add_argument("output", help="SAM state dict to write (.pth); the classifier goes beside it")
    args = parser.parse_args(argv)
    sam, head = export_sam(args.checkpoint, args.output)
    print(f"wrote {sam} and {head}")


if __name__ == "__main__":
    main()
