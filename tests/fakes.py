"""Tiny fake datasets in every format the suite reads, written under a given folder.

One writer per format; each returns what a test needs to point a reader or a DataModule at it:

* RITM / RClicks benchmark layouts (``litseg/readers/ritm.py``): :func:`write_ritm` writes
  given (already encoded) masks in a dataset's layout; :func:`tiny_ritm` makes a few images
  with masks in the dataset's own encoding (GrabCut / Berkeley: 255 object, 128 ignore band;
  DAVIS / COCO_MVal: palette PNG; TETRIS / PREVIEW: RGB instance ids, see :func:`encode_ids`).
* RClicks ``clicks.csv`` with previous masks and split lists: :func:`write_synthetic_clicks`
  (the library's own writer, ``litseg.rclicks.synthetic_clicks``); hand-written rows:
  :func:`write_clicks_csv`.
* Oxford-IIIT Pet (``images/``, ``annotations/trimaps/``, optional ``weak_labels.json``):
  :func:`write_pet`, :func:`tiny_pet`.
* COCO instances JSON (polygon / RLE / crowd): :func:`write_coco`, :func:`tiny_coco`.
* SAOM metadata JSON (``shared/specs/saom.md`` §5): :func:`write_saom`.
* ConverSeg training JSONL and eval ``items.json`` (``shared/specs/converseg.md`` §5):
  :func:`write_converseg`.

Everything is deterministic (seeded by the arguments) and small (tens of pixels).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from litseg.readers.ritm import DATASETS

PathLike = str | os.PathLike[str]
ImageSource = Mapping[str, np.ndarray] | Callable[[str, tuple[int, int]], np.ndarray] | None


# ----------------------------------------------------------------------------- basics


def save_image(path: PathLike, array: np.ndarray, palette: Sequence[int] | None = None) -> Path:
    """Write ``array`` (H x W or H x W x 3 uint8) with PIL (format from the suffix), creating
    the folder; with ``palette`` an ``L`` image becomes a palette (``P``) image, its values the
    indices."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(array))
    if palette is not None:
        img.putpalette(list(palette))
    img.save(path)
    return path


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random ``H x W x 3`` uint8 image."""
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def _seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def _image_for(images: ImageSource, stem: str, shape: tuple[int, int]) -> np.ndarray:
    if images is None:
        return noise_image(*shape, seed=_seed_of(stem))
    if callable(images):
        return images(stem, shape)
    return images[stem]


def ellipse_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A bool ``H x W`` mask holding one filled ellipse well inside the frame."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    cy = int(rng.integers(height * 2 // 5, height * 3 // 5 + 1))
    cx = int(rng.integers(width * 2 // 5, width * 3 // 5 + 1))
    ay, ax = max(2, height // 4), max(2, width // 4)
    cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


# ----------------------------------------------------------------------------- RITM layouts


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """RGB id PNG content (``H x W x 3`` uint8, RGB order) of an instance-id map: the inverse of
    :func:`litseg.readers.ritm.decode_ids` (id = B * 65536 + G * 256 + R)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 1 << 24:
        raise ValueError("instance ids must be in 0 .. 2**24 - 1")
    return np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)


def ritm_mask_ext(dataset: str) -> str:
    """The mask suffix the real benchmark uses (GrabCut's are BMP, the others PNG)."""
    return ".bmp" if dataset == "GrabCut" else ".png"


def write_ritm(root: PathLike, dataset: str, masks: Mapping[str, np.ndarray], *, images: ImageSource = None,
               image_ext: str = ".jpg", mask_ext: str | None = None,
               palette: Sequence[int] | None = None) -> Path:
    """Write ``masks`` (stem -> mask array exactly as stored on disk) and one image per stem in
    the layout of ``dataset`` under ``<root>/<dataset>/``; returns ``root``.

    ``images``: stem -> image, a function ``(stem, (h, w)) -> image``, or None for noise
    seeded by the stem. ``mask_ext`` defaults to :func:`ritm_mask_ext`; ``palette`` writes the
    masks as palette PNGs (DAVIS style).
    """
    layout = DATASETS[dataset]
    root = Path(root)
    mask_ext = ritm_mask_ext(dataset) if mask_ext is None else mask_ext
    for stem, mask in masks.items():
        mask = np.asarray(mask)
        save_image(root / dataset / layout.image_dir / f"{stem}{image_ext}", _image_for(images, stem, mask.shape[:2]))
        save_image(root / dataset / layout.mask_dir / f"{stem}{mask_ext}", mask, palette)
    return root


