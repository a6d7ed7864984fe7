"""Data for SemSeg, open-set instance segmentation on torchvision Mask R-CNN (``shared/specs/semseg.md``).

The open-set protocol (§2, acceptance item 1; constants in :mod:`litseg.semseg.open_set`):

* **train**: only annotations of the known categories (``known_ids``; default the 20 VOC classes
  by COCO id) are targets. The other categories' annotations are dropped: their pixels stay in
  the image and act as background. Crowd annotations are never targets, nor are annotations
  with a degenerate box (width or height <= 0: torchvision's Mask R-CNN rejects them). Images
  left with no known instance are removed (detectron2's ``FILTER_EMPTY_ANNOTATIONS``); the
  count is reported once per split.
* **val / test**: every image is kept; the model sees only the image. The metric reads the
  open-set ground truth of exactly those images from :meth:`SemSegDataModule.eval_gt`
  (non-known annotations relabelled to ``1000`` = unknown, crowd flags kept).

Items are ``(image, target)`` as torchvision detection models take them:

* ``image``: float32 ``3 x H x W`` RGB in ``[0, 1]`` at the original size. **No resize and no
  normalisation here**: the model's ``GeneralizedRCNNTransform(min_size=(640, ..., 800),
  max_size=1333)`` does the multi-scale resize (random short side per image in training, 800
  at eval) and the ImageNet normalisation.
* train ``target``: ``boxes`` float32 ``N x 4`` xyxy (the COCO ``bbox`` converted), ``labels``
  int64 ``N`` (known index ``0..K-1`` = position in the sorted known-id list; background is
  ``K`` in the model), ``masks`` uint8 ``N x H x W``, ``image_id`` int, ``orig_size`` (H, W).
* val / test ``target``: ``image_id`` and ``orig_size`` only.

Augmentation is the horizontal flip alone (training only, probability ``flip_prob``; spec §2):
image, masks and boxes together (``x1' = W - x2``, ``x2' = W - x1``). The decision is drawn from
``litseg.seeding.item_rng(seed, epoch, index)``, the training loader giving ``(index, epoch)``
keys (:class:`datamodules.base.EpochShuffleSampler`), so it is the same with any worker or rank
count and after a resume.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.base import STAGE_SPLITS, LitSegDataModule
from litseg.io import ConfigError, DataError, FileCheck, check_key, raise_problems
from litseg.readers.coco import CocoAnnotation, CocoInstances
from litseg.seeding import item_rng
from litseg.semseg.open_set import VOC_KNOWN_COCO_IDS, check_known_ids, known_index_map, open_set_gt

KEY_PREFIX = "data.init_args."
KNOWN_IDS_KEY = KEY_PREFIX + "known_ids"
# Version of the up-front image check (bump when what it reads or returns changes).
SIZE_RULE = "semseg-image-size/1"

Target = dict[str, Any]


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """``(images, targets)`` as two lists: images differ in size, torchvision batches them itself."""
    return [item[0] for item in batch], [item[1] for item in batch]


def is_target(ann: CocoAnnotation, known: set[int] | dict[int, int]) -> bool:
    """Whether a training annotation becomes a target: known category, not crowd, non-degenerate box."""
    return ann.category_id in known and not ann.iscrowd and ann.bbox[2] > 0 and ann.bbox[3] > 0


def image_tensor(array: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> float32 ``3 x H x W`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(torch.float32).div_(255.0)


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip of ``N x 4`` xyxy boxes in an image ``width`` pixels wide."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


# ----------------------------------------------------------------------------- datasets


class SemSegTrainImages(Dataset):
    """Training images: known, non-crowd instances as targets, random horizontal flip.

    Takes ``index`` or ``(index, epoch)`` keys; the flip is a pure function of
    ``(seed, epoch, index)`` (an int key means epoch 0).
    """

    def __init__(self, coco: CocoInstances, image_ids: Sequence[int], known_ids: Sequence[int],
                 flip_prob: float = 0.5, seed: int = 0) -> None:
        self.coco = coco
        self.image_ids = list(image_ids)
        self.known_ids = tuple(sorted(known_ids))
        self.index_of = known_index_map(self.known_ids)
        self.flip_prob = float(flip_prob)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.image_ids)

    def flipped(self, index: int, epoch: int) -> bool:
        """Whether item ``index`` is flipped in ``epoch``."""
        return self.flip_prob > 0 and bool(item_rng(self.seed, epoch, index).random() < self.flip_prob)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image_id = self.image_ids[index]
        image = self.coco.read_image(image_id)  # checks the size against the JSON again
        anns = [a for a in self.coco.annotations_of(image_id, crowd=False) if is_target(a, self.index_of)]
        h, w = image.shape[:2]
        masks = np.stack([self.coco.annotation_mask(a) for a in anns]) if anns else np.zeros((0, h, w), bool)
        boxes = np.asarray([a.bbox_xyxy for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([self.index_of[a.category_id] for a in anns], dtype=np.int64)
        if self.flipped(index, epoch):
            image = image[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = flip_boxes(boxes, w)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
            "image_id": int(image_id),
            "orig_size": (int(h), int(w)),
        }
        return image_tensor(image), target


class SemSegEvalImages(Dataset):
    """Val / test images: every image, the target only identifies it (GT comes from ``eval_gt``)."""

    def __init__(self, coco: CocoInstances, image_ids: Sequence[int]) -> None:
        self.coco = coco
        self.image_ids = list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image_id = self.image_ids[index]
        image = self.coco.read_image(image_id)
        return image_tensor(image), {"image_id": int(image_id), "orig_size": (image.shape[0], image.shape[1])}


# ----------------------------------------------------------------------------- up-front checks


def image_header_size(path: Path) -> dict[str, Any]:
    """``{"size": [H, W]}`` from the image header (pixels are not decoded)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(path, f"cannot read the image header ({err})") from err
    return {"size": [int(height), int(width)]}


