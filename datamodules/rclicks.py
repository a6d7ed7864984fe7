"""Training data of the RClicks clickability model: images, instance masks, real clicks -> GT click maps.

A sample is one *full_stem* of RClicks' ``clicks.csv`` (image x instance x click type
first / fn / fp; spec notes 1.5, 1.7, 5.2): the network input is the letterboxed image
plus ``[target_mask, error_mask]``, the target the ground-truth click map of all clicks
of that full_stem (:func:`litseg.rclicks.maps.gt_click_map` with the configured
``sigma``). fn / fp samples read the previous mask the users saw from
``<previous_masks>/<full_stem>.png`` (RClicks' ``SUBSEC_MASKS`` layout, channel 0 > 127).

Images and instance masks come in the benchmark layouts of
:mod:`datamodules.interactive` (``<root>/TETRIS/images``, ``<root>/GrabCut/data_GT``, ...).
The split is by image stem (``train_list`` / ``val_list``, one stem per line), so all
click types of an image stay on one side. Training flips image, masks and target
together (p = ``flip_p``), decided per sample from ``(seed, epoch, full_stem)``.

The test split (clickability-metric evaluation, Table 3) is every full_stem of each of
``test_datasets``, except for the training dataset itself, where it is the validation
stems (RClicks evaluates on TETRIS val).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import STAGE_SPLITS, LitSegDataModule
from litseg.io import DataError, FileCheck, check_key, raise_problems, read_mask, read_stem_list
from litseg.letterbox import Letterbox
from litseg.rclicks.maps import DEFAULT_SIZE, ClickMapCache, error_mask, gt_click_map
from litseg.rclicks.user_clicks import UserClick, read_user_clicks
from litseg.readers.ritm import (
    DATASETS,
    DatasetName,
    ImageRecord,
    ImageSummary,
    load_sample,
    record_check,
    scan_dataset,
    summaries,
)
from litseg.seeding import item_rng


@dataclass(frozen=True)
class ClickTask:
    """One full_stem: the clicks of all users on one instance for one click type."""

    dataset: str  # key of datamodules.interactive.DATASETS
    full_stem: str
    record: ImageRecord
    object_id: int | None
    click_type: str
    clicks: tuple[UserClick, ...]
    previous_mask: Path | None

    @property
    def where(self) -> str:
        """``line N`` of the first row, for error messages on the clicks file."""
        return f"line {self.clicks[0].line}"

    @property
    def source(self) -> str:
        """``<clicks file name> line N`` of the first row, for error messages on other files."""
        return f"{self.clicks[0].path.name} line {self.clicks[0].line}"


def find_tasks(clicks: Sequence[UserClick], clicks_path: Path, root: Path, dataset: str,
               previous_masks: Path | None) -> tuple[list[ClickTask], list[DataError]]:
    """Group the clicks of ``dataset`` into full_stems, checking them against the dataset's files.

    Returns the tasks and a problem for each full_stem that cannot be used (its rows disagree,
    its image is unknown, its previous mask is missing); those full_stems are left out.
    """
    records = {r.stem: r for r in scan_dataset(root, dataset)}
    name_in_csv = DATASETS[dataset].clicks_name
    grouped: dict[str, list[UserClick]] = {}
    for click in clicks:
        if click.dataset == name_in_csv:
            grouped.setdefault(click.full_stem, []).append(click)
    tasks, problems = [], []
    for full_stem, rows in grouped.items():
        first = rows[0]
        changed = [row for row in rows[1:]
                   if (row.image_stem, row.object_id, row.click_type) != (first.image_stem, first.object_id,
                                                                          first.click_type)]
        if changed:
            problems.append(DataError(clicks_path, f"line {changed[0].line}: full_stem {full_stem!r} changes image, "
                                                   f"object or click type (first seen on line {first.line})"))
            continue
        if first.image_stem not in records:
            problems.append(DataError(clicks_path, f"line {first.line}: image '{first.image_stem}' not found in "
                                                   f"{root / dataset}"))
            continue
        previous = None
        if first.click_type != "first":
            if previous_masks is None:
                problems.append(DataError(clicks_path, f"line {first.line}: a {first.click_type} click needs its "
                                                       "previous mask; set previous_masks"))
                continue
            previous = previous_masks / f"{full_stem}.png"
            if not previous.is_file():
                problems.append(DataError(previous, f"previous mask of full_stem {full_stem!r} ({clicks_path.name} "
                                                    f"line {first.line}) not found"))
                continue
        tasks.append(ClickTask(dataset, full_stem, records[first.image_stem], first.object_id, first.click_type,
                               tuple(rows), previous))
    return tasks, problems


def object_problem(task: ClickTask, instance_ids: Sequence[int], clicks_path: Path) -> DataError | None:
    """The problem of a task whose object is not (or not unambiguously) in its image's mask."""
    if task.object_id is None:
        if len(instance_ids) != 1:
            return DataError(clicks_path, f"{task.where}: no object_stem, but image '{task.record.stem}' has "
                                          f"{len(instance_ids)} instances")
    elif task.object_id not in instance_ids:
        return DataError(clicks_path, f"{task.where}: object {task.object_id} not in the mask of image "
                                      f"'{task.record.stem}' (ids {list(instance_ids)})")
    return None


