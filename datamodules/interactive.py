"""Test sets of the interactive-segmentation benchmark (RITM / RClicks layouts).

``root`` holds one folder per dataset, named as in the registry :data:`DATASETS`::

    <root>/GrabCut/data_GT/*.{jpg,JPG,bmp}   <root>/GrabCut/boundary_GT/<stem>.bmp
    <root>/Berkeley/images/*.jpg             <root>/Berkeley/masks/<stem>.png
    <root>/DAVIS/img/*.jpg                   <root>/DAVIS/gt/<stem>.png
    <root>/COCO_MVal/img/*.jpg               <root>/COCO_MVal/gt/<stem>.png
    <root>/TETRIS/images/*                   <root>/TETRIS/masks/<stem>.png
    <root>/PREVIEW/images/*                  <root>/PREVIEW/masks/<stem>.png

Mask encodings (RClicks spec note 5.1):

* ``grabcut`` (GrabCut, Berkeley): first channel; 128 = ignore, > 128 = object.
* ``nonzero`` (DAVIS, COCO_MVal): a pixel is object when the maximum over its colour
  channels is > 0 (palette PNGs through their palette, as ``cv2.imread`` reads them) or
  its palette index is > 0; one instance per image.
* ``rgb_ids`` (TETRIS, PREVIEW): an RGB PNG of instance ids, every non-zero id is one
  instance; image and masks are limited to a longest side of 2048 (per-id bilinear
  resize, then re-labelled).

A sample is one image with all its instance masks and one shared ignore mask; the loader
yields it un-batched (one image per step). Under DDP each rank takes the images
``rank, rank + world_size, ...`` with no padding, so no instance is evaluated twice.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from datamodules.base import LitSegDataModule
from litseg.io import (
    DataError,
    FileCheck,
    check_key,
    check_same_size,
    index_by_stem,
    list_images,
    raise_problems,
    read_image,
    read_mask,
)

MaskEncoding = Literal["grabcut", "nonzero", "rgb_ids"]


@dataclass(frozen=True)
class DatasetLayout:
    image_dir: str
    mask_dir: str
    encoding: MaskEncoding
    clicks_name: str  # the dataset's name in RClicks' clicks.csv
    max_side: int | None = None  # longest-side limit of image and mask


DATASETS: dict[str, DatasetLayout] = {
    "GrabCut": DatasetLayout("data_GT", "boundary_GT", "grabcut", "GrabCut"),
    "Berkeley": DatasetLayout("images", "masks", "grabcut", "Berkeley"),
    "DAVIS": DatasetLayout("img", "gt", "nonzero", "DAVIS"),
    "COCO_MVal": DatasetLayout("img", "gt", "nonzero", "COCO"),
    "TETRIS": DatasetLayout("images", "masks", "rgb_ids", "TETRIS", max_side=2048),
    "PREVIEW": DatasetLayout("images", "masks", "rgb_ids", "PREVIEW", max_side=2048),
}
DatasetName = Literal["GrabCut", "Berkeley", "DAVIS", "COCO_MVal", "TETRIS", "PREVIEW"]


@dataclass(frozen=True)
class ImageRecord:
    dataset: str
    stem: str
    image: Path
    mask: Path


def find_dataset(root: Path, name: str) -> tuple[list[ImageRecord], list[DataError]]:
    """The image / mask pairs of ``<root>/<name>`` by stem (sorted by image file name), and a
    problem for every image without a mask and every mask without an image."""
    if name not in DATASETS:
        raise DataError(root / name, f"unknown dataset '{name}'; known: {sorted(DATASETS)}")
    layout = DATASETS[name]
    folder = root / name
    if not folder.is_dir():
        raise DataError(folder, f"dataset folder not found (expected {layout.image_dir}/ and {layout.mask_dir}/ in it)")
    image_dir, mask_dir = folder / layout.image_dir, folder / layout.mask_dir
    images = index_by_stem(list_images(image_dir), image_dir)
    masks = index_by_stem(list_images(mask_dir), mask_dir)
    if not images:
        raise DataError(image_dir, "no images found")
    problems = [DataError(path, f"missing mask: no file with stem '{stem}' in {mask_dir}")
                for stem, path in images.items() if stem not in masks]
    problems += [DataError(path, f"mask without image: no file with stem '{stem}' in {image_dir}")
                 for stem, path in masks.items() if stem not in images]
    return [ImageRecord(name, stem, path, masks[stem]) for stem, path in images.items() if stem in masks], problems


def scan_dataset(root: Path, name: str) -> list[ImageRecord]:
    """Pair the images and masks of ``<root>/<name>`` by stem (sorted by image file name); any
    unpaired file is an error (all of them are listed)."""
    records, problems = find_dataset(root, name)
    raise_problems(problems, root / name, f"image / mask pairing of {name}")
    return records


def limited_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(h, w)`` with the longest side at most ``max_side`` (RClicks' rounding: ``int(x + 0.5)``)."""
    if height > width:
        new_h = min(height, max_side)
        return new_h, int(width / height * new_h + 0.5)
    new_w = min(width, max_side)
    return int(height / width * new_w + 0.5), new_w


