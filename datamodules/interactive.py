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

from typing import Any

from torch.utils.data import DataLoader, Dataset

from datamodules.base import LitSegDataModule
from litseg.io import (
    DataError,
    raise_problems,
)
from litseg.readers.ritm import (
    DATASETS,
    DatasetName,
    ImageRecord,
    ImageSummary,
    find_dataset,
    load_sample,
    record_check,
    summaries,
)


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
