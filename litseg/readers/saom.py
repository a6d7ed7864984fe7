"""SAOM metadata JSON reader (``shared/specs/saom.md`` §5).

The upstream loader (SAOM code: ``dataset/SCDTrack2PhD.py``) reads one JSON per model variant::

    {"entity classes": [str, ...],                       # note the space in the key
     "<split>_data": [{"image_name": str,                # joined to the data root (os.path.join)
                       "entity_masks": [str, ...],       # data_root + str upstream: starts with '/'
                       "entity_indices": [int, ...]},    # class index per mask
                      ...]}                              # splits train / val / test

with one PNG per object instance at image resolution, foreground = red channel > 0.

:meth:`SaomMetadata.load` parses the file with :func:`litseg.io.read_json` (no pickle) and validates
every record of the requested splits at once; all problems come back as one
:class:`~litseg.io.DataError` that starts with the JSON file, gives the count and lists the
first ten, each naming the split, the record index and the offending value. Image and mask
files are not opened here: :func:`read_instance_mask` and the DataModule's up-front check do that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from litseg.io import DataError, read_json, read_mask

__all__ = ["CLASSES_KEY", "SPLITS", "SaomMetadata", "SaomRecord", "read_instance_mask", "split_key"]

CLASSES_KEY = "entity classes"
RECORD_KEYS = ("image_name", "entity_masks", "entity_indices")
SPLITS = ("train", "val", "test")
MAX_SHOWN = 10  # problems listed in the error message (the count covers all of them)


def split_key(split: str) -> str:
    """The JSON key of a split's records (the upstream loader reads ``f"{split}_data"``)."""
    return f"{split}_data"


@dataclass(frozen=True)
class SaomRecord:
    """One image of a split with its instance masks, in metadata order.

    ``masks[i]`` has class index ``labels[i]``; ``index`` is the record's position in
    ``"<split>_data"`` (for messages).
    """

    split: str
    index: int
    image_name: str
    image: Path
    masks: tuple[Path, ...]
    labels: tuple[int, ...]

    @property
    def mask_names(self) -> tuple[str, ...]:
        """Mask file basenames without extension (upstream derives the object name from them)."""
        return tuple(p.stem for p in self.masks)

    @property
    def where(self) -> str:
        return f"{split_key(self.split)}[{self.index}]"


def read_instance_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """``H x W`` bool instance mask: red channel > 0 of an RGB PNG (SAOM code:
    ``dataset/SCDTrack2PhD.py`` reads the masks as colour and keeps channel 0 > 0); a single-channel
    or palette PNG counts its value / index > 0."""
    return read_mask(path, mode="first_channel") > 0


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem_message(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    head = f"{len(problems)} problems in this SAOM metadata file"
    head += f" (first {MAX_SHOWN} shown):" if len(problems) > MAX_SHOWN else ":"
    lines = [head, *(f"  {p}" for p in problems[:MAX_SHOWN])]
    if len(problems) > MAX_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_SHOWN} more")
    return "\n".join(lines)