DAVIS_PALETTE = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254


def tiny_ritm(root: PathLike, dataset: str, n: int = 2, size: tuple[int, int] = (24, 32), seed: int = 0,
              image_ext: str = ".jpg") -> list[str]:
    """``n`` images of ``size`` (h, w) with masks in the dataset's own encoding; returns the stems.

    grabcut encoding (GrabCut, Berkeley): 0 background, 255 object, a 128 (ignore) band on the
    object's border; nonzero (DAVIS, COCO_MVal): a palette PNG, index 1 on the object; rgb_ids
    (TETRIS, PREVIEW): two instances (ids 1 and 300, so G carries a byte) in RGB id encoding.
    """
    encoding = DATASETS[dataset].encoding
    h, w = size
    masks: dict[str, np.ndarray] = {}
    for i in range(n):
        stem = f"{dataset.lower()}{i:02d}"
        obj = ellipse_mask(h, w, seed=seed + i)
        if encoding == "grabcut":
            band = obj & ~cv2.erode(obj.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            masks[stem] = np.where(band, 128, np.where(obj, 255, 0)).astype(np.uint8)
        elif encoding == "nonzero":
            masks[stem] = obj.astype(np.uint8)
        else:
            ids = np.zeros((h, w), np.int64)
            ids[obj] = 1
            ids[1:h // 4 + 2, 1:w // 4 + 2] = 300  # a second instance in the corner
            masks[stem] = encode_ids(ids)
    palette = DAVIS_PALETTE if encoding == "nonzero" else None
    write_ritm(root, dataset, masks, image_ext=image_ext, palette=palette)
    return list(masks)


# ----------------------------------------------------------------------------- RClicks clicks.csv


def write_clicks_csv(path: PathLike, rows: Sequence[Sequence[object]], columns: Sequence[str] | None = None) -> Path:
    """A clicks.csv with RClicks' header (or ``columns``) and the given raw rows, written as given
    (bad rows included: for tests of the reader's errors)."""
    from litseg.rclicks.user_clicks import COLUMNS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS if columns is None else columns)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_synthetic_clicks(root: PathLike, dataset: str, out_dir: PathLike, **kwargs: Any) -> dict[str, Any]:
    """RClicks' clicks.csv, previous masks and train / val lists for ``<root>/<dataset>``, by the
    library's synthetic-click writer (``kwargs`` go to ``synthesize``). Returns the paths
    (``clicks``, ``previous_masks``, ``train_list``, ``val_list``) and the writer's ``counts``."""
    from litseg.rclicks.synthetic_clicks import CSV_NAME, PREVIOUS_MASKS, synthesize

    out_dir = Path(out_dir)
    counts = synthesize(root, dataset, out_dir, **kwargs)
    return {"clicks": out_dir / CSV_NAME, "previous_masks": out_dir / PREVIOUS_MASKS,
            "train_list": out_dir / "synthetic_train.txt", "val_list": out_dir / "synthetic_val.txt",
            "counts": counts}


# ----------------------------------------------------------------------------- Oxford-IIIT Pet


def write_pet(root: PathLike, trimaps: Mapping[str, np.ndarray], *, images: ImageSource = None,
              image_ext: str = ".png", weak_labels: bool = False) -> Path:
    """An Oxford-Pet layout: ``images/<stem><image_ext>`` and ``annotations/trimaps/<stem>.png``
    (1 pet, 2 background, 3 border); with ``weak_labels`` also ``weak_labels.json`` from the
    library's generator. Stems must be ``<Breed>_<n>`` for the DataModule (not for the
    generator). Returns ``root``."""
    root = Path(root)
    for stem, trimap in trimaps.items():
        trimap = np.asarray(trimap)
        save_image(root / "images" / f"{stem}{image_ext}", _image_for(images, stem, trimap.shape[:2]))
        save_image(root / "annotations" / "trimaps" / f"{stem}.png", trimap.astype(np.uint8))
    if weak_labels:
        from litseg.weak_labels.generate import write_weak_labels

        write_weak_labels(root, root / "weak_labels.json")
    return root


def pet_trimap(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A trimap (uint8 1 / 2 / 3) of one elliptic pet with a one-pixel border band."""
    obj = ellipse_mask(height, width, seed)
    inner = cv2.erode(obj.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return np.where(inner, 1, np.where(obj, 3, 2)).astype(np.uint8)


def tiny_pet(root: PathLike, n: int = 6, size: tuple[int, int] = (32, 40), weak_labels: bool = True,
             seed: int = 0) -> list[str]:
    """``n`` Oxford-Pet images (cats and dogs alternating) with trimaps and, by default, a
    weak_labels.json; returns the stems."""
    breeds = ("Abyssinian", "beagle", "Bengal", "boxer")
    trimaps = {f"{breeds[i % len(breeds)]}_{i + 1}": pet_trimap(*size, seed=seed + i) for i in range(n)}
    write_pet(root, trimaps, image_ext=".jpg", weak_labels=weak_labels)
    return list(trimaps)


# ----------------------------------------------------------------------------- COCO instances


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE written out by hand: column-major runs, starting with background."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    counts, current, run = [], False, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def write_coco(root: PathLike, data: Mapping[str, Any], *, image_dir: str = "images",
               json_name: str = "instances.json", fill: int = 90) -> Path:
    """Write ``data`` (a COCO instances dict) as ``<root>/<json_name>`` and a plain image of
    value ``fill`` for every entry of ``data["images"]`` under ``<root>/<image_dir>/``;
    returns the JSON path."""
    root = Path(root)
    for img in data["images"]:
        save_image(root / image_dir / img["file_name"], np.full((img["height"], img["width"], 3), fill, np.uint8))
    json_path = root / json_name
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))
    return json_path


def _coco_ann(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, segmentation: Any,
              iscrowd: int = 0) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "area": float(mask.sum()), "bbox": bbox, "segmentation": segmentation}


def tiny_coco(root: PathLike) -> dict[str, Any]:
    """Two 20 x 24 images, two categories and four annotations covering every segmentation kind:
    a polygon, a compressed RLE, an uncompressed crowd RLE and a compressed crowd RLE. Returns
    ``json``, ``images`` (the image folder) and ``masks`` (annotation id -> bool mask)."""
    from litseg.readers.coco import encode_mask

    h, w = 20, 24
    square = np.zeros((h, w), bool)
    square[2:10, 3:11] = True  # the polygon below, rasterised
    blob = ellipse_mask(h, w, seed=1)
    crowd = np.zeros((h, w), bool)
    crowd[14:19, 15:23] = True
    crowd2 = np.zeros((h, w), bool)
    crowd2[0:4, 0:6] = True
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                   {"id": 2, "file_name": "b.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 3, "name": "cup"}],
        "annotations": [
            _coco_ann(1, 1, 1, square, [[3, 2, 11, 2, 11, 10, 3, 10]]),
            _coco_ann(2, 1, 3, crowd, uncompressed_rle(crowd), iscrowd=1),
            _coco_ann(3, 2, 3, blob, encode_mask(blob)),
            _coco_ann(4, 2, 1, crowd2, encode_mask(crowd2), iscrowd=1),
        ],
    }
    json_path = write_coco(root, data)
    return {"json": json_path, "images": Path(root) / "images",
            "masks": {1: square, 2: crowd, 3: blob, 4: crowd2}}


# ----------------------------------------------------------------------------- SAOM metadata


SAOM_CLASSES = ("AlarmClock", "ArmChair", "Bowl", "Mug", "Sofa")


def write_saom(root: PathLike, splits: Mapping[str, int] | None = None, size: int = 32,
               classes: Sequence[str] = SAOM_CLASSES, name: str = "DSmetadataSAOMv1.json") -> Path:
    """SAOM's metadata JSON (``shared/specs/saom.md`` §5) with its images and per-instance masks.

    ``{"entity classes": [...], "<split>_data": [{"image_name", "entity_masks",
    "entity_indices"}]}``: ``image_name`` relative to ``root`` (joined with ``os.path.join``),
    ``entity_masks`` starting with ``/`` (upstream concatenates ``data_path + str``), one class
    index per mask. Images are ``size`` x ``size`` RGB (224 upstream); masks are 3-channel
    uint8 PNGs, 255 inside. File names split on ``-`` into 4 fields (scene = f0-f1, type = f2,
    object = f3, no ``-`` inside object ids). Returns the JSON path.
    """
    root = Path(root)
    splits = {"train": 2, "val": 1, "test": 1} if splits is None else splits
    doc: dict[str, Any] = {"entity classes": list(classes)}
    for s, (split, count) in enumerate(splits.items()):
        records = []
        for i in range(count):
            scene = f"FloorPlan{s + 1}-{i}"
            image_name = f"images/{scene}-rgb-view{i}.png"
            save_image(root / image_name, noise_image(size, size, seed=_seed_of(image_name)))
            masks, indices = [], []
            for j in range(2):  # two instances: left and right half, different classes
                cls = (s + i + j) % len(classes)
                mask = np.zeros((size, size, 3), np.uint8)
                x0 = 2 + j * size // 2
                mask[size // 4: 3 * size // 4, x0: x0 + size // 2 - 4] = 255
                mask_name = f"/masks/{scene}-mask-{classes[cls]}{j}.png"
                save_image(root / mask_name.lstrip("/"), mask)
                masks.append(mask_name)
                indices.append(cls)
            records.append({"image_name": image_name, "entity_masks": masks, "entity_indices": indices})
        doc[f"{split}_data"] = records
    path = root / name
    path.write_text(json.dumps(doc, indent=1))
    return path


# ----------------------------------------------------------------------------- ConverSeg


CONVERSEG_CONCEPTS = ("entities", "spatial", "relations", "affordances", "physics")


def write_converseg(root: PathLike, n: int = 3, size: tuple[int, int] = (24, 32),
                    dataset: str = "fake_converseg") -> dict[str, Path]:
    """ConverSeg's two formats (``shared/specs/converseg.md`` §5) over the same ``n`` samples:

    * training ``<root>/dataset.jsonl``: one ``{"image", "mask_merged", "prompt"}`` object per
      line, paths relative to ``root`` (``images/``, ``masks/``);
    * eval ``<root>/items.json``: ``{"dataset", "count", "items": [{"id", "image", "mask",
      "prompt", "concept"}]}``, paths relative to the JSON file's folder.

    Masks are single-channel 0/255 PNGs at the image's size, never empty (the exporter drops
    empty ones). Returns ``jsonl``, ``items`` and ``root``.
    """
    root = Path(root)
    lines, items = [], []
    for i in range(n):
        image = f"images/run0__img{i}.png"
        concept = CONVERSEG_CONCEPTS[i % len(CONVERSEG_CONCEPTS)]
        mask = f"masks/run0_{concept}_{i}_0.png"
        save_image(root / image, noise_image(*size, seed=i))
        save_image(root / mask, ellipse_mask(*size, seed=i).astype(np.uint8) * 255)
        prompt = f"the object someone could pick up ({i})"
        lines.append(json.dumps({"image": image, "mask_merged": mask, "prompt": prompt}))
        items.append({"id": f"{i:05d}", "image": image, "mask": mask, "prompt": prompt, "concept": concept})
    jsonl = root / "dataset.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    items_path = root / "items.json"
    items_path.write_text(json.dumps({"dataset": dataset, "count": len(items), "items": items}, indent=1))
    return {"jsonl": jsonl, "items": items_path, "root": root}
