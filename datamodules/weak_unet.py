"""Oxford-IIIT Pet (Parkhi et al., CVPR 2012) for the weak-label UNet study.

Layout::

    <root>/images/<Name>_<n>.jpg
    <root>/annotations/trimaps/<Name>_<n>.png     # 1 = pet, 2 = background, 3 = border (ignored)
    <root>/annotations/trainval.txt, test.txt     # optional official lists

Label sets: ``binary`` (background, pet), ``species`` (background, cat, dog), ``breed``
(background + the 37 breeds in the official class-id order). Trimap value 3 becomes the
ignore index 255 in every target and in the metrics.

Training batches carry every kind of target at once (dense mask, point / scribble
labels, box pseudo-mask, image tags), so one DataModule serves every supervision kind;
the LightningModule picks the ones its config asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import STAGE_SPLITS, LitSegDataModule
from litseg.imaging import normalize
from litseg.io import (
    DataError,
    raise_problems,
    read_image,
)
from litseg.readers.oxford_pet import (
    LabelSet,
    PetRecord,
    class_names,
    find_pets,
    read_trimap_target,
    record_check,
    split_stems,
)
from litseg.seeding import item_rng
from litseg.weak_labels.format import ImageWeakLabels, check_size, load_weak_labels
from litseg.weak_labels.render import flatten_keypoints, render_box_target, render_sparse_target, unflatten_keypoints


class PetSegmentation(Dataset):
    """One split. ``weak`` (train only) adds the sparse / box / tag targets."""

    def __init__(self, records: Sequence[PetRecord], label_set: LabelSet, transform: A.Compose,
                 num_classes: int, weak: dict[str, ImageWeakLabels] | None = None,
                 point_radius: int = 2, scribble_width: int = 3, seed: int = 0) -> None:
        self.records = list(records)
        self.label_set = label_set
        self.transform = transform
        self.num_classes = num_classes
        self.weak = weak
        self.point_radius = point_radius
        self.scribble_width = scribble_width
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        # Training keys are (index, epoch) from EpochSampler: augmentation is then a pure function
        # of (seed, epoch, index), the same with any worker count and after resuming mid-run.
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        self.transform.set_random_seed(int(item_rng(self.seed, epoch, index).integers(2**31)))
        rec = self.records[index]
        image = read_image(rec.image)
        dense = read_trimap_target(rec, image.shape, self.label_set)
        cls = rec.class_id(self.label_set)
        sample: dict[str, Any] = {"stem": rec.stem, "orig_size": torch.tensor(image.shape[:2])}
        if self.weak is None:
            out = self.transform(image=image, mask=dense, keypoints=np.zeros((0, 2), np.float32))
        else:
            labels = self.weak[rec.stem]
            check_size(self.weak, rec.stem, image.shape[0], image.shape[1], rec.image)
            boxes = render_box_target(image.shape[0], image.shape[1], labels.boxes, cls)
            keypoints, layout = flatten_keypoints(labels.fg_points, labels.background_points,
                                                  labels.fg_scribbles, labels.background_scribbles)
            out = self.transform(image=image, mask=dense, masks=[boxes], keypoints=keypoints)
            h, w = out["mask"].shape
            kp = unflatten_keypoints(np.asarray(out["keypoints"]), layout)
            size = {"point_radius": self.point_radius, "scribble_width": self.scribble_width, "fg_value": cls}
            # Points and scribbles are rendered apart so combinations can weight them separately.
            points = render_sparse_target(h, w, kp.fg_points, kp.bg_points, [], [], **size)
            scribbles = render_sparse_target(h, w, [], [], kp.fg_scribbles, kp.bg_scribbles, **size)
            tags = torch.zeros(self.num_classes - 1)
            if labels.has_object:
                tags[cls - 1] = 1.0
            sample |= {
                "points": torch.from_numpy(points).long(),
                "scribbles": torch.from_numpy(scribbles).long(),
                "boxes": torch.from_numpy(np.asarray(out["masks"][0])).long(),
                "tags": tags,
            }
        sample["image"] = normalize(out["image"])
        sample["mask"] = torch.from_numpy(np.asarray(out["mask"])).long()
        return sample


class OxfordPetDataModule(LitSegDataModule):
    """Oxford-IIIT Pet with dense and weak targets.

    Args:
        root: dataset root (``images/``, ``annotations/trimaps/``).
        label_set: ``binary``, ``species`` or ``breed``.
        weak_labels: weak-label JSON made by ``python -m litseg.weak_labels`` (needed for weak supervision;
            ``None`` trains and evaluates on dense masks only).
        image_size: side of the square network input (divisible by 32).
        augment: random resized crop + horizontal flip on training images; point and scribble
            labels move with the image (they are keypoints, rendered after the transform).
        val_fraction, test_fraction: split sizes when the official lists are absent.
        point_radius, scribble_width: pixel size of rendered point / scribble labels at ``image_size``.
    """

    def __init__(self, root: str, label_set: LabelSet = "binary", weak_labels: str | None = None,
                 image_size: int = 256, augment: bool = False, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, point_radius: int = 2, scribble_width: int = 3,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if image_size % 32:
            raise ValueError(f"image_size must be divisible by 32 (UNet strides), got {image_size}")
        self.label_set = label_set
        self.weak_labels = weak_labels
        self.image_size = image_size
        self.augment = augment
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.point_radius = point_radius
        self.scribble_width = scribble_width
        self.class_names = class_names(label_set)
        self.num_classes = len(self.class_names)
        self.splits: dict[str, list[str]] = {}
        self.datasets: dict[str, PetSegmentation] = {}
        self._scan_problems: list[DataError] = []

    def _transform(self, train: bool) -> A.Compose:
        size = (self.image_size, self.image_size)
        if train and self.augment:
            ops = [A.RandomResizedCrop(size=size, scale=(0.5, 1.0)), A.HorizontalFlip(p=0.5)]
        else:
            ops = [A.Resize(*size)]
        # remove_invisible=False: sparse labels are rendered after the transform and clipped there.
        return A.Compose(ops, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), strict=True)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits once; then check every file of the splits ``stage`` reads.

        The check decodes each image and trimap with the training readers (size, trimap values)
        and compares image sizes with the weak-label file, so bad data stops here, before the
        first step, with every problem listed at once. Files unchanged since they passed are
        not decoded again (see :meth:`LitSegDataModule.check_files`).
        """
        if not self.datasets:
            self._build()
        splits = STAGE_SPLITS.get(stage, STAGE_SPLITS[None])
        records = [r for split in splits for r in self.datasets[split].records]
        what = f"Oxford-IIIT Pet {' + '.join(splits)}"
        report = self.check_files([record_check(r) for r in records], what)
        problems = list(self._scan_problems) + report.problems
        weak = self.datasets["train"].weak
        if weak is not None and "train" in splits:
            for rec in self.datasets["train"].records:
                info = report.infos.get(record_check(rec).key)
                if info is not None:
                    try:
                        check_size(weak, rec.stem, *info["size"], rec.image)
                    except DataError as err:
                        problems.append(err)
        raise_problems(problems, self.root, f"{what} split{'s' if len(splits) > 1 else ''}, checked before the "
                                            f"first step")

    def _build(self) -> None:
        self.check_root()
        records, self._scan_problems = find_pets(self.root)
        self.splits = split_stems(records, self.root, self.val_fraction, self.test_fraction, self.seed)
        by_stem = {r.stem: r for r in records}
        for split, stems in self.splits.items():
            if not stems:
                raise_problems(self._scan_problems, self.root, "image / trimap pairing of Oxford-IIIT Pet")
                raise DataError(self.root, f"the {split} split is empty ({len(records)} images found); "
                                           "add images or change val_fraction / test_fraction")
        weak = None
        if self.weak_labels is not None:
            weak = load_weak_labels(self.weak_labels, expected_stems=self.splits["train"])
        common = {"label_set": self.label_set, "num_classes": self.num_classes,
                  "point_radius": self.point_radius, "scribble_width": self.scribble_width, "seed": self.seed}
        datasets = {}
        for split, stems in self.splits.items():
            train = split == "train"
            datasets[split] = PetSegmentation([by_stem[s] for s in stems], transform=self._transform(train),
                                              weak=weak if train else None, **common)
        self.datasets = datasets  # only once complete: a failed build is redone by the next setup

    def train_dataloader(self):
        return self.make_loader(self.datasets["train"], shuffle=True, epoch_keys=True)

    def val_dataloader(self):
        return self.make_loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False)

    def predict_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False)