class SaomMetadata:
    """A validated SAOM metadata file: ``classes`` and the records of the loaded splits."""

    def __init__(self, path: Path, root: Path, classes: Sequence[str], records: Mapping[str, Sequence[SaomRecord]]):
        """Trusted constructor (no validation): use :meth:`load` or :meth:`from_dict`."""
        self.path = path
        self.root = root
        self.classes: list[str] = list(classes)
        self._records = {s: list(r) for s, r in records.items()}

    @classmethod
    def load(cls, json_path: str | os.PathLike[str], root: str | os.PathLike[str],
             splits: Iterable[str] = SPLITS) -> SaomMetadata:
        """Read ``json_path`` and validate ``"entity classes"`` and every record of ``splits``.

        Paths resolve like the upstream loader: ``image_name`` joined to ``root`` (an absolute
        name stays absolute, as with ``os.path.join``); each ``entity_masks`` entry is
        ``root + entry`` upstream, so its leading '/' is dropped and it is joined to ``root``.
        """
        return cls.from_dict(read_json(json_path), json_path, root, splits)

    @classmethod
    def from_dict(cls, data: Any, json_path: str | os.PathLike[str], root: str | os.PathLike[str],
                  splits: Iterable[str] = SPLITS) -> SaomMetadata:
        """Validate an already parsed metadata document; ``json_path`` names it in errors."""
        path, root = Path(json_path), Path(root)
        if not isinstance(data, dict):
            raise DataError(path, f"expected a SAOM metadata JSON object with {CLASSES_KEY!r} and "
                                  f"'<split>_data' keys, got a JSON {type(data).__name__}")
        problems: list[str] = []
        classes = data.get(CLASSES_KEY)
        if CLASSES_KEY not in data:
            problems.append(f"top level: missing key {CLASSES_KEY!r} (the class names, index = label)")
            classes = None
        elif not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
            problems.append(f"{CLASSES_KEY!r} must be a non-empty list of class names, got {_describe(classes)}")
            classes = None
        elif len(set(classes)) != len(classes):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            problems.append(f"{CLASSES_KEY!r} lists a class twice: {twice}")
        records: dict[str, list[SaomRecord]] = {}
        mask_owner: dict[Path, str] = {}  # a mask file belongs to exactly one instance
        for split in splits:
            key = split_key(split)
            if key not in data:
                present = sorted(k for k in data if k.endswith("_data"))
                problems.append(f"top level: missing key {key!r} (the {split} split; present: {present})")
                continue
            raws = data[key]
            if not isinstance(raws, list):
                problems.append(f"{key!r} must be a list of records, got a JSON {type(raws).__name__}")
                continue
            records[split] = [rec for k, raw in enumerate(raws)
                              if (rec := _parse_record(raw, split, k, root, classes, problems, mask_owner))]
        if problems:
            raise DataError(path, _problem_message(problems))
        assert classes is not None
        return cls(path, root, classes, records)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits loaded (and validated)."""
        return tuple(self._records)

    def records(self, split: str) -> list[SaomRecord]:
        try:
            return list(self._records[split])
        except KeyError:
            raise KeyError(f"{self.path}: split {split!r} was not loaded (loaded: {list(self._records)})") from None

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(r)}" for s, r in self._records.items())
        return f"SaomMetadata({str(self.path)!r}, classes={len(self.classes)}, {counts})"


def _parse_record(raw: Any, split: str, k: int, root: Path, classes: list[str] | None, problems: list[str],
                  mask_owner: dict[Path, str]) -> SaomRecord | None:
    where = f"{split_key(split)}[{k}]"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a record object, got {_describe(raw)}")
        return None
    absent = [key for key in RECORD_KEYS if key not in raw]
    if absent:
        problems.append(f"{where}: missing key{'s' if len(absent) > 1 else ''} " + ", ".join(map(repr, absent)))
        return None
    name, masks, indices = raw["image_name"], raw["entity_masks"], raw["entity_indices"]
    bad: list[str] = []
    if not (isinstance(name, str) and name):
        bad.append(f"'image_name' must be a non-empty string, got {_describe(name)}")
    if not (isinstance(masks, list) and all(isinstance(m, str) and m.strip("/") for m in masks)):
        bad.append(f"'entity_masks' must be a list of mask paths, got {_describe(masks)}")
    if not isinstance(indices, list):
        bad.append(f"'entity_indices' must be a list of class indices, got {_describe(indices)}")
    else:
        for j, value in enumerate(indices):
            if type(value) is not int:  # bool and 1.0 are not class indices
                bad.append(f"entity_indices[{j}] = {_describe(value)} is not an integer class index")
            elif classes is not None and not 0 <= value < len(classes):
                bad.append(f"entity_indices[{j}] = {value} is out of range (0..{len(classes) - 1}, "
                           f"{len(classes)} entity classes)")
    if isinstance(masks, list) and isinstance(indices, list) and len(masks) != len(indices):
        bad.append(f"{len(masks)} entity_masks but {len(indices)} entity_indices (one class index per mask)")
    paths: list[Path] = []
    if isinstance(masks, list) and all(isinstance(m, str) and m.strip("/") for m in masks):
        for j, entry in enumerate(masks):  # checked even when the record has other problems
            # SAOM code: dataset/SCDTrack2PhD.py concatenates data_path + entry (entries start with '/').
            mask = root / entry.lstrip("/")
            if mask in mask_owner:
                bad.append(f"entity_masks[{j}] {entry!r} is also the mask of {mask_owner[mask]}")
            else:
                mask_owner[mask] = f"{where} entity_masks[{j}]"
            paths.append(mask)
    if bad:
        problems.append(f"{where}: " + "; ".join(bad))
        return None
    # Path("/r") / "/abs" == Path("/abs"), like os.path.join: an absolute image_name stays absolute.
    return SaomRecord(split, k, name, root / name, tuple(paths), tuple(indices))
