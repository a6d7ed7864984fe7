"""Data for SAOM (SAM fine-tuning for whole-object segmentation, ``shared/specs/saom.md``).

Two sources give the same items:

* ``source: saom``: the SAOM metadata JSON (``litseg.readers.saom``; SAOM code:
  ``dataset/SCDTrack2PhD.py``): ``"entity classes"`` and ``"<split>_data"`` records, one PNG per
  instance (red channel > 0), splits train / val / test as listed in the file.
* ``source: coco``: a COCO instances file through the suite's one COCO reader
  (``litseg.readers.coco``): polygons and RLE decoded with pycocotools, crowd annotations never
  used as instances, category ids (ascending) -> contiguous class indices ``0..C-1``. COCO has
  no split lists: train / val come from ``CocoInstances.split(val_fraction)`` (a hash of the
  image id, salt "", so independent of ``seed`` and of the other images), and **test = val**.

One item per image, at its original size (no resize: the model does SAM's own preprocessing;
panoramas wider than 1024 px pass through unchanged)::

    {"image": uint8 H x W x 3, "masks": bool N x H x W, "labels": int64 (N,),
     "key": str, "mask_names": list[str] (N), "dropped_empty": int}

Instances whose mask has no foreground pixel are dropped (SAOM drops them: they have no location
prior); the kept ones stay in metadata / annotation-id order, with masks, labels and names aligned.
An image with no instance left is still returned (N = 0; the model decides what to do with it).
Batches are lists of item dicts (:func:`collate_items`): images differ in size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import Dataset

from datamodules.base import STAGE_SPLITS, LitSegDataModule
from litseg.io import ConfigError, DataError, FileCheck, check_key, raise_problems, read_image, read_json
from litseg.readers.coco import CocoInstances, LabelMap
from litseg.readers.saom import SPLITS, SaomMetadata, SaomRecord, read_instance_mask

Source = Literal["saom", "coco"]
KEY_PREFIX = "data.init_args."
# Versions of the up-front check rules (bump when what a check reads or returns changes).
IMAGE_RULE = "saom-image/1"
MASK_RULE = "saom-instance-mask/1"
COCO_RULE = "saom-coco-image/1"


def collate_items(batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A batch is the list of its item dicts: images and instance counts differ, nothing is stacked."""
    return list(batch)


def make_item(image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[int], key: str,
              mask_names: Sequence[str], dropped_empty: int) -> dict[str, Any]:
    """The item dict of one image from its kept (non-empty) instances, in order."""
    h, w = image.shape[:2]
    stacked = np.stack(masks) if len(masks) else np.zeros((0, h, w), dtype=bool)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8)),
        "masks": torch.from_numpy(np.ascontiguousarray(stacked, dtype=bool)),
        "labels": torch.as_tensor(list(labels), dtype=torch.int64),
        "key": key,
        "mask_names": list(mask_names),
        "dropped_empty": int(dropped_empty),
    }


# ----------------------------------------------------------------------------- datasets