# Version of the previous-mask check's rule (bump when _previous_mask's reading changes).
PREVIOUS_MASK_RULE = "rclicks-previous-mask/1"


def check_previous_mask(task: ClickTask) -> dict[str, Any]:
    """Decode a previous mask as :func:`_previous_mask` does; returns its ``size``."""
    assert task.previous_mask is not None
    try:
        prev = read_mask(task.previous_mask, "first_channel")
    except DataError as err:
        raise DataError(err.path, f"{err.problem} (the previous mask of full_stem {task.full_stem!r}, "
                                  f"{task.source})") from err
    return {"size": [int(prev.shape[0]), int(prev.shape[1])]}


def previous_mask_check(task: ClickTask) -> FileCheck:
    assert task.previous_mask is not None
    return FileCheck(check_key(PREVIOUS_MASK_RULE, task.previous_mask), (task.previous_mask,),
                     functools.partial(check_previous_mask, task))


def _instance_mask(task: ClickTask, sample: dict[str, Any], clicks_path: Path) -> np.ndarray:
    ids = sample["instance_ids"]
    problem = object_problem(task, ids, clicks_path)
    if problem is not None:
        raise problem
    if task.object_id is None:
        return sample["instances"][0]
    return sample["instances"][ids.index(task.object_id)]


