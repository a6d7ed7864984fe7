"""The open-set protocol of SemSeg (``shared/specs/semseg.md`` §2, §5, acceptance items 1, 13, 14).

Pure functions and constants, shared by the DataModule, the model and the evaluator so that all
three use **one** known-id list:

* known index of a category = its position in the **sorted** known-id list (``0..K-1``);
  background = ``K`` (ROI-head label remap, acceptance item 13);
* every other category of a file is "unknown": it is dropped from the training targets and
  merged into category :data:`UNKNOWN_ID` (1000) in the evaluation ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from litseg.io import ConfigError

__all__ = [
    "GRASPNET_KNOWN_IDS",
    "UNKNOWN_ID",
    "UNKNOWN_NAME",
    "VOC_KNOWN_COCO_IDS",
    "check_known_ids",
    "known_index_map",
    "open_set_gt",
]

# The 20 VOC-equivalent COCO classes (COCO category ids): person 1, bicycle 2, car 3, motorcycle 4,
# airplane 5, bus 6, train 7, boat 9, bird 16, cat 17, dog 18, horse 19, sheep 20, cow 21,
# bottle 44, chair 62, couch 63, potted plant 64, dining table 67, tv 72.
VOC_KNOWN_COCO_IDS: tuple[int, ...] = tuple(sorted((5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20,
                                                    63, 7, 72)))
# The 28 known GraspNet-OSIS objects of 88 (ids as in ``graspnet_meta.py``).
GRASPNET_KNOWN_IDS: tuple[int, ...] = (1, 3, 6, 8, 9, 10, 12, 15, 18, 19, 21, 22, 23, 27, 28, 30, 31, 39, 42, 49,
                                       52, 53, 59, 61, 62, 63, 64, 67)
UNKNOWN_ID = 1000
UNKNOWN_NAME = "unknown"


def check_known_ids(known_ids: Iterable[Any], category_ids: Iterable[int], key: str, source: str | None = None,
                    *, config_source: str | None = None) -> tuple[int, ...]:
    """Validate a known-class list against the category ids of a file; returns it sorted.

    Every entry must be an integer (not a bool or float), listed once, not :data:`UNKNOWN_ID`,
    and a category id of the file. All problems go into one :class:`~litseg.io.ConfigError`
    naming ``key`` (e.g. ``data.init_args.known_ids``); ``source`` (the annotation file the ids
    come from) is named in the problem, ``config_source`` (the config file that set ``key``,
    when known) is the error's source.
    """
    entries = list(known_ids)
    available = {int(c) for c in category_ids}
    where = f" of {source}" if source else ""
    problems: list[str] = []
    if not entries:
        problems.append("is empty (at least one known class is needed)")
    bad_type = [e for e in entries if isinstance(e, bool) or not isinstance(e, (int, np.integer))]
    if bad_type:
        problems.append(f"entries must be integer category ids, got {bad_type[:5]!r}")
    ints = [int(e) for e in entries if not (isinstance(e, bool) or not isinstance(e, (int, np.integer)))]
    repeated = sorted({e for e in ints if ints.count(e) > 1})
    if repeated:
        problems.append(f"lists {repeated} more than once")
    if UNKNOWN_ID in ints:
        problems.append(f"contains {UNKNOWN_ID}, the id reserved for the merged unknown class")
    absent = sorted({e for e in ints if e not in available and e != UNKNOWN_ID})
    if absent:
        problems.append(f"{len(absent)} id(s) {absent[:10]} are not category ids{where} "
                        f"(it has {len(available)}: {sorted(available)[:20]}"
                        f"{' ...' if len(available) > 20 else ''})")
    if problems:
        raise ConfigError(key, "; ".join(problems), config_source)
    return tuple(sorted(ints))


def known_index_map(known_ids: Sequence[int]) -> dict[int, int]:
    """Category id -> known index ``0..K-1`` (position in the sorted list); background is ``K``."""
    return {c: i for i, c in enumerate(sorted(int(c) for c in known_ids))}


def open_set_gt(coco_dict: Mapping[str, Any], known_ids: Iterable[int], key: str = "known_ids") -> dict[str, Any]:
    """The open-set evaluation ground truth of a COCO instances dict.

    Annotations of known categories keep their category id; every other annotation is
    relabelled to :data:`UNKNOWN_ID`. Crowd annotations stay, with their ``iscrowd`` flag (the
    evaluator ignores detections on them). ``categories`` = the known categories (ascending id,
    as in the file) + ``{"id": 1000, "name": "unknown"}``. Images and any other top-level keys
    are kept; the input is not modified (annotation dicts are shallow-copied).
    """
    cats = list(coco_dict["categories"])
    known = set(check_known_ids(known_ids, [c["id"] for c in cats], key))
    annotations = []
    for ann in coco_dict["annotations"]:
        new = dict(ann)
        if new["category_id"] not in known:
            new["category_id"] = UNKNOWN_ID
        annotations.append(new)
    categories = sorted((dict(c) for c in cats if c["id"] in known), key=lambda c: c["id"])
    categories.append({"id": UNKNOWN_ID, "name": UNKNOWN_NAME, "supercategory": UNKNOWN_NAME})
    out = {k: v for k, v in coco_dict.items() if k not in ("images", "annotations", "categories")}
    out.update(images=[dict(i) for i in coco_dict["images"]], annotations=annotations, categories=categories)
    return out
