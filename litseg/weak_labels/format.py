"""The weak-label file (WSSS study on Oxford-IIIT Pet): format, loading and validation.

One JSON file (never pickle: loading a pickle runs code), written by
``python -m litseg.weak_labels``::

    {"format": "litseg-weak-labels", "version": 1,
     "generator": {"seed": 0, "min_object_fraction": 0.005, ...every parameter...},
     "source_root": "/abs/path/to/oxford_pet",
     "images": {"<stem>": {
         "height": H, "width": W,
         "objects": [{"point": [x, y], "box": [x0, y0, x1, y1], "scribble": [[x, y], ...]}, ...],
         "background_points": [[x, y], ...],
         "background_scribbles": [[[x, y], ...], ...]}}}

Coordinates are integer pixel indices (x = column, y = row); boxes are inclusive.
Labels are class-agnostic: objects are "the image's pet", the rest is background.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litseg.io import DataError, read_json

FORMAT_NAME = "litseg-weak-labels"
FORMAT_VERSION = 1

Point = tuple[int, int]
Scribble = tuple[Point, ...]


@dataclass(frozen=True)
class WeakObject:
    """One object (pet component): a point inside it, its tight box, a scribble inside it."""

    point: Point
    box: tuple[int, int, int, int]
    scribble: Scribble


@dataclass(frozen=True)
class ImageWeakLabels:
    """Weak labels of one image, at its original resolution."""

    stem: str
    height: int
    width: int
    objects: tuple[WeakObject, ...]
    background_points: tuple[Point, ...]
    background_scribbles: tuple[Scribble, ...]
    source: Path  # the file these came from, for error messages

    @property
    def has_object(self) -> bool:
        """The image-level tag: is the (class-agnostic) foreground present?"""
        return bool(self.objects)

    @property
    def fg_points(self) -> list[Point]:
        return [o.point for o in self.objects]

    @property
    def fg_scribbles(self) -> list[Scribble]:
        return [o.scribble for o in self.objects]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects]


class _Checker:
    """Validates one image entry; every error names the file and the stem."""

    def __init__(self, path: Path, stem: str) -> None:
        self.path, self.stem = path, stem

    def fail(self, problem: str) -> DataError:
        return DataError(self.path, f"image '{self.stem}': {problem}")

    def integer(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{what} must be an integer, got {value!r}")
        return value

    def listing(self, value: Any, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{what} must be a list, got {type(value).__name__}")
        return value

    def point(self, value: Any, what: str, height: int, width: int) -> Point:
        items = self.listing(value, what)
        if len(items) != 2:
            raise self.fail(f"{what} must be [x, y], got {value!r}")
        x, y = (self.integer(v, what) for v in items)
        if not (0 <= x < width and 0 <= y < height):
            raise self.fail(f"{what} {value} is outside the {width}x{height} image")
        return x, y

    def scribble(self, value: Any, what: str, height: int, width: int) -> Scribble:
        vertices = self.listing(value, what)
        if not vertices:
            raise self.fail(f"{what} has no vertices")
        return tuple(self.point(v, f"{what} vertex {i}", height, width) for i, v in enumerate(vertices))

    def entry(self, entry: Any) -> ImageWeakLabels:
        if not isinstance(entry, dict):
            raise self.fail("entry must be an object")
        missing = [k for k in ("height", "width", "objects", "background_points", "background_scribbles")
                   if k not in entry]
        if missing:
            raise self.fail(f"missing field(s) {missing}")
        height, width = self.integer(entry["height"], "height"), self.integer(entry["width"], "width")
        if height < 1 or width < 1:
            raise self.fail(f"size {width}x{height} is not positive")
        objects = []
        for i, obj in enumerate(self.listing(entry["objects"], "objects")):
            if not isinstance(obj, dict) or {"point", "box", "scribble"} - obj.keys():
                raise self.fail(f"object {i} must have 'point', 'box' and 'scribble'")
            box_items = self.listing(obj["box"], f"object {i} box")
            if len(box_items) != 4:
                raise self.fail(f"object {i} box must be [x0, y0, x1, y1], got {obj['box']!r}")
            x0, y0 = self.point(box_items[:2], f"object {i} box corner", height, width)
            x1, y1 = self.point(box_items[2:], f"object {i} box corner", height, width)
            if x1 < x0 or y1 < y0:
                raise self.fail(f"object {i} box {box_items} has x1 < x0 or y1 < y0")
            objects.append(WeakObject(
                point=self.point(obj["point"], f"object {i} point", height, width),
                box=(x0, y0, x1, y1),
                scribble=self.scribble(obj["scribble"], f"object {i} scribble", height, width),
            ))
        bg_points = tuple(self.point(p, f"background point {i}", height, width)
                          for i, p in enumerate(self.listing(entry["background_points"], "background_points")))
        bg_scribbles = tuple(
            self.scribble(s, f"background scribble {i}", height, width)
            for i, s in enumerate(self.listing(entry["background_scribbles"], "background_scribbles")))
        return ImageWeakLabels(self.stem, height, width, tuple(objects), bg_points, bg_scribbles, self.path)


def load_weak_labels(path: str | os.PathLike[str],
                     expected_stems: Iterable[str] | None = None) -> dict[str, ImageWeakLabels]:
    """Load and validate a weak-label file.

    With ``expected_stems`` (the dataset's, or a split's), every one of them must be in the
    file; extra stems in the file are fine (a split uses a whole-dataset file).
    """
    path = Path(path)
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise DataError(path, f"not a weak-label file: format is {found!r}, expected {FORMAT_NAME!r}")
    if document.get("version") != FORMAT_VERSION:
        raise DataError(path, f"unsupported weak-label format version {document.get('version')!r}; this code "
                              f"reads version {FORMAT_VERSION} (regenerate with python -m litseg.weak_labels)")
    images = document.get("images")
    if not isinstance(images, dict):
        raise DataError(path, "'images' must be an object mapping stem -> labels")
    if expected_stems is not None:
        missing = [s for s in expected_stems if s not in images]
        if missing:
            raise DataError(
                path,
                f"does not match the dataset: {len(missing)} image(s) have no weak labels, e.g. {missing[:5]} "
                "(regenerate it for this dataset with python -m litseg.weak_labels)",
            )
    return {stem: _Checker(path, stem).entry(entry) for stem, entry in images.items()}


def check_size(labels: Mapping[str, ImageWeakLabels], stem: str, height: int, width: int,
               path: str | os.PathLike[str]) -> None:
    """Raise a :class:`DataError` on ``path`` (the image) if its size differs from the file's record."""
    if stem not in labels:
        raise DataError(path, f"no weak labels for stem '{stem}'")
    record = labels[stem]
    if (record.height, record.width) != (height, width):
        raise DataError(
            path,
            f"image is {width}x{height} but the weak-label file {record.source} records "
            f"{record.width}x{record.height} for '{stem}' (labels generated from another version of the data?)",
        )