class SaomImages(Dataset):
    """One split of the SAOM metadata: one item per record."""

    def __init__(self, records: Sequence[SaomRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = read_image(rec.image)
        masks, labels, names, dropped = [], [], [], 0
        for path, label, name in zip(rec.masks, rec.labels, rec.mask_names, strict=True):
            mask = read_instance_mask(path)
            _check_size(image.shape, mask.shape, path, rec)
            if not mask.any():  # SAOM drops instances without foreground; the others keep their order
                dropped += 1
                continue
            masks.append(mask)
            labels.append(label)
            names.append(name)
        return make_item(image, masks, labels, rec.image_name, names, dropped)


class CocoImages(Dataset):
    """Images of a COCO instances file: non-crowd annotations as instances, classes by ``label_map``."""

    def __init__(self, coco: CocoInstances, label_map: LabelMap, image_ids: Sequence[int]) -> None:
        self.coco = coco
        self.label_map = label_map
        self.image_ids = list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        image = self.coco.read_image(image_id)  # also checks the size against the JSON
        inst = self.coco.image_instances(image_id)  # crowd regions come back apart and are not used
        keep = inst.masks.reshape(len(inst), -1).any(axis=1)
        stem = Path(inst.image.file_name).stem
        names = [f"{stem}-ann{int(a)}" for a in inst.annotation_ids[keep]]
        labels = self.label_map.indices(inst.category_ids[keep]).tolist()
        return make_item(image, list(inst.masks[keep]), labels, inst.image.file_name, names,
                         int((~keep).sum()))


# ----------------------------------------------------------------------------- up-front checks


def _check_size(image_shape: tuple[int, ...], mask_shape: tuple[int, ...], mask: Path, rec: SaomRecord) -> None:
    if tuple(image_shape[:2]) != tuple(mask_shape[:2]):
        raise DataError(mask, f"size {mask_shape[1]}x{mask_shape[0]} does not match its image {rec.image} "
                              f"({image_shape[1]}x{image_shape[0]}) ({rec.where})")


def _image_info(path: Path, where: str) -> dict[str, Any]:
    try:
        image = read_image(path)
    except DataError as err:
        raise DataError(err.path, f"{err.problem} (image of {where})") from err
    return {"size": [int(image.shape[0]), int(image.shape[1])]}


def _mask_info(path: Path, where: str) -> dict[str, Any]:
    try:
        mask = read_instance_mask(path)
    except DataError as err:
        raise DataError(err.path, f"{err.problem} (instance mask of {where})") from err
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "empty": not bool(mask.any())}


def _coco_image_info(coco: CocoInstances, image_id: int) -> dict[str, Any]:
    coco.read_image(image_id)
    inst = coco.image_instances(image_id)
    empty = ~inst.masks.reshape(len(inst), -1).any(axis=1)
    return {"instances": len(inst), "empty": [int(a) for a in inst.annotation_ids[empty]],
            "crowd": len(inst.crowd_annotation_ids)}


# ----------------------------------------------------------------------------- the module


class SAOMDataModule(LitSegDataModule):
    """SAOM metadata or COCO instances, one image per item at its original size.

    Args:
        root: dataset root. SAOM: ``image_name`` and the ``entity_masks`` entries are relative to
            it. COCO: holds ``annotations/`` and the image folder unless both are given.
        source: ``saom`` (metadata JSON) or ``coco`` (instances JSON).
        metadata: SAOM metadata JSON (a relative path resolves against the working directory);
            None = the one ``DSmetadata*.json`` in ``root``.
        coco_json: COCO instances JSON (relative: against the working directory); None =
            ``<root>/annotations/instances.json``, else ``<root>/annotations/instances_train2017.json``.
        coco_images: folder of the COCO ``file_name``s (relative: against the working directory);
            None = ``<root>/train2017``, else ``<root>/images``.
        val_fraction: COCO only: share of images in val by image-id hash (test = val).
        classes: the class list the model is built for; None = from the data (SAOM ``"entity
            classes"``, COCO categories in id order). When given it must equal the data's list.
        eval_classes: the subset evaluated (upstream: 55 trained, 48 evaluated); None = all. Each
            must be one of ``classes``.
        batch_size: images per batch (SAOM trains on 1 image per step).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
        max_images: keep only the first N images of each split (file order for SAOM, image id
            order for COCO), for demos and tests; None = all.
    """

    def __init__(self, root: str, source: Source = "saom", metadata: str | None = None,
                 coco_json: str | None = None, coco_images: str | None = None, val_fraction: float = 0.25,
                 classes: list[str] | None = None, eval_classes: list[str] | None = None,
                 batch_size: int = 1, num_workers: int = 0, seed: int = 0, max_images: int | None = None) -> None:
        super().__init__(root, batch_size=batch_size, num_workers=num_workers, seed=seed)
        if source not in ("saom", "coco"):
            raise ConfigError(KEY_PREFIX + "source", f"must be 'saom' or 'coco', got {source!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(KEY_PREFIX + "val_fraction", f"must be in (0, 1), got {val_fraction}")
        if max_images is not None and max_images < 1:
            raise ConfigError(KEY_PREFIX + "max_images", f"must be >= 1 or null, got {max_images}")
        self.source = source
        self.metadata = metadata
        self.coco_json = coco_json
        self.coco_images = coco_images
        self.val_fraction = val_fraction
        self.config_classes = None if classes is None else list(classes)
        self.config_eval_classes = None if eval_classes is None else list(eval_classes)
        self.max_images = max_images
        self.datasets: dict[str, SaomImages | CocoImages] = {}
        self.dropped_empty: dict[str, int] = {}  # split -> empty instance masks dropped (set by setup)
        self._doc: Any = None  # parsed SAOM metadata, read once
        self._coco: CocoInstances | None = None
        self._label_map: LabelMap | None = None
        self._classes: list[str] | None = None
        self._eval_indices: list[int] | None = None
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ classes

    @property
    def classes(self) -> list[str]:
        """Class names, index = label (read from the data on first use; setup not needed)."""
        if self._classes is None:
            self._resolve_classes()
        assert self._classes is not None
        return list(self._classes)

    @property
    def eval_class_indices(self) -> list[int]:
        """Indices of the evaluated classes, ascending (all classes when ``eval_classes`` is None)."""
        if self._eval_indices is None:
            self._resolve_classes()
        assert self._eval_indices is not None
        return list(self._eval_indices)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _resolve_classes(self) -> None:
        if self.source == "saom":
            path = self.metadata_path()
            data_classes = SaomMetadata.from_dict(self._metadata_doc(), path, self.root, splits=()).classes
            origin = f"the 'entity classes' of {path}"
        else:
            coco = self._coco_index()
            data_classes = list(self._coco_label_map().names)
            origin = f"the categories (id order) of {coco.path}"
        if self.config_classes is not None and self.config_classes != data_classes:
            extra = [c for c in self.config_classes if c not in data_classes]
            missing = [c for c in data_classes if c not in self.config_classes]
            detail = (f"not in the data: {extra[:5]}; " if extra else "") + (
                f"in the data but not listed: {missing[:5]}; " if missing else "")
            raise ConfigError(KEY_PREFIX + "classes",
                              f"{len(self.config_classes)} classes given, but they differ from {origin} "
                              f"({len(data_classes)}: {detail or 'same names, other order; '}"
                              "set it to the data's list in its order, or null to take it from the data)")
        indices = list(range(len(data_classes)))
        if self.config_eval_classes is not None:
            unknown = [c for c in self.config_eval_classes if c not in data_classes]
            if unknown:
                raise ConfigError(KEY_PREFIX + "eval_classes", f"{unknown} not among the {len(data_classes)} "
                                                               f"classes of {origin}")
            if len(set(self.config_eval_classes)) != len(self.config_eval_classes):
                raise ConfigError(KEY_PREFIX + "eval_classes", "lists a class twice")
            indices = sorted(data_classes.index(c) for c in self.config_eval_classes)
        self._classes, self._eval_indices = data_classes, indices

    # ------------------------------------------------------------------ files

    def metadata_path(self) -> Path:
        """The SAOM metadata JSON (``metadata``, or the one ``DSmetadata*.json`` in ``root``)."""
        if self.metadata is not None:
            return Path(self.metadata)
        self.check_root()
        found = sorted(self.root.glob("DSmetadata*.json"))
        if len(found) != 1:
            raise ConfigError(KEY_PREFIX + "metadata", f"not set, and {self.root} holds {len(found)} "
                                                       f"DSmetadata*.json files {[f.name for f in found]}; set it")
        return found[0]

    def coco_paths(self) -> tuple[Path, Path]:
        """(instances JSON, image folder) of the COCO source."""
        if self.coco_json is not None:
            json_path = Path(self.coco_json)
        else:
            names = ("instances.json", "instances_train2017.json")
            found = [self.root / "annotations" / n for n in names if (self.root / "annotations" / n).is_file()]
            if not found:
                self.check_root()
                raise ConfigError(KEY_PREFIX + "coco_json", f"not set, and {self.root}/annotations holds none of "
                                                            f"{list(names)}; set it")
            json_path = found[0]
        if self.coco_images is not None:
            return json_path, Path(self.coco_images)
        for name in ("train2017", "images"):
            if (self.root / name).is_dir():
                return json_path, self.root / name
        raise ConfigError(KEY_PREFIX + "coco_images", f"not set, and {self.root} has no train2017/ or images/ "
                                                      "folder; set it")

    def _metadata_doc(self) -> Any:
        if self._doc is None:
            self._doc = read_json(self.metadata_path())
        return self._doc

    def _coco_index(self) -> CocoInstances:
        if self._coco is None:
            json_path, images = self.coco_paths()
            self._coco = CocoInstances.load(json_path, images)  # validates everything, lists all problems
        return self._coco

    def _coco_label_map(self) -> LabelMap:
        if self._label_map is None:
            self._label_map = self._coco_index().label_map()
        return self._label_map

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Check every file of the splits ``stage`` reads, before the first step.

        SAOM: the metadata (all records of those splits), then each image and instance mask is
        decoded with the item readers: unreadable or missing files, and masks of another size
        than their image, are all reported at once. COCO: the instances file is validated by
        the COCO reader; each image is read (size against the JSON) and its masks decoded.
        Empty instance masks are not errors: they are counted per split (``dropped_empty``) and
        reported once. Files unchanged since they passed are not decoded again
        (:meth:`LitSegDataModule.check_files`).
        """
        splits = STAGE_SPLITS.get(stage, STAGE_SPLITS[None])
        if self.source == "saom":
            self._setup_saom(splits)
        else:
            self._setup_coco(splits)
        for split in splits:
            if split not in self._reported:
                self._reported.add(split)
                rank_zero_info(f"SAOM data ({self.source}) {split}: {len(self.datasets[split])} images, "
                               f"{self.dropped_empty[split]} empty instance mask(s) dropped")

    def _limit(self, items: list) -> list:
        return items if self.max_images is None else items[: self.max_images]

    def _setup_saom(self, splits: Sequence[str]) -> None:
        self.check_root()
        path = self.metadata_path()
        meta = SaomMetadata.from_dict(self._metadata_doc(), path, self.root, splits=splits)
        self._resolve_classes()  # after the metadata check, so a broken file lists all its problems
        records = {s: self._limit(meta.records(s)) for s in splits}
        checks: dict[str, FileCheck] = {}
        for split in splits:
            for rec in records[split]:
                where = f"{rec.where} in {path}"
                key = check_key(IMAGE_RULE, rec.image)
                checks.setdefault(key, FileCheck(key, (rec.image,), functools.partial(_image_info, rec.image, where)))
                for j, mask in enumerate(rec.masks):
                    key = check_key(MASK_RULE, mask)
                    checks.setdefault(key, FileCheck(key, (mask,), functools.partial(
                        _mask_info, mask, f"{rec.where} entity_masks[{j}] in {path}")))
        what = f"SAOM {' + '.join(splits)}"
        report = self.check_files(list(checks.values()), what)
        problems = list(report.problems)
        for split in splits:
            dropped = 0
            for rec in records[split]:
                image = report.infos.get(check_key(IMAGE_RULE, rec.image))
                for mask in rec.masks:
                    info = report.infos.get(check_key(MASK_RULE, mask))
                    if image is None or info is None:
                        continue  # already reported
                    try:
                        _check_size(tuple(image["size"]), tuple(info["size"]), mask, rec)
                    except DataError as err:
                        problems.append(err)
                    dropped += bool(info["empty"])
            self.dropped_empty[split] = dropped
        raise_problems(problems, path, f"{what} split{'s' if len(splits) > 1 else ''} of {path}, checked before "
                                       "the first step")
        for split in splits:
            if not records[split]:
                raise DataError(path, f"the {split} split ('{split}_data') has no records")
            self.datasets[split] = SaomImages(records[split])

    def _setup_coco(self, splits: Sequence[str]) -> None:
        coco = self._coco_index()
        self._resolve_classes()
        train, val = coco.split(self.val_fraction)
        ids = {"train": self._limit(list(train.image_ids)), "val": self._limit(list(val.image_ids))}
        ids["test"] = ids["val"]  # COCO has no split lists: test = val (documented in the class)
        checks: dict[str, FileCheck] = {}
        for split in splits:
            for image_id in ids[split]:
                path = coco.image_path(image_id)
                key = check_key(COCO_RULE, coco.path, path)
                checks.setdefault(key, FileCheck(key, (coco.path, path),
                                                 functools.partial(_coco_image_info, coco, image_id)))
        what = f"COCO {' + '.join(splits)} for SAOM"
        report = self.check_files(list(checks.values()), what)
        raise_problems(report.problems, coco.path, f"{what}, checked before the first step")
        for split in splits:
            if not ids[split]:
                raise DataError(coco.path, f"the {split} split is empty ({len(coco)} images, val_fraction "
                                           f"{self.val_fraction}: val = test = image-id hash < val_fraction); "
                                           "change data.init_args.val_fraction")
            infos = [report.infos[check_key(COCO_RULE, coco.path, coco.image_path(i))] for i in ids[split]]
            self.dropped_empty[split] = sum(len(info["empty"]) for info in infos)
            self.datasets[split] = CocoImages(coco, self._coco_label_map(), ids[split])

    # ------------------------------------------------------------------ loaders

    def train_dataloader(self):
        return self.make_loader(self.datasets["train"], shuffle=True, collate_fn=collate_items)

    def val_dataloader(self):
        return self.make_loader(self.datasets["val"], shuffle=False, collate_fn=collate_items)

    def test_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate_items)

    def predict_dataloader(self):
        return self.make_loader(self.datasets["test"], shuffle=False, collate_fn=collate_items)


__all__ = ["SPLITS", "CocoImages", "SAOMDataModule", "SaomImages", "collate_items", "make_item"]
