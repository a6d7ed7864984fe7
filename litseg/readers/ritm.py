"""Readers of the interactive-segmentation benchmark sets (RITM / RClicks layouts): GrabCut, Berkeley, DAVIS,
COCO_MVal, TETRIS, PREVIEW. Layouts and mask encodings: see ``datamodules/interactive.py``; the Lightning
side (splits, loaders, DDP) lives there, the file reading here, shared with RClicks' click-map data."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

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
