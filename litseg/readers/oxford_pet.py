"""Reader of the Oxford-IIIT Pet layout (images/, annotations/trimaps/, optional list files): records, breeds,
label sets, trimap targets, reproducible splits. The Lightning side lives in ``datamodules/weak_unet.py``."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from litseg.imaging import IGNORE_INDEX
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
    read_stem_list,
)

# Official class ids 1..37 (annotations/list.txt order: case-insensitive alphabetical).
BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
    "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
    "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
    "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)
LabelSet = Literal["binary", "species", "breed"]
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
TRIMAP_VALUES = (TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER)


def class_names(label_set: LabelSet) -> list[str]:
    if label_set == "binary":
        return ["background", "pet"]
    if label_set == "species":
        return ["background", "cat", "dog"]
    return ["background", *BREEDS]


@dataclass(frozen=True)
class PetRecord:
    stem: str
    image: Path
    trimap: Path
    breed: str  # one of BREEDS
    is_cat: bool  # Oxford convention: breed names of cats start upper case

    def class_id(self, label_set: LabelSet) -> int:
        if label_set == "binary":
            return 1
        if label_set == "species":
            return 1 if self.is_cat else 2
        return BREEDS.index(self.breed) + 1


def breed_of(stem: str, path: Path) -> str:
    name = stem.rsplit("_", 1)[0]
    if name not in BREEDS:
        raise DataError(path, f"unknown breed '{name}' (expected <Breed>_<n> with one of the 37 Oxford-IIIT breeds)")
    return name


def read_trimap(path: str | os.PathLike[str], image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The one trimap reader: an Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border), checked.

    With ``image_shape`` its size must match the image; values outside {1, 2, 3} raise a
    :class:`DataError` naming the file and (up to five of) the bad values.
    """
    trimap = read_mask(path)
    if image_shape is not None:
        check_same_size(np.empty(image_shape), trimap, path)
    bad = ~np.isin(trimap, TRIMAP_VALUES)
    if bad.any():
        values = sorted(set(np.unique(trimap[bad]).tolist()))[:5]
        raise DataError(path, f"trimap values must be 1, 2 or 3; found {values}")
    return trimap


def read_trimap_target(record: PetRecord, image_shape: tuple[int, ...], label_set: LabelSet) -> np.ndarray:
    """Dense target: pet -> class id, background -> 0, border -> 255. Validates the trimap."""
    trimap = read_trimap(record.trimap, image_shape)
    target = np.full(trimap.shape, IGNORE_INDEX, dtype=np.uint8)
    target[trimap == 1] = record.class_id(label_set)
    target[trimap == 2] = 0
    return target


# Version of the up-front check's rule (bump when read_image / read_trimap_target change).
CHECK_RULE = "oxford-pet-trimap/1"


def check_record(record: PetRecord) -> dict[str, Any]:
    """Decode the image and its trimap with the training readers; returns ``{"size": [h, w]}``."""
    image = read_image(record.image)
    read_trimap_target(record, image.shape, "binary")  # sizes and values: the label set does not matter
    return {"size": [int(image.shape[0]), int(image.shape[1])]}


def record_check(record: PetRecord) -> FileCheck:
    return FileCheck(check_key(CHECK_RULE, record.image, record.trimap), (record.image, record.trimap),
                     functools.partial(check_record, record))


def find_pets(root: Path) -> tuple[list[PetRecord], list[DataError]]:
    """Every image with its trimap, and a problem for each image without one or with an unknown breed."""
    images = index_by_stem(list_images(root / "images"), root / "images")
    trimap_dir = root / "annotations" / "trimaps"
    if not trimap_dir.is_dir():
        raise DataError(trimap_dir, "trimap folder not found")
    records, problems = [], []
    for stem, img in images.items():
        trimap = trimap_dir / f"{stem}.png"
        if not trimap.is_file():
            problems.append(DataError(trimap, f"missing trimap for image {img.name}"))
            continue
        try:
            breed = breed_of(stem, img)
        except DataError as err:
            problems.append(err)
            continue
        records.append(PetRecord(stem, img, trimap, breed, is_cat=breed[0].isupper()))
    return records, problems


def scan_pets(root: Path) -> list[PetRecord]:
    """Every image with its trimap; an image without trimap is an error, never skipped."""
    records, problems = find_pets(root)
    raise_problems(problems, root, "image / trimap pairing of Oxford-IIIT Pet")
    return records


def split_stems(records: Sequence[PetRecord], root: Path, val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[str]]:
    """Train / val / test stems.

    With ``annotations/test.txt`` the test split is the official one and val is carved out of
    trainval; without lists, a seeded split stratified by species. Each stem's position comes
    from a hash of (seed, stem), so adding images never moves existing ones between splits.
    """
    def order(stems: list[str]) -> list[str]:
        return sorted(stems, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())

    known = {r.stem for r in records}
    test_list = root / "annotations" / "test.txt"
    if test_list.is_file():
        listed = read_stem_list(test_list, "test list", first_column=True)
        test = [s for s in listed if s in known]
        rest = [r for r in records if r.stem not in set(test)]
        groups = [[r.stem for r in rest if r.is_cat], [r.stem for r in rest if not r.is_cat]]
        fractions = {"val": val_fraction / max(1e-9, 1 - test_fraction) if test_fraction < 1 else 0.0}
        splits = {"train": [], "val": [], "test": sorted(test)}
        for g in groups:
            g = order(g)
            n_val = round(len(g) * min(1.0, fractions["val"]))
            splits["val"] += g[:n_val]
            splits["train"] += g[n_val:]
    else:
        splits = {"train": [], "val": [], "test": []}
        for g in ([r.stem for r in records if r.is_cat], [r.stem for r in records if not r.is_cat]):
            g = order(g)
            n_val, n_test = round(len(g) * val_fraction), round(len(g) * test_fraction)
            splits["val"] += g[:n_val]
            splits["test"] += g[n_val:n_val + n_test]
            splits["train"] += g[n_val + n_test:]
    return {k: sorted(v) for k, v in splits.items()}