def decode_ids(rgb: np.ndarray) -> np.ndarray:
    """Instance ids of an RGB id PNG (``H x W x 3`` in RGB order) as int64.

    RClicks reads the PNG with ``cv2.imread`` (BGR) and takes ``ch0 * 65536 + ch1 * 256 +
    ch2``, i.e. ``B * 65536 + G * 256 + R`` in RGB terms; we keep exactly that reading so
    ids, and thus the ``<stem>_______<id>`` keys of clicks.csv, match theirs.
    """
    rgb = rgb.astype(np.int64)
    return rgb[..., 2] * 65536 + rgb[..., 1] * 256 + rgb[..., 0]


def resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an id map per id (bilinear on the 0/1 mask, rounded by cv2), later ids on top."""
    out = np.zeros((height, width), dtype=ids.dtype)
    for value in np.unique(ids):
        if value == 0:
            continue
        resized = cv2.resize((ids == value).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
        out[resized > 0] = value
    return out


def load_sample(record: ImageRecord) -> dict[str, Any]:
    """Read one image with its instance masks.

    Returns ``dataset``, ``image_stem``, ``image`` (``H x W x 3`` uint8), ``instance_ids``
    (list of int), ``instances`` (list of bool ``H x W``), ``ignore`` (bool ``H x W``).
    """
    layout = DATASETS[record.dataset]
    image = read_image(record.image)
    if layout.encoding == "grabcut":
        raw = read_mask(record.mask, "first_channel")
        check_same_size(image, raw, record.mask)
        ids = (raw > 128).astype(np.int64)  # one instance, id 1 (as RITM)
        ignore = raw == 128
    elif layout.encoding == "nonzero":
        rgb = read_mask(record.mask, "rgb")
        check_same_size(image, rgb, record.mask)
        # "first_channel" gives palette indices for palette PNGs, so index > 0 also counts.
        obj = ((rgb[..., 0] | rgb[..., 1] | rgb[..., 2]) > 0) | (read_mask(record.mask, "first_channel") > 0)
        ids = obj.astype(np.int64)
        ignore = np.zeros(obj.shape, dtype=bool)
    else:
        ids = decode_ids(read_mask(record.mask, "rgb"))
        check_same_size(image, ids, record.mask)
        ignore = np.zeros(ids.shape, dtype=bool)
    if layout.encoding == "rgb_ids":
        present = [int(v) for v in np.unique(ids) if v != 0]
    else:  # one instance, id 1 (np.unique of a large 0/1 map is needlessly slow)
        present = [1] if ids.any() else []
    if not present:
        raise DataError(record.mask, "empty mask: no object pixels")
    if layout.max_side is not None and max(image.shape[:2]) > layout.max_side:
        height, width = limited_size(*image.shape[:2], layout.max_side)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        ids = resize_ids(ids, height, width)
        ignore = np.zeros((height, width), dtype=bool)
        kept = [int(v) for v in np.unique(ids) if v != 0]
        lost = sorted(set(present) - set(kept))
        if lost:
            # RClicks drops them silently; we keep its behaviour but say so.
            warnings.warn(f"{record.mask}: instance id(s) {lost} vanish when resized to {width}x{height}; skipped",
                          stacklevel=2)
        present = kept
    return {
        "dataset": record.dataset,
        "image_stem": record.stem,
        "image": image,
        "instance_ids": present,
        "instances": [ids == v for v in present],
        "ignore": ignore,
    }


# Version of the up-front check's rule (bump when load_sample's checks change).
CHECK_RULE = "ritm-sample/1"


@dataclass(frozen=True)
class ImageSummary:
    """What the up-front check learns of one image: its loaded size and instance ids."""

    height: int
    width: int
    instance_ids: tuple[int, ...]


def check_record(record: ImageRecord) -> dict[str, Any]:
    """Load the sample exactly as the benchmark does (decode, sizes, encoding, empty mask,
    longest-side limit); returns its loaded ``size`` and ``instance_ids``."""
    sample = load_sample(record)
    height, width = sample["image"].shape[:2]
    return {"size": [int(height), int(width)], "instance_ids": [int(i) for i in sample["instance_ids"]]}


def record_check(record: ImageRecord) -> FileCheck:
    rule = f"{CHECK_RULE}:{record.dataset}"  # the dataset fixes the encoding and the size limit
    return FileCheck(check_key(rule, record.image, record.mask), (record.image, record.mask),
                     functools.partial(check_record, record))


def summaries(records: Sequence[ImageRecord], infos: dict[str, Any]) -> dict[tuple[str, str], ImageSummary]:
    """``(dataset, stem) -> ImageSummary`` of the records whose check passed."""
    out = {}
    for record in records:
        info = infos.get(record_check(record).key)
        if info is not None:
            out[(record.dataset, record.stem)] = ImageSummary(*info["size"], tuple(info["instance_ids"]))
    return out


class InteractiveSegmentationSet(Dataset):
    """The images of several benchmark datasets, in dataset then file-name order."""

    def __init__(self, records: list[ImageRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return load_sample(self.records[index])


def single_sample(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for batch size 1: the sample dict itself, un-batched (numpy arrays kept)."""
    if len(batch) != 1:
        raise ValueError(f"the interactive benchmark evaluates one image per step, got a batch of {len(batch)}")
    return batch[0]