def previous_mask_resized(task: ClickTask, mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """How the previous mask of ``task`` (``mask_size`` = ``(h, w)``) reaches the loaded image
    (``image_size``): False when it has the image's size, True when it has the clicks' original
    frame size (TETRIS images are loaded limited to 2048 px) and is resized. Any other size is
    a :class:`DataError` naming the mask and the clicks.csv line of the full_stem that refers to it.

    The one rule for both the check in ``setup()`` (sizes from the cached file checks) and
    :func:`_previous_mask` at read time.
    """
    assert task.previous_mask is not None
    mask_size, image_size = tuple(mask_size), tuple(image_size)
    if mask_size == image_size:
        return False
    frame = (task.clicks[0].h, task.clicks[0].w)
    if mask_size == frame:
        return True
    raise DataError(task.previous_mask, f"size {mask_size[1]}x{mask_size[0]} matches neither the image "
                                        f"({image_size[1]}x{image_size[0]}) nor the clicks' frame "
                                        f"({frame[1]}x{frame[0]}) of full_stem {task.full_stem!r} ({task.source})")


def clicks_in_image(task: ClickTask, height: int, width: int) -> tuple[list[tuple[int, int]], list[DataError]]:
    """The ``(y, x)`` of every click of ``task`` in the loaded ``height x width`` image
    (:meth:`UserClick.in_image`), and a problem for each row whose frame does not match the
    image or whose click falls outside it (naming clicks.csv and the row's line).

    The one rule for both the check in ``setup()`` and :func:`load_task` at read time.
    """
    points, problems = [], []
    for click in task.clicks:
        try:
            points.append(click.in_image(height, width))
        except DataError as err:
            problems.append(err)
    return points, problems


def _previous_mask(task: ClickTask, shape: tuple[int, int]) -> np.ndarray:
    """The previous mask at image resolution (see :func:`previous_mask_resized`)."""
    assert task.previous_mask is not None
    prev = read_mask(task.previous_mask, "first_channel")
    if previous_mask_resized(task, prev.shape, shape):
        prev = cv2.resize(prev, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return prev > 127


def load_task(task: ClickTask, clicks_path: Path, sigma: float, size: int, cache: ClickMapCache | None,
              full_resolution: bool = False) -> dict[str, Any]:
    """Build one sample: letterboxed ``image`` (3 x S x S), ``click_maps`` (2 x S x S,
    ``[target, error]``) and ``target`` (1 x S x S GT click map); with ``full_resolution``
    also the image-frame ``gt`` / ``error`` masks, ``clicks_xy`` and the ``letterbox``."""
    sample = load_sample(task.record)
    gt = _instance_mask(task, sample, clicks_path)
    height, width = gt.shape
    previous = _previous_mask(task, (height, width)) if task.click_type != "first" else None
    error = error_mask(task.click_type, gt, previous)
    if not error.any():
        raise DataError(task.previous_mask or task.record.mask,
                        f"empty error region for full_stem {task.full_stem!r} ({task.click_type}, {task.source})")
    clicks_yx, problems = clicks_in_image(task, height, width)  # rescaled; checked in setup(), again here
    if problems:
        raise problems[0]
    clicks_xy = np.array([(x, y) for y, x in clicks_yx], dtype=np.int64)

    def compute() -> np.ndarray:
        return gt_click_map(clicks_xy, error, sigma)

    target = cache.get(task.full_stem, sigma, (height, width), compute) if cache is not None else compute()
    box = Letterbox.fit(height, width, size)
    out: dict[str, Any] = {
        "image": box.image(sample["image"]),
        "click_maps": torch.from_numpy(np.stack([box.mask(gt), box.mask(error)])),
        "target": torch.from_numpy(box.mask(target))[None],
        "full_stem": task.full_stem,
        "dataset": task.dataset,
        "click_type": task.click_type,
    }
    if full_resolution:
        out |= {"gt": gt, "error": error, "clicks_xy": clicks_xy, "letterbox": box, "rgb": sample["image"]}
    return out


class ClickMapSet(Dataset):
    """The full_stems of one split; ``caches`` maps each dataset name to its GT-map cache (or None)."""

    def __init__(self, tasks: list[ClickTask], clicks_path: Path, sigma: float, size: int,
                 caches: dict[str, ClickMapCache | None], full_resolution: bool = False) -> None:
        self.tasks = tasks
        self.clicks_path = clicks_path
        self.sigma = sigma
        self.size = size
        self.caches = caches
        self.full_resolution = full_resolution

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = self.tasks[index]
        return load_task(task, self.clicks_path, self.sigma, self.size, self.caches.get(task.dataset),
                         self.full_resolution)


def single_full_stem(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Test collate: batch size 1, tensors get a batch axis, numpy arrays stay as they are."""
    if len(batch) != 1:
        raise ValueError(f"the clickability evaluation takes one full_stem per step, got {len(batch)}")
    item = dict(batch[0])
    for key in ("image", "click_maps", "target"):
        item[key] = item[key][None]
    return item


class ClickMapDataModule(LitSegDataModule):
    """Images + instance masks + ``clicks.csv`` (+ previous masks) -> clickability-model samples.

    Args:
        root: folder with one benchmark-layout folder per dataset (``<root>/TETRIS/...``).
        clicks: RClicks ``clicks.csv`` (real, or synthetic from ``litseg.rclicks.synthetic_clicks``).
        dataset: the training dataset (train / val full_stems come from it).
        previous_masks: folder of ``<full_stem>.png`` previous masks of the fn / fp rows.
        train_list, val_list: image-stem lists of the split (``TETRIS_train.txt`` / ``_val.txt``).
        test_datasets: datasets of the test split (default: ``[dataset]``, its val stems).
        sigma: the GT click-map sigma relative to a Full-HD diagonal (released model: 5).
        input_size: letterbox size (416 upstream; smaller for CPU tests).
        flip_p: probability of the joint horizontal flip in training.
        cache_dir: optional folder of cached GT maps (``.npy`` per full_stem and sigma).
        batch_size, num_workers, seed: loader settings (test always uses batch size 1).
    """

    def __init__(
        self,
        root: str,
        clicks: str,
        dataset: DatasetName = "TETRIS",
        previous_masks: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_datasets: list[DatasetName] | None = None,
        sigma: float = 5.0,
        input_size: int = DEFAULT_SIZE,
        flip_p: float = 0.5,
        cache_dir: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        for name in [dataset, *(test_datasets or [])]:
            if name not in DATASETS:
                raise DataError(self.root / name, f"unknown dataset '{name}'; known: {sorted(DATASETS)}")
        self.clicks_path = Path(clicks)
        self.dataset = dataset
        self.previous_masks = Path(previous_masks) if previous_masks else None
        self.train_list = train_list
        self.val_list = val_list
        self.test_datasets = list(test_datasets) if test_datasets else [dataset]
        self.sigma = sigma
        self.input_size = input_size
        self.flip_p = flip_p
        self.cache = ClickMapCache(cache_dir) if cache_dir else None
        self.train_set: ClickMapSet | None = None
        self.val_set: ClickMapSet | None = None
        self.test_set: ClickMapSet | None = None

    # ------------------------------------------------------------------ splits
    def _split_stems(self) -> tuple[set[str] | None, set[str] | None]:
        train = set(read_stem_list(self.train_list)) if self.train_list else None
        val = set(read_stem_list(self.val_list)) if self.val_list else None
        if train is not None and val is not None and train & val:
            raise DataError(self.val_list, f"{len(train & val)} image stem(s) also in {self.train_list}, "
                                           f"e.g. {sorted(train & val)[0]!r}")
        known = {r.stem for r in scan_dataset(self.root, self.dataset)}
        for path, stems in ((self.train_list, train), (self.val_list, val)):
            if stems is not None and stems - known:
                raise DataError(path, f"{len(stems - known)} stem(s) not in {self.root / self.dataset}, "
                                      f"e.g. {sorted(stems - known)[0]!r}")
        return train, val

    def _cache_for(self, dataset: str) -> ClickMapCache | None:
        # One sub-folder per dataset: full_stems are only unique within a dataset.
        return ClickMapCache(self.cache.folder / dataset) if self.cache is not None else None

    def setup(self, stage: str | None = None) -> None:
        """Build the full_stems of the splits ``stage`` reads and check them before the first step:
        every image and instance mask is loaded as in training, every previous mask decoded, every
        object looked up in its mask, every previous mask's size and every click row's frame
        matched to its loaded image; one error lists every problem (files unchanged since they
        passed are not read again, see :meth:`LitSegDataModule.check_files`).
        """
        self.check_root()
        clicks = read_user_clicks(self.clicks_path)
        train, val = self._split_stems()
        tasks, problems = find_tasks(clicks, self.clicks_path, self.root, self.dataset, self.previous_masks)
        caches = {name: self._cache_for(name) for name in {self.dataset, *self.test_datasets}}
        splits = STAGE_SPLITS.get(stage, STAGE_SPLITS[None])
        checked: list[ClickTask] = []
        if stage in (None, "fit", "validate"):
            if train is None or val is None:
                raise ValueError("training needs both train_list and val_list (image-stem split files)")
            train_tasks = [t for t in tasks if t.record.stem in train]
            val_tasks = [t for t in tasks if t.record.stem in val]
            for path, chosen in ((self.train_list, train_tasks), (self.val_list, val_tasks)):
                if not chosen:
                    raise_problems(problems, self.clicks_path, f"{self.dataset} rows")
                    raise DataError(path, f"none of its images has clicks in {self.clicks_path}")
            self.train_set = ClickMapSet(train_tasks, self.clicks_path, self.sigma, self.input_size, caches)
            self.val_set = ClickMapSet(val_tasks, self.clicks_path, self.sigma, self.input_size, caches)
            checked += (train_tasks if "train" in splits else []) + val_tasks
        if stage in (None, "test"):
            test_tasks: list[ClickTask] = []
            for name in self.test_datasets:
                if name == self.dataset:
                    found = tasks if val is None else [t for t in tasks if t.record.stem in val]
                else:
                    found, more = find_tasks(clicks, self.clicks_path, self.root, name, self.previous_masks)
                    problems += more
                if not found:
                    raise_problems(problems, self.clicks_path, f"{name} rows")
                    raise DataError(self.clicks_path, f"no full_stems of dataset {name} to evaluate")
                test_tasks.extend(found)
            self.test_set = ClickMapSet(test_tasks, self.clicks_path, self.sigma, self.input_size, caches,
                                        full_resolution=True)
            checked += test_tasks
        problems += self._check_tasks(checked, stage)
        raise_problems(problems, self.root, f"{self.clicks_path.name} full_stems of stage {stage or 'all'}, "
                                            "checked before the first step")

    def _check_tasks(self, tasks: Sequence[ClickTask], stage: str | None) -> list[DataError]:
        """Load every image / instance mask and decode every previous mask of ``tasks``; look
        each task's object up in its mask, check its previous mask's size and its clicks' frames
        against the loaded image size (the sizes the file checks return, cached with them).
        Returns the problems."""
        tasks = list({(t.dataset, t.full_stem): t for t in tasks}.values())  # val is also test: once each
        records = list({t.record: None for t in tasks})
        previous = list({t.previous_mask: t for t in tasks if t.previous_mask is not None}.values())
        checks = [record_check(r) for r in records] + [previous_mask_check(t) for t in previous]
        report = self.check_files(checks, f"{self.clicks_path.name} ({stage or 'all stages'})")
        problems = list(report.problems)
        found: dict[tuple[str, str], ImageSummary] = summaries(records, report.infos)
        for task in tasks:
            summary = found.get((task.record.dataset, task.record.stem))
            if summary is None:  # its image / mask failed: already a problem
                continue
            problem = object_problem(task, summary.instance_ids, self.clicks_path)
            if problem is not None:
                problems.append(problem)
            image_size = (summary.height, summary.width)
            if task.previous_mask is not None:
                info = report.infos.get(previous_mask_check(task).key)
                if info is not None:  # None: the mask failed to decode, already a problem
                    try:
                        previous_mask_resized(task, info["size"], image_size)
                    except DataError as err:
                        problems.append(err)
            problems += clicks_in_image(task, *image_size)[1]
        return problems

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return self.make_loader(self.train_set, shuffle=True, drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') first"
        return self.make_loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup('test') first"
        return self.make_loader(self.test_set, shuffle=False, collate_fn=single_full_stem, batch_size=1)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Joint horizontal flip of training batches, per sample from ``(seed, epoch, full_stem)``."""
        trainer = self.trainer
        if trainer is None or not trainer.training or self.flip_p == 0.0:
            return batch
        epoch = trainer.current_epoch
        flip = torch.tensor([item_rng(self.seed, "flip", epoch, stem).random() < self.flip_p
                             for stem in batch["full_stem"]], device=batch["image"].device)
        if flip.any():
            for key in ("image", "click_maps", "target"):
                batch[key] = torch.where(flip.view(-1, 1, 1, 1), batch[key].flip(-1), batch[key])
        return batch