# ----------------------------------------------------------------------------- the module


class SemSegDataModule(LitSegDataModule):
    """COCO-format instances for open-set training (known classes only) and evaluation (all).

    Relative JSON and image-folder paths resolve against ``root`` (absolute ones are kept).

    Args:
        root: dataset root, e.g. ``datasets/coco`` or ``sample_data/coco128_sample``.
        train_json: training instances JSON (e.g. ``annotations/instances_train2017.json``).
        train_images: folder of the training ``file_name``s (e.g. ``train2017``).
        val_json: validation instances JSON; None = a hash split of the training file
            (``CocoInstances.split(val_fraction)``, by image id), for small demos such as COCO128.
        val_images: folder of the validation images; None = ``train_images`` when ``val_json``
            is None, else it must be set.
        val_fraction: share of the training file's images put in val when ``val_json`` is None.
        test_json: test instances JSON (e.g. one GraspNet ``graspnet_os_test_k.json``); None = val.
        test_images: folder of the test images; None = the val image folder.
        known_ids: category ids of the known classes; None = the 20 VOC classes by COCO id
            (:data:`~litseg.semseg.open_set.VOC_KNOWN_COCO_IDS`); GraspNet: ``GRASPNET_KNOWN_IDS``.
            Each must be a category of every file used; kept sorted, known index = position.
        flip_prob: probability of the horizontal flip of a training image (0 = off).
        batch_size: images per batch (SemSeg: 4 in total over all devices).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle and of the flips.
        max_images: keep only the first N images (ascending id) of each split (for training: of
            the images that have a known instance), for demos and tests; None = all.
    """

    def __init__(self, root: str, train_json: str, train_images: str, val_json: str | None = None,
                 val_images: str | None = None, val_fraction: float = 0.25, test_json: str | None = None,
                 test_images: str | None = None, known_ids: list[int] | None = None, flip_prob: float = 0.5,
                 batch_size: int = 2, num_workers: int = 0, seed: int = 0, max_images: int | None = None) -> None:
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(KEY_PREFIX + "val_fraction", f"must be in (0, 1), got {val_fraction}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(KEY_PREFIX + "flip_prob", f"must be in [0, 1], got {flip_prob}")
        if max_images is not None and max_images < 1:
            raise ConfigError(KEY_PREFIX + "max_images", f"must be >= 1 or null, got {max_images}")
        if val_json is not None and val_images is None:
            raise ConfigError(KEY_PREFIX + "val_images", "must be set when val_json is set")
        ids = list(VOC_KNOWN_COCO_IDS) if known_ids is None else list(known_ids)
        # types, repeats, the reserved id 1000; membership in the files is checked by setup
        self._known_ids = check_known_ids(ids, [i for i in ids if isinstance(i, int)], KNOWN_IDS_KEY)
        self.train_json, self.train_images = train_json, train_images
        self.val_json, self.val_images = val_json, val_images
        self.test_json, self.test_images = test_json, test_images
        self.val_fraction = val_fraction
        self.flip_prob = flip_prob
        self.max_images = max_images
        self.datasets: dict[str, SemSegTrainImages | SemSegEvalImages] = {}
        self.dropped_images: dict[str, int] = {}  # split -> images without a known instance (train only)
        self._coco: dict[tuple[Path, Path], CocoInstances] = {}
        self._split_coco: dict[str, CocoInstances] = {}
        self._eval_gt: dict[str, dict[str, Any]] = {}
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ classes

    @property
    def known_ids(self) -> list[int]:
        """Known category ids, ascending (known index = position; background = ``num_known``)."""
        return list(self._known_ids)

    @property
    def num_known(self) -> int:
        return len(self._known_ids)

    @property
    def known_names(self) -> list[str]:
        """Names of the known categories in known-index order (from the training JSON)."""
        coco = self._split_source("train")
        ids = check_known_ids(self._known_ids, coco.category_ids, KNOWN_IDS_KEY, str(coco.path))
        return [coco.category_name(c) for c in ids]

    # ------------------------------------------------------------------ files

    def _resolve(self, path: str) -> Path:
        return self.root / path  # an absolute path stays absolute

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(instances JSON, image folder) a split reads: val falls back to the training file, test to val."""
        train = (self._resolve(self.train_json), self._resolve(self.train_images))
        if split == "train":
            return train
        val = train if self.val_json is None else (self._resolve(self.val_json), self._resolve(self.val_images))
        if split == "val" or self.test_json is None:
            return val
        return self._resolve(self.test_json), self._resolve(self.test_images) if self.test_images else val[1]

    def _load(self, json_path: Path, images: Path) -> CocoInstances:
        key = (json_path, images)
        if key not in self._coco:
            self._coco[key] = CocoInstances.load(json_path, images)
        return self._coco[key]

    def _split_source(self, split: str) -> CocoInstances:
        return self._load(*self.split_paths(split))

    def split_image_ids(self, split: str, coco: CocoInstances) -> list[int]:
        """Image ids of a split in its file, ascending (before the training filter and ``max_images``).

        Without ``val_json`` the training file is split by image-id hash (``val_fraction``), and
        val (and test, without ``test_json``) is its val part; a file of its own is taken whole.
        """
        if split == "test" and self.test_json is not None:
            return list(coco.image_ids)
        if self.val_json is not None:
            return list(coco.image_ids)
        train, val = coco.split(self.val_fraction)
        return list(train.image_ids if split == "train" else val.image_ids)

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Validate every file the splits of ``stage`` read, before the first step; all problems at once.

        Each instances JSON is validated by the COCO reader (missing image files, malformed
        polygons or RLEs, unknown category ids, boxes outside the image ...); each image's header
        size must equal the JSON's ``width`` / ``height`` (a check cached per run by
        :meth:`LitSegDataModule.check_files`); ``known_ids`` must be category ids of every JSON
        (ConfigError naming ``data.init_args.known_ids``, or one more listed problem when there
        are data problems too).
        """
        splits = STAGE_SPLITS.get(stage, STAGE_SPLITS[None])
        self.check_root()
        problems: list[DataError] = []
        loaded: dict[str, CocoInstances] = {}
        failed: set[tuple[Path, Path]] = set()
        for split in splits:
            paths = self.split_paths(split)
            if paths in failed:
                continue
            try:
                loaded[split] = self._load(*paths)
            except DataError as err:
                failed.add(paths)
                problems.append(err)
        config_problems: list[ConfigError] = []
        seen: set[Path] = set()
        for coco in loaded.values():
            if coco.path in seen:
                continue
            seen.add(coco.path)
            try:
                check_known_ids(self._known_ids, coco.category_ids, KNOWN_IDS_KEY, str(coco.path))
            except ConfigError as err:
                config_problems.append(err)
        ids = {s: self.split_image_ids(s, c) for s, c in loaded.items()}
        checks: dict[str, FileCheck] = {}
        for split, coco in loaded.items():
            for image_id in ids[split]:
                path = coco.image_path(image_id)
                key = check_key(SIZE_RULE, path)
                checks.setdefault(key, FileCheck(key, (path,), functools.partial(image_header_size, path)))
        what = f"SemSeg {' + '.join(splits)}"
        if checks:
            report = self.check_files(list(checks.values()), what)
            problems.extend(report.problems)
            for split, coco in loaded.items():
                for image_id in ids[split]:
                    path = coco.image_path(image_id)
                    info = report.infos.get(check_key(SIZE_RULE, path))
                    image = coco.images[image_id]
                    if info is not None and tuple(info["size"]) != (image.height, image.width):
                        problem = DataError(path, f"size {info['size'][1]}x{info['size'][0]} does not match image "
                                                  f"{image_id}'s width x height {image.width}x{image.height} "
                                                  f"in {coco.path}")
                        if str(problem) not in {str(p) for p in problems}:
                            problems.append(problem)
        if problems:
            problems.extend(DataError(p.key, p.problem) for p in config_problems)
            raise_problems(problems, self.split_paths(splits[0])[0],
                           f"{what} split{'s' if len(splits) > 1 else ''}, checked before the first step")
        if len(config_problems) == 1:
            raise config_problems[0]
        if config_problems:
            raise ConfigError(KNOWN_IDS_KEY, "; ".join(p.problem for p in config_problems))
        for split in splits:
            self._build(split, loaded[split], ids[split], self._known_ids)

    def _limit(self, items: list[int]) -> list[int]:
        return items if self.max_images is None else items[: self.max_images]

    def _build(self, split: str, coco: CocoInstances, image_ids: list[int], known: tuple[int, ...]) -> None:
        if split == "train":
            known_set = set(known)
            kept = [i for i in image_ids if any(is_target(a, known_set) for a in coco.annotations_of(i, crowd=False))]
            self.dropped_images[split] = len(image_ids) - len(kept)
            degenerate = sum(1 for i in image_ids for a in coco.annotations_of(i, crowd=False)
                             if a.category_id in known_set and not (a.bbox[2] > 0 and a.bbox[3] > 0))
            kept = self._limit(kept)
            if not kept:
                raise DataError(coco.path, f"the train split has no image with an instance of the known classes "
                                           f"{list(known)} ({len(image_ids)} images; check {KNOWN_IDS_KEY})")
            self.datasets[split] = SemSegTrainImages(coco, kept, known, self.flip_prob, self.seed)
            # Counted, never silent: zero-area boxes cannot be targets (torchvision rejects them).
            detail = (f", {self.dropped_images[split]} without a known instance dropped, {degenerate} known "
                      "annotation(s) with a zero-width or zero-height box left out")
        else:
            kept = self._limit(image_ids)
            if not kept:
                raise DataError(coco.path, f"the {split} split is empty ({len(coco)} images in the file, val_fraction "
                                           f"{self.val_fraction}); change {KEY_PREFIX}val_fraction or set val_json")
            self.dropped_images[split] = 0
            self.datasets[split] = SemSegEvalImages(coco, kept)
            detail = ""
        self._split_coco[split] = coco
        self._eval_gt.pop(split, None)
        if split not in self._reported:
            self._reported.add(split)
            rank_zero_info(f"SemSeg data {split}: {len(kept)} images ({coco.path}), {len(known)} known classes"
                           + detail)

    # ------------------------------------------------------------------ evaluation ground truth

    def eval_gt(self, split: str = "val") -> dict[str, Any]:
        """Open-set GT COCO dict of exactly the images ``split`` iterates (after ``setup``).

        Known annotations keep their category id, all others become ``1000`` ("unknown"); crowd
        annotations are kept with ``iscrowd`` (see :func:`litseg.semseg.open_set.open_set_gt`).
        """
        if split not in self.datasets:
            raise RuntimeError(f"eval_gt({split!r}): call setup() for a stage that reads the {split} split first")
        if split not in self._eval_gt:
            coco = self._split_coco[split].subset(self.datasets[split].image_ids)
            self._eval_gt[split] = open_set_gt(coco.to_dict(), self.known_ids, KNOWN_IDS_KEY)
        return self._eval_gt[split]

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self):
        return self.make_loader(self.datasets["train"], shuffle=True, collate_fn=collate_detection,
                                epoch_keys=True)

    def val_dataloader(self):
        return self.make_loader(self.datasets["val"], shuffle=False, collate_fn=collate_detection)

    def test_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate_detection)

    def predict_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate_detection)


__all__ = [
    "SemSegDataModule",
    "SemSegEvalImages",
    "SemSegTrainImages",
    "collate_detection",
    "flip_boxes",
    "image_header_size",
]
