"""Open-set instance-segmentation metrics of SemSeg (``shared/specs/semseg.md`` §3, acceptance 14).

Three entry points:

* :func:`evaluate_open_set` - a pure function: COCO ground truth (all categories, known and
  unknown) + COCO result rows -> ``{"segm/AP_k": ..., "bbox/AOSE": ...}`` (Python floats);
* :class:`OpenSetCocoMetric` - the same as a ``torchmetrics.Metric`` that collects result rows
  image by image and is exact under DDP (every image evaluated once, whatever rank saw it);
* :func:`read_detections` - a validated reader of a COCO results JSON (``coco_instances_results.json``).

Definitions, per IoU type ``t`` in ``("segm", "bbox")`` (keys ``f"{t}/{name}"``):

* ``AP_k`` / ``AP50_k`` / ``AP75_k``: standard ``COCOeval`` over the **known** categories only:
  ground truth = the known-category annotations, detections = the known-labelled rows,
  ``params.catIds`` = the known ids, ``maxDets = [10, 20, 30, 50, 100]``; the value is the mean of
  ``eval["precision"][iou, :, :, area all, maxDets 100]`` over the entries > -1 (the arrays are
  read directly, never ``summarize()``, whose indices assume the default ``maxDets``).
* ``AR_unk@10`` / ``@30`` / ``@100``, ``AP_unk`` / ``AP50_unk`` / ``AP75_unk``: every annotation
  whose category is not known is relabelled to :data:`UNKNOWN_ID` (1000; crowd flags kept, so a
  crowd unknown is an ignore region), detections = the rows labelled unknown, ``COCOeval`` with
  ``catIds = [1000]`` and ``maxDets = [10, 30, 100]``. ``AR_unk@K`` = mean over the 10 IoU
  thresholds of ``eval["recall"][:, 0, area all, K]``; ``AP_unk`` as ``AP_k`` at maxDets 100.
* ``AOSE`` (absolute open-set error): an absolute **count** (a float holding an integer). For
  every known class ``c`` and every image: the image's top-100 rows labelled ``c`` (by score,
  ties in input order) are matched greedily, highest score first, to the image's **unknown**
  annotations at IoU >= 0.5 (COCO rules: each non-crowd annotation at most once per (image, c),
  a row takes the unmatched annotation of highest IoU, non-crowd annotations are preferred to
  crowd ones, a row matched to a crowd annotation is not counted); AOSE = the number of rows
  matched to a non-crowd unknown annotation, summed over images and classes. A box kept under
  several known labels counts once per label; whether the row is also a true positive of its own
  class does not matter.

Conventions:

* IoU thresholds are pycocotools' default float64 ``np.linspace(.5, .95, 10)``; 101 recall
  points; area range "all" only; ``iscrowd`` honoured everywhere (``pycocotools.mask.iou`` with
  the crowd flag: IoU with a crowd region = intersection / detection area).
* Every evaluated image counts, also images without any annotation (their detections are false
  positives): ``COCOeval.params.imgIds`` = all evaluated images, not only those with GT.
* A row whose ``category_id`` is neither a known id nor 1000 is treated as **unknown**, the way
  SemSeg's evaluator maps any predicted non-known id to 1000.
* A value with nothing to average (no annotation of that kind among the evaluated images) is
  NaN, not COCO's -1. AP / AR are fractions in [0, 1] (papers print 100x).
* For ``segm`` the rows' ``bbox`` is dropped before ``loadRes`` (as detectron2 does), so a row's
  area comes from its mask; for ``bbox`` a row without ``bbox`` gets its mask's bounding box.
* The ground truth may be the file's own categories or already relabelled (unknown annotations
  with category 1000): both give the same numbers.
* pycocotools' prints are silenced.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric

from litseg.distributed import gather_objects
from litseg.io import DataError, raise_problems, read_json
from litseg.readers.coco import _quiet_pycocotools, segmentation_to_rle
from litseg.semseg.open_set import UNKNOWN_ID, UNKNOWN_NAME

__all__ = [
    "AOSE_IOU",
    "IOU_TYPES",
    "KNOWN_MAX_DETS",
    "UNKNOWN_ID",
    "UNKNOWN_MAX_DETS",
    "OpenSetCocoMetric",
    "evaluate_open_set",
    "metric_names",
    "read_detections",
]

IOU_TYPES = ("segm", "bbox")
KNOWN_MAX_DETS = (10, 20, 30, 50, 100)  # SemSeg's train.py max_dets_per_image
UNKNOWN_MAX_DETS = (10, 30, 100)
AOSE_IOU = 0.5
AOSE_MAX_DETS = 100
_NAMES = ("AP_k", "AP50_k", "AP75_k", "AR_unk@10", "AR_unk@30", "AR_unk@100", "AP_unk", "AP50_unk", "AP75_unk",
          "AOSE")


def metric_names(iou_types: Sequence[str] = IOU_TYPES) -> list[str]:
    """The keys :func:`evaluate_open_set` returns, in its order."""
    return [f"{t}/{name}" for t in iou_types for name in _NAMES]


# ----------------------------------------------------------------------------- argument checks


def _check_iou_types(iou_types: Sequence[str] | str) -> tuple[str, ...]:
    types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    bad = [t for t in types if t not in IOU_TYPES]
    if not types or bad or len(set(types)) != len(types):
        raise ValueError(f"iou_types must be distinct entries of {IOU_TYPES}, got {iou_types!r}")
    return types


def _check_gt(gt: Mapping[str, Any]) -> None:
    if not isinstance(gt, Mapping):
        raise TypeError(f"gt must be a COCO instances dict, got {type(gt).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in gt]
    if missing:
        raise ValueError(f"the COCO ground truth lacks {', '.join(repr(k) for k in missing)}")


def _check_known_ids(known_ids: Iterable[Any], gt: Mapping[str, Any]) -> tuple[int, ...]:
    entries = list(known_ids)
    if not entries:
        raise ValueError("known_ids is empty (at least one known category is needed)")
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, (int, np.integer)):
            raise ValueError(f"known_ids entries must be integer category ids, got {entry!r}")
    ids = [int(e) for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"known_ids lists a category twice: {ids}")
    if UNKNOWN_ID in ids:
        raise ValueError(f"known_ids contains {UNKNOWN_ID}, the id reserved for the merged unknown category")
    categories = {int(c["id"]) for c in gt["categories"]}
    absent = [i for i in ids if i not in categories]
    if absent:
        raise ValueError(f"known id{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} "
                         f"{'are' if len(absent) > 1 else 'is'} not a category of the ground truth "
                         f"(its categories: {sorted(categories)})")
    return tuple(sorted(ids))


def _check_image_ids(image_ids: Iterable[int] | None, gt: Mapping[str, Any]) -> list[int]:
    gt_ids = [int(i["id"]) for i in gt["images"]]
    if image_ids is None:
        return sorted(set(gt_ids))
    wanted = sorted({int(i) for i in image_ids})
    absent = sorted(set(wanted) - set(gt_ids))
    if absent:
        raise ValueError(f"image ids {absent[:10]} are not images of the ground truth")
    return wanted


def _check_rows(detections: Sequence[Mapping[str, Any]], gt_images: set[int], iou_types: Sequence[str]) -> None:
    problems: list[str] = []
    for i, row in enumerate(detections):
        if not isinstance(row, Mapping):
            problems.append(f"row {i} is not a dict")
            continue
        missing = [k for k in ("image_id", "category_id", "score") if k not in row]
        if "segm" in iou_types and "segmentation" not in row:
            missing.append("segmentation")
        if "bbox" in iou_types and "bbox" not in row and "segmentation" not in row:
            missing.append("bbox")
        if missing:
            problems.append(f"row {i} lacks {', '.join(repr(k) for k in missing)}")
        elif int(row["image_id"]) not in gt_images:
            problems.append(f"row {i}: image id {row['image_id']} is not an image of the ground truth")
        elif not math.isfinite(float(row["score"])):
            problems.append(f"row {i}: score {row['score']!r} is not finite")
        if len(problems) >= 10:
            break
    if problems:
        raise ValueError("bad detection rows: " + "; ".join(problems))


# ----------------------------------------------------------------------------- COCO objects


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(_quiet_pycocotools())
    return stack


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    api = COCO()
    api.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with _quiet():
        api.createIndex()
    return api


def _gt_api(gt: Mapping[str, Any], keep: Callable[[int], bool], relabel: Callable[[int], int],
            categories: list[dict]) -> COCO:
    """A COCO of the annotations whose category passes ``keep``, relabelled by ``relabel``.

    Annotations are shallow copies renumbered 1..N (pycocotools treats id 0 as "unmatched").
    """
    annotations = []
    for ann in gt["annotations"]:
        if keep(int(ann["category_id"])):
            new = dict(ann)
            new["id"] = len(annotations) + 1
            new["category_id"] = relabel(int(ann["category_id"]))
            new["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
            annotations.append(new)
    images = [dict(i) for i in gt["images"]]
    return _coco(images, categories, annotations)


def _row_box(row: Mapping[str, Any]) -> list[float]:
    if "bbox" in row:
        return [float(v) for v in row["bbox"]]
    return [float(v) for v in mask_utils.toBbox(_rle(row["segmentation"]))]


def _rle(segmentation: Mapping[str, Any]) -> dict[str, Any]:
    h, w = (int(v) for v in segmentation["size"])
    return segmentation_to_rle(segmentation, h, w)


def _dt_rows(rows: Sequence[Mapping[str, Any]], iou_type: str, category: Callable[[int], int]) -> list[dict]:
    """Fresh result rows for ``loadRes`` (it writes into them): segm without bbox, bbox without mask."""
    out = []
    for row in rows:
        new = {"image_id": int(row["image_id"]), "category_id": category(int(row["category_id"])),
               "score": float(row["score"])}
        if iou_type == "segm":
            new["segmentation"] = copy.deepcopy(dict(row["segmentation"]))
        else:
            new["bbox"] = _row_box(row)
        out.append(new)
    return out


def _dt_api(gt_api: COCO, rows: list[dict]) -> COCO:
    if not rows:  # loadRes cannot take an empty list
        return _coco(list(gt_api.dataset["images"]), list(gt_api.dataset["categories"]), [])
    with _quiet():
        return gt_api.loadRes(rows)


def _run_cocoeval(gt_api: COCO, dt_api: COCO, iou_type: str, cat_ids: Sequence[int], max_dets: Sequence[int],
                  image_ids: Sequence[int]) -> COCOeval:
    ev = COCOeval(gt_api, dt_api, iou_type)
    ev.params.catIds = list(cat_ids)
    ev.params.imgIds = list(image_ids)
    ev.params.maxDets = list(max_dets)  # iouThrs: pycocotools' float64 linspace(.5, .95, 10), kept
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def _iou_index(ev: COCOeval, threshold: float) -> int:
    thresholds = np.asarray(ev.params.iouThrs)
    index = int(np.argmin(np.abs(thresholds - threshold)))
    if abs(thresholds[index] - threshold) > 1e-9:
        raise ValueError(f"IoU threshold {threshold} is not among COCOeval's {thresholds.tolist()}")
    return index


def _ap(ev: COCOeval, max_det: int = 100, iou: float | None = None) -> float:
    a = ev.params.areaRngLbl.index("all")
    m = list(ev.params.maxDets).index(max_det)
    precision = ev.eval["precision"][:, :, :, a, m]  # T x R x K
    if iou is not None:
        precision = precision[_iou_index(ev, iou)]
    return _mean_valid(precision)


def _ar(ev: COCOeval, max_det: int) -> float:
    a = ev.params.areaRngLbl.index("all")
    m = list(ev.params.maxDets).index(max_det)
    return _mean_valid(ev.eval["recall"][:, :, a, m])  # T x K


# ----------------------------------------------------------------------------- AOSE


def _greedy_matches(ious: np.ndarray, crowd: np.ndarray, threshold: float = AOSE_IOU) -> int:
    """Rows (already score-sorted) matched to a non-crowd annotation, by COCO's greedy rule.

    ``ious``: rows x annotations, the annotations ordered non-crowd first. A row takes the
    annotation of highest IoU >= ``threshold`` among those still free (crowd ones never become
    taken); once it holds a non-crowd candidate it does not look at the crowd ones. Ties go to the
    later annotation (as in COCOeval, which replaces its candidate on ``>=``).
    """
    taken = np.zeros(len(crowd), dtype=bool)
    count = 0
    for row_ious in ious:
        best, chosen = min(threshold, 1 - 1e-10), -1
        for g, value in enumerate(row_ious):
            if taken[g] and not crowd[g]:
                continue
            if chosen >= 0 and not crowd[chosen] and crowd[g]:
                break  # non-crowd candidate found: crowd regions come after and cannot win
            if value >= best:
                best, chosen = value, g
        if chosen >= 0:
            taken[chosen] = True
            count += int(not crowd[chosen])
    return count


def _aose(gt: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], known: tuple[int, ...], iou_type: str,
          image_ids: Sequence[int]) -> int:
    """Absolute open-set error (see the module docstring).

    Equivalence used in the tests: for one class ``c`` this count equals what ``COCOeval`` finds
    with the unknown annotations relabelled as ``c`` (crowd flags kept), the rows labelled ``c``,
    ``maxDets = [100]``: recall(IoU 0.5, area all, maxDets 100) x the number of non-crowd unknown
    annotations, because COCO recall is exactly "matched non-ignored annotations / non-ignored
    annotations" and each matched annotation has exactly one matched row. This loop computes it
    directly, without the other nine thresholds or the precision curves.
    """
    known_set, wanted = set(known), set(image_ids)
    sizes = {int(i["id"]): (int(i["height"]), int(i["width"])) for i in gt["images"]}
    unknown_gt: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        if int(ann["category_id"]) not in known_set and int(ann["image_id"]) in wanted:
            unknown_gt[int(ann["image_id"])].append(ann)
    by_image_class: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        image_id, category = int(row["image_id"]), int(row["category_id"])
        if category in known_set and image_id in unknown_gt:
            by_image_class[image_id, category].append(row)
    total = 0
    for (image_id, _category), class_rows in by_image_class.items():
        anns = sorted(unknown_gt[image_id], key=lambda a: bool(a.get("iscrowd", 0)))  # stable: non-crowd first
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns])
        order = sorted(range(len(class_rows)), key=lambda i: -float(class_rows[i]["score"]))[:AOSE_MAX_DETS]
        top = [class_rows[i] for i in order]
        if iou_type == "segm":
            h, w = sizes[image_id]
            gt_geom: Any = [segmentation_to_rle(a["segmentation"], h, w) for a in anns]
            dt_geom: Any = [_rle(r["segmentation"]) for r in top]
        else:
            gt_geom = np.array([[float(v) for v in a["bbox"]] for a in anns], dtype=np.float64)
            dt_geom = np.array([_row_box(r) for r in top], dtype=np.float64)
        with _quiet_pycocotools():
            ious = np.asarray(mask_utils.iou(dt_geom, gt_geom, [int(c) for c in crowd]), dtype=np.float64)
        total += _greedy_matches(ious.reshape(len(top), len(anns)), crowd)
    return total


# ----------------------------------------------------------------------------- the evaluation


def _as_gt_dict(gt: Any) -> dict[str, Any]:
    if isinstance(gt, (str, os.PathLike)):
        from litseg.readers.coco import CocoInstances

        return CocoInstances.load(gt, check_files=False).to_dict()
    if hasattr(gt, "to_dict") and not isinstance(gt, Mapping):
        return gt.to_dict()
    _check_gt(gt)
    return gt


def evaluate_open_set(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], known_ids: Sequence[int],
                      iou_types: Sequence[str] = IOU_TYPES, *,
                      image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """SemSeg's open-set metrics of ``detections`` against ``gt`` (see the module docstring).

    ``gt``: a COCO instances dict with **all** categories (known and unknown; a GT already
    relabelled to 1000 works too); ``detections``: COCO result rows (``image_id``,
    ``category_id`` = a known id or 1000, ``score``, ``bbox`` ``[x, y, w, h]`` and/or
    ``segmentation`` RLE ``{"size", "counts"}``); ``known_ids``: the known category ids;
    ``image_ids``: the images evaluated (default: every image of ``gt``; rows of other images are
    left out). Returns ``{f"{t}/{name}": float}`` in :func:`metric_names` order. Nothing given is
    modified.

    Raises ValueError for a known id that is not a category of ``gt`` (naming it), an image id
    not in ``gt``, or a row lacking a key the IoU types need.
    """
    _check_gt(gt)
    types = _check_iou_types(iou_types)
    known = _check_known_ids(known_ids, gt)
    images = _check_image_ids(image_ids, gt)
    _check_rows(detections, {int(i["id"]) for i in gt["images"]}, types)
    if not images:
        return {key: (0.0 if key.endswith("/AOSE") else float("nan")) for key in metric_names(types)}

    known_set = set(known)
    known_categories = [{"id": c, "name": str(c)} for c in known]
    unknown_categories = [{"id": UNKNOWN_ID, "name": UNKNOWN_NAME}]
    known_gt = _gt_api(gt, lambda c: c in known_set, lambda c: c, known_categories)
    unknown_gt = _gt_api(gt, lambda c: c not in known_set, lambda c: UNKNOWN_ID, unknown_categories)
    wanted = set(images)
    rows = [r for r in detections if int(r["image_id"]) in wanted]
    known_rows = [r for r in rows if int(r["category_id"]) in known_set]
    unknown_rows = [r for r in rows if int(r["category_id"]) not in known_set]  # 1000 or any non-known id

    out: dict[str, float] = {}
    for t in types:
        ev = _run_cocoeval(known_gt, _dt_api(known_gt, _dt_rows(known_rows, t, lambda c: c)), t, known,
                           KNOWN_MAX_DETS, images)
        out[f"{t}/AP_k"] = _ap(ev)
        out[f"{t}/AP50_k"] = _ap(ev, iou=0.5)
        out[f"{t}/AP75_k"] = _ap(ev, iou=0.75)
        ev = _run_cocoeval(unknown_gt, _dt_api(unknown_gt, _dt_rows(unknown_rows, t, lambda c: UNKNOWN_ID)), t,
                           [UNKNOWN_ID], UNKNOWN_MAX_DETS, images)
        for k in UNKNOWN_MAX_DETS:
            out[f"{t}/AR_unk@{k}"] = _ar(ev, k)
        out[f"{t}/AP_unk"] = _ap(ev)
        out[f"{t}/AP50_unk"] = _ap(ev, iou=0.5)
        out[f"{t}/AP75_unk"] = _ap(ev, iou=0.75)
        out[f"{t}/AOSE"] = float(_aose(gt, known_rows, known, t, images))
    return out


# ----------------------------------------------------------------------------- the Metric


def _normalise_row(row: Mapping[str, Any], image_id: int, index: int, iou_types: Sequence[str]) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise TypeError(f"detection {index} of image {image_id} is not a dict but {type(row).__name__}")
    if "image_id" in row and int(row["image_id"]) != image_id:
        raise ValueError(f"detection {index} has image_id {row['image_id']}, updated as image {image_id}")
    missing = [k for k in ("category_id", "score") if k not in row]
    if "segm" in iou_types and "segmentation" not in row:
        missing.append("segmentation")
    if "bbox" in iou_types and "bbox" not in row and "segmentation" not in row:
        missing.append("bbox")
    if missing:
        raise ValueError(f"detection {index} of image {image_id} lacks {', '.join(repr(k) for k in missing)}")
    score = float(row["score"])
    if not math.isfinite(score):
        raise ValueError(f"detection {index} of image {image_id} has a non-finite score {score}")
    out: dict[str, Any] = {"image_id": image_id, "category_id": int(row["category_id"]), "score": score}
    if "bbox" in row:
        box = [float(v) for v in row["bbox"]]
        if len(box) != 4:
            raise ValueError(f"detection {index} of image {image_id}: bbox must be [x, y, w, h], got {box}")
        out["bbox"] = box
    if "segmentation" in row:
        seg = row["segmentation"]
        counts = seg["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if not isinstance(counts, str):
            raise ValueError(f"detection {index} of image {image_id}: segmentation must be a compressed RLE "
                             "(litseg.readers.coco.encode_mask)")
        out["segmentation"] = {"size": [int(v) for v in seg["size"]], "counts": counts}
    return out


class OpenSetCocoMetric(Metric):
    """:func:`evaluate_open_set` as a ``torchmetrics.Metric``, exact under DDP.

    ``OpenSetCocoMetric(gt, known_ids, iou_types=("segm", "bbox"))``: ``gt`` is the open-set
    ground truth of the evaluation split with its own categories (a COCO instances dict, a
    :class:`~litseg.readers.coco.CocoInstances`, or the path of an instances JSON, read and
    validated by ``CocoInstances.load``); the metric relabels unknown categories itself.

    ``update(image_id, detections)``: all COCO result rows of one image (``category_id`` a known
    id or 1000, ``score``, ``bbox`` ``[x, y, w, h]``, ``segmentation`` a compressed RLE from
    :func:`~litseg.readers.coco.encode_mask`; ``image_id`` optional). An empty list records an
    image without detections (its annotations still count as misses). Rows are stored as plain
    Python dicts (CPU), never tensors.

    ``compute()`` -> ``{f"{t}/{name}": float64 scalar tensor}`` over **the images seen** only
    (a ``fast_dev_run`` / ``limit_test_batches`` evaluation scores what it saw; annotations of
    unseen images are not misses). :meth:`detections` -> every row, sorted by image id then
    score (descending), for ``coco_instances_results.json``.

    DDP: at ``compute`` / :meth:`detections` the per-image entries of every rank are gathered
    with :func:`litseg.distributed.gather_objects` (``all_gather_object`` on the default
    process group), replacing torchmetrics' tensor gathering. An image recorded more than once
    (a ``DistributedSampler`` pads the last batch with repeats, or a second update of the same
    image) keeps its **first** record in rank order, then update order, so every image counts
    once and every rank gets the same numbers. ``compute``, :meth:`detections` and
    :meth:`image_ids` are collectives under DDP: call them on every rank. ``merge_state`` (the incoming metric's entries
    go first) follows the same rule. ``forward`` only updates (it returns None: running
    COCOeval per batch is pointless), and ``dist_sync_on_step`` / ``compute_on_cpu`` are refused.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    entries: list[tuple[int, list[dict[str, Any]]]]

    def __init__(self, gt: Mapping[str, Any] | str | os.PathLike[str] | Any, known_ids: Sequence[int],
                 iou_types: Sequence[str] = IOU_TYPES, **kwargs: Any) -> None:
        if kwargs.get("dist_sync_on_step") or kwargs.get("compute_on_cpu"):
            raise ValueError("OpenSetCocoMetric keeps Python rows: dist_sync_on_step and compute_on_cpu are not "
                             "supported")
        super().__init__(**kwargs)
        self.gt = _as_gt_dict(gt)
        self.iou_types = _check_iou_types(iou_types)
        self.known_ids = _check_known_ids(known_ids, self.gt)
        self._image_ids = {int(i["id"]) for i in self.gt["images"]}
        self.add_state("entries", default=[], dist_reduce_fx="cat")

    # ------------------------------------------------------------------ torchmetrics plumbing

    def update(self, image_id: int, detections: Sequence[Mapping[str, Any]]) -> None:
        if isinstance(image_id, Tensor):
            image_id = int(image_id.item())
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an integer, got {image_id!r}")
        image_id = int(image_id)
        if image_id not in self._image_ids:
            raise ValueError(f"image id {image_id} is not an image of the ground truth")
        rows = [_normalise_row(r, image_id, i, self.iou_types) for i, r in enumerate(detections)]
        self.entries.append((image_id, rows))

    def forward(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        if process_group is not None or self.process_group is not None:
            raise NotImplementedError("OpenSetCocoMetric gathers over the default process group only")
        self.entries = [entry for part in gather_objects(list(self.entries)) for entry in part]

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> Any:
        # .to(device) / .cuda(): the rows are Python objects and stay where they are.
        return super()._apply(fn, exclude_state=(*exclude_state, "entries"))

    def _move_list_states_to_cpu(self) -> None:
        pass  # already plain Python objects

    def __hash__(self) -> int:
        # torchmetrics hashes the state values; the rows are dicts (unhashable). Identity is what
        # nn.Module bookkeeping (named_modules memo) needs.
        return id(self)

    # ------------------------------------------------------------------ results

    def _per_image(self) -> dict[int, list[dict[str, Any]]]:
        first: dict[int, list[dict[str, Any]]] = {}
        for image_id, rows in self.entries:
            first.setdefault(int(image_id), rows)
        return first

    @staticmethod
    def _sorted_rows(per_image: Mapping[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        out = []
        for image_id in sorted(per_image):
            out.extend(sorted(per_image[image_id], key=lambda r: -r["score"]))  # stable within ties
        return copy.deepcopy(out)

    def detections(self) -> list[dict[str, Any]]:
        """Every recorded row (gathered from all ranks, one record per image), sorted by image id,
        then score descending (ties in update order); JSON-ready copies."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            return self._sorted_rows(self._per_image())

    def image_ids(self) -> list[int]:
        """The evaluated images (gathered from all ranks), ascending."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            return sorted(self._per_image())

    def compute(self) -> dict[str, Tensor]:
        per_image = self._per_image()
        results = evaluate_open_set(self.gt, self._sorted_rows(per_image), self.known_ids, self.iou_types,
                                    image_ids=sorted(per_image))
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in results.items()}


# ----------------------------------------------------------------------------- results file


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_finite_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return [f"is not an object but {type(row).__name__}"]
    problems = []
    missing = [k for k in ("image_id", "category_id", "score") if k not in row]
    if "bbox" not in row and "segmentation" not in row:
        missing.append("'bbox' or 'segmentation'")
    if missing:
        problems.append("missing " + ", ".join(k if k.startswith("'") else repr(k) for k in missing))
    for key in ("image_id", "category_id"):
        if key in row and not _is_int(row[key]):
            problems.append(f"{key} must be an integer, got {row[key]!r}")
    if "score" in row and not _is_finite_number(row["score"]):
        problems.append(f"score must be a finite number, got {row['score']!r}")
    if "bbox" in row:
        box = row["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
            problems.append(f"bbox must be [x, y, w, h] finite numbers, got {box!r}"[:120])
        elif box[2] < 0 or box[3] < 0:
            problems.append(f"bbox has a negative width or height: {box!r}")
    if "segmentation" in row:
        seg = row["segmentation"]
        size = seg.get("size") if isinstance(seg, dict) else None
        if not (isinstance(seg, dict) and isinstance(seg.get("counts"), str) and isinstance(size, list)
                and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
            problems.append("segmentation must be a compressed RLE {'size': [h, w], 'counts': '<string>'}")
    return problems


def read_detections(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a COCO results JSON (a list of rows) and validate every row.

    Each row needs ``image_id`` and ``category_id`` (JSON integers), ``score`` (a finite number)
    and ``bbox`` (``[x, y, w, h]``, finite, w and h >= 0) and/or ``segmentation`` (a compressed
    RLE). Every problem is reported together in one :class:`~litseg.io.DataError` that starts
    with the file and names each row index. No pickle: JSON only.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of detection rows, got {type(data).__name__}")
    problems = [DataError(path, f"row {i}: {problem}") for i, row in enumerate(data) for problem in _row_problems(row)]
    raise_problems(problems, path, "COCO detection results")
    return data
