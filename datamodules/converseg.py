"""Data for ConverSeg (SAM2 prompted by Qwen2.5-VL, ``shared/specs/converseg.md`` §3.2, §4, §5).

Readers, mask rule and geometry live in :mod:`litseg.readers.converseg`. Sources:

* train: ``<root>/<train_jsonl>`` (training JSONL, paths relative to its folder);
* val: ``val`` (an ``items.json``, a ``*.jsonl`` or a local HF dataset folder, detected by kind),
  else a reproducible hash split of the training samples: the ``max(1, round(val_fraction * N))``
  samples with the smallest ``blake2b(seed, image|mask|prompt)`` are val (upstream: a seeded
  permutation, 1 %, at least one sample);
* test: ``test`` (same kinds); a HF folder gives all its splits (``sam_seeded`` then
  ``human_annotated``), each sample carrying its split name.

No augmentation (upstream has none). One item per sample::

    image_1024  float32 3 x 1024 x 1024   ImageNet-normalised letterbox (padding = -mean/std)
    target_256  float32 1 x 256 x 256     0/1: letterboxed (nearest), eroded 5x5 once at 1024,
                                          nearest-downsampled
    gt          bool    H x W             original-resolution mask > 0 (not eroded; for metrics)
    image       uint8   H x W x 3         the original image (Qwen takes the original, spec 1.2)
    image_path  str                       the original image file ("" for in-memory HF images)
    prompt      str                       "segment" when the file's prompt was empty
    id, split, concept (str, concept "" when absent), letterbox (Letterbox)

:func:`collate` stacks ``image_1024`` (B x 3 x 1024 x 1024) and ``target_256`` (B x 1 x 256 x 256)
and keeps the rest as lists (sizes differ).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import Dataset

from datamodules.base import STAGE_SPLITS, LitSegDataModule
from litseg.io import ConfigError, DataError, FileCheck, check_key, raise_problems
from litseg.readers.converseg import (
    SIZE,
    TARGET_SIZE,
    Sample,
    count_empty_prompts,
    letterbox_1024,
    make_target,
    read_pair,
    read_samples,
    read_train_jsonl,
    stable_fraction,
)

KEY_PREFIX = "data.init_args."
PAIR_RULE = "converseg-pair/1"  # bump when what the check reads or returns changes
STACKED = ("image_1024", "target_256")


def make_item(sample: Sample, size: int = SIZE, target_size: int = TARGET_SIZE) -> dict[str, Any]:
    """The item dict of one sample (see the module docstring)."""
    image, mask = read_pair(sample)
    image_1024, box = letterbox_1024(image, size)
    target = make_target(mask, box, target_size)
    return {
        "image_1024": image_1024,
        "target_256": torch.from_numpy(target.astype(np.float32))[None],
        "gt": torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)),
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)),
        "image_path": str(sample.image_path) if sample.image_path is not None else "",
        "prompt": sample.prompt,
        "id": sample.id,
        "split": sample.split,
        "concept": sample.concept,
        "letterbox": box,
    }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Dict of the batch: ``image_1024`` / ``target_256`` stacked, every other key a list."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if key in STACKED else values
    return out


class ConverSegSamples(Dataset):
    """Items of a list of samples (decoded at read time)."""

    def __init__(self, samples: Sequence[Sample], size: int = SIZE, target_size: int = TARGET_SIZE) -> None:
        self.samples = list(samples)
        self.size = size
        self.target_size = target_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_item(self.samples[index], self.size, self.target_size)


def _pair_info(sample: Sample) -> dict[str, Any]:
    """Up-front check of one sample: both files decode, same size (the item reader itself)."""
    image, mask = read_pair(sample)
    return {"size": [int(image.shape[0]), int(image.shape[1])], "empty": not bool(mask.any())}


def hash_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the ``max(1, round(val_fraction * N))`` samples of smallest hash of
    ``(seed, image|mask|prompt)`` go to val, order kept; the same on every machine."""
    n_val = max(1, round(val_fraction * len(samples)))
    if n_val >= len(samples):
        raise DataError(samples[0].where.split(" of ", 1)[-1] if samples else "<train>",
                        f"cannot split {len(samples)} sample(s) into train and {n_val} val; give data.init_args.val")
    keys = [stable_fraction(f"{s.image}|{s.mask}|{s.prompt}", salt=str(seed)) for s in samples]
    val_idx = set(sorted(range(len(samples)), key=lambda i: (keys[i], i))[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, [Sample(**{**s.__dict__, "split": "val"}) for s in val]


class ConverSegDataModule(LitSegDataModule):
    """ConverSeg training JSONL + evaluation items.json / HF dataset.

    Args:
        root: dataset root; ``train_jsonl`` and relative ``val`` / ``test`` resolve against it.
        train_jsonl: training JSONL relative to ``root`` (e.g. ``dataset.jsonl``); None = no train
            split (evaluation only).
        val: items.json, ``*.jsonl`` or local HF dataset folder for validation; None = a hash
            split of the training samples (``val_fraction``).
        test: the same kinds, for ``test`` / ``predict``; None = no test split.
        val_fraction: share of the training samples held out for val when ``val`` is None
            (upstream 0.01; at least one sample).
        hf_split: with a HF folder, only this split (``sam_seeded`` / ``human_annotated``);
            None = all of them.
        batch_size: samples per batch (upstream trains with 4).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle and of the val hash split.
        max_samples: keep only the first N samples of each split (tests, demos); None = all.
        size: letterbox side (1024 for SAM2; smaller only for CPU tests).
        target_size: target side (256 = SAM2 low-res masks).
    """

    def __init__(self, root: str, train_jsonl: str | None = "dataset.jsonl", val: str | None = None,
                 test: str | None = None, val_fraction: float = 0.01, hf_split: str | None = None,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, max_samples: int | None = None,
                 size: int = SIZE, target_size: int = TARGET_SIZE) -> None:
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(KEY_PREFIX + "val_fraction", f"must be in (0, 1), got {val_fraction}")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(KEY_PREFIX + "max_samples", f"must be >= 1 or null, got {max_samples}")
        if size % target_size:
            raise ConfigError(KEY_PREFIX + "target_size", f"{target_size} must divide size {size}")
        self.train_jsonl = train_jsonl
        self.val = val
        self.test = test
        self.val_fraction = val_fraction
        self.hf_split = hf_split
        self.max_samples = max_samples
        self.size = size
        self.target_size = target_size
        self.datasets: dict[str, ConverSegSamples] = {}
        self.empty_prompts: dict[str, int] = {}  # split -> prompts replaced by "segment" (set by setup)
        self.empty_masks: dict[str, int] = {}  # split -> samples whose mask has no foreground
        self._train_all: list[Sample] | None = None

    # ------------------------------------------------------------------ samples

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.root / p

    def _training_samples(self) -> list[Sample]:
        if self._train_all is None:
            if self.train_jsonl is None:
                raise ConfigError(KEY_PREFIX + "train_jsonl", "not set, but the train split (or a val split "
                                                              "carved from it) is needed")
            self.check_root()
            self._train_all = read_train_jsonl(self._path(self.train_jsonl))
        return self._train_all

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of ``train`` / ``val`` / ``test`` (before ``max_samples``)."""
        if split == "test":
            if self.test is None:
                raise ConfigError(KEY_PREFIX + "test", "not set, but the test split is needed")
            return read_samples(self._path(self.test), self.hf_split if self._path(self.test).is_dir() else None)
        if self.val is not None:  # an explicit val set: every training sample trains
            if split == "val":
                return read_samples(self._path(self.val), self.hf_split if self._path(self.val).is_dir() else None)
            return self._training_samples()
        train, val = hash_split(self._training_samples(), self.val_fraction, self.seed)
        return train if split == "train" else val

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Read the splits ``stage`` uses and check every sample before the first step.

        Each sample's image and mask are decoded with the item reader: missing or unreadable
        files and masks of another size than their image are all reported together. File pairs
        unchanged since they passed are not decoded again (:meth:`LitSegDataModule.check_files`);
        in-memory HF samples are checked directly. Logs per split the sample count, the empty
        prompts replaced by "segment" and the empty masks.
        """
        splits = [s for s in STAGE_SPLITS.get(stage, STAGE_SPLITS[None])
                  if not (stage is None and s == "test" and self.test is None)]
        samples = {}
        for split in splits:
            found = self.split_samples(split)
            samples[split] = found if self.max_samples is None else found[: self.max_samples]
        checks: dict[str, FileCheck] = {}
        direct: list[Sample] = []
        for split in splits:
            for s in samples[split]:
                if isinstance(s.image, Path) and isinstance(s.mask, Path):
                    key = check_key(PAIR_RULE, s.image, s.mask)
                    checks.setdefault(key, FileCheck(key, (s.image, s.mask), functools.partial(_pair_info, s)))
                else:
                    direct.append(s)
        what = f"ConverSeg {' + '.join(splits)}"
        report = self.check_files(list(checks.values()), what)
        problems = list(report.problems)
        direct_info: dict[str, Any] = {}
        for s in direct:
            try:
                direct_info[s.where] = _pair_info(s)
            except DataError as err:
                problems.append(err)
        raise_problems(problems, self.root, f"{what}, checked before the first step")
        for split in splits:
            infos = [report.infos[check_key(PAIR_RULE, s.image, s.mask)] if s.where not in direct_info
                     else direct_info[s.where] for s in samples[split]]
            self.empty_prompts[split] = count_empty_prompts(samples[split])
            self.empty_masks[split] = sum(bool(info["empty"]) for info in infos)
            self.datasets[split] = ConverSegSamples(samples[split], self.size, self.target_size)
            rank_zero_info(f"ConverSeg {split}: {len(samples[split])} samples, {self.empty_prompts[split]} empty "
                           f"prompt(s) replaced by 'segment', {self.empty_masks[split]} empty mask(s)")

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self):
        return self.make_loader(self.datasets["train"], shuffle=True, collate_fn=collate)

    def val_dataloader(self):
        return self.make_loader(self.datasets["val"], shuffle=False, collate_fn=collate)

    def test_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate)

    def predict_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate)


__all__ = ["ConverSegDataModule", "ConverSegSamples", "collate", "hash_split", "make_item"]