class InteractiveDataModule(LitSegDataModule):
    """Test data of the interactive-segmentation benchmark (one image per step).

    Args:
        root: folder holding one ``<Name>/`` folder per dataset.
        datasets: dataset names from :data:`DATASETS`, evaluated in this order.
        max_images: evaluate only the first N images (by file name) of each dataset.
        num_workers: DataLoader workers (images are decoded in the workers).
        seed: unused by the benchmark (click randomness is seeded per image by the module).
    """

    def __init__(
        self,
        root: str,
        datasets: list[DatasetName],
        max_images: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(root=root, batch_size=1, num_workers=num_workers, seed=seed)
        if not datasets:
            raise ValueError("datasets must name at least one dataset")
        for name in datasets:
            if name not in DATASETS:
                raise DataError(self.root / name, f"unknown dataset '{name}'; known: {sorted(DATASETS)}")
        if len(set(datasets)) != len(datasets):
            raise ValueError(f"datasets lists a name twice: {datasets}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.datasets = list(datasets)
        self.max_images = max_images
        self.test_set: InteractiveSegmentationSet | None = None
        # Filled by setup(): every evaluated image's loaded size and instance ids, and per
        # dataset the stems left out by max_images (user mode checks clicks.csv against them).
        self.summaries: dict[tuple[str, str], ImageSummary] = {}
        self.left_out: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Pair the files and check every image and mask the test loop will read, before it
        starts: one error lists every problem (files unchanged since they passed are not read
        again, see :meth:`LitSegDataModule.check_files`)."""
        self.check_root()
        records: list[ImageRecord] = []
        problems: list[DataError] = []
        left_out: dict[str, list[str]] = {}
        for name in self.datasets:
            found, unpaired = find_dataset(self.root, name)
            problems += unpaired
            chosen = found[: self.max_images] if self.max_images is not None else found
            left_out[name] = [r.stem for r in found[len(chosen):]]
            records.extend(chosen)
        what = " + ".join(self.datasets)
        report = self.check_files([record_check(r) for r in records], what)
        raise_problems(problems + report.problems, self.root,
                       f"{what} ({len(records)} images), checked before the first step")
        self.summaries = summaries(records, report.infos)
        self.left_out = left_out
        self.test_set = InteractiveSegmentationSet(records)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        assert self.test_set is not None
        # make_loader gives an unpadded sampler under DDP: each instance is evaluated once.
        return self.make_loader(self.test_set, shuffle=False, collate_fn=single_sample, batch_size=1)
