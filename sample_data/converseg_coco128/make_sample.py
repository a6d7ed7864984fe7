"""Generate the ConverSeg referring sample from COCO128 (deterministic).

Usage: python sample_data/converseg_coco128/make_sample.py <coco_subset_dir>

<coco_subset_dir> holds train2017/*.jpg and annotations/instances_train2017.json (COCO128). The
annotations are read through the suite's one COCO reader (litseg.readers.coco). For a fixed list
of (category, template) queries, the first images (ascending id) where the query is
unambiguous give one sample each: the mask is the union of the referred non-crowd instances.
Images are downscaled to a long side of 320 px (INTER_AREA, JPEG quality 90); masks are the
original-resolution union resized with INTER_NEAREST to the same size, written as 0/255 PNG.
Both formats are written: train/dataset.jsonl (+ images/, masks/) and eval/items.json (+ images/,
masks/), with the same samples.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from litseg.readers.coco import CocoInstances  # noqa: E402

OUT = Path(__file__).resolve().parent
LONG_SIDE = 320
MIN_AREA = 400  # px at the original size: tiny instances make "left-most" / "largest" ambiguous to read
# (category, template, concept); template picks instances among the category's non-crowd ones.
QUERIES = [
    ("person", "leftmost", "spatial"), ("dog", "all", "entities"), ("car", "largest", "entities"),
    ("person", "rightmost", "spatial"), ("person", "all", "entities"), ("bowl", "all", "entities"),
    ("elephant", "largest", "entities"), ("cat", "all", "entities"), ("giraffe", "leftmost", "spatial"),
    ("zebra", "all", "entities"), ("dog", "the", "entities"), ("car", "all", "entities"),
    ("cat", "the", "entities"), ("person", "largest", "entities"),
]
PLURAL = {"person": "people", "bus": "buses", "giraffe": "giraffes", "zebra": "zebras", "dog": "dogs", "cat": "cats",
          "car": "cars", "bowl": "bowls", "elephant": "elephants"}
MAX_PER_IMAGE = 2


def _prompt(name: str, template: str) -> str:
    return {"leftmost": f"the left-most {name}", "rightmost": f"the right-most {name}",
            "largest": f"the largest {name}", "the": f"the {name}",
            "all": f"all the {PLURAL.get(name, name + 's')}"}[template]


def _select(template: str, anns, masks) -> list[int] | None:
    """Indices of the referred instances, None when the query does not apply unambiguously."""
    if template == "the":  # the only instance of its category
        return [0] if len(anns) == 1 else None
    if template == "all":
        return list(range(len(anns))) if len(anns) >= 2 else None
    if len(anns) < 2:
        return None
    if template == "largest":
        areas = sorted(((int(m.sum()), i) for i, m in enumerate(masks)), reverse=True)
        return [areas[0][1]] if areas[0][0] > 1.5 * areas[1][0] else None
    centres = sorted((a.bbox[0] + a.bbox[2] / 2, i) for i, a in enumerate(anns))
    pick = centres[0] if template == "leftmost" else centres[-1]
    other = centres[1] if template == "leftmost" else centres[-2]
    return [pick[1]] if abs(pick[0] - other[0]) > 20 else None


def main(coco_dir: str) -> None:
    coco_dir = Path(coco_dir)
    coco = CocoInstances.load(coco_dir / "annotations" / "instances_train2017.json", coco_dir / "train2017")
    for sub in ("train", "eval"):
        shutil.rmtree(OUT / sub, ignore_errors=True)
    used: dict[int, int] = {}
    samples = []
    for name, template, concept in QUERIES:
        cat = coco.category_id(name)
        for image_id in coco.image_ids:
            if used.get(image_id, 0) >= MAX_PER_IMAGE:
                continue
            anns = [a for a in coco.annotations_of(image_id, crowd=False) if a.category_id == cat]
            masks = [coco.annotation_mask(a) for a in anns]
            keep = [i for i, m in enumerate(masks) if m.sum() >= MIN_AREA]
            anns, masks = [anns[i] for i in keep], [masks[i] for i in keep]
            chosen = _select(template, anns, masks)
            if chosen is None:
                continue
            used[image_id] = used.get(image_id, 0) + 1
            union = np.any([masks[i] for i in chosen], axis=0)
            samples.append((image_id, union, _prompt(name, template), concept,
                            [int(anns[i].id) for i in chosen]))
            break
    lines, items, provenance = [], [], []
    for k, (image_id, union, prompt, concept, ann_ids) in enumerate(samples):
        image = coco.read_image(image_id)
        h, w = image.shape[:2]
        scale = LONG_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(union.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) * 255
        stem = Path(coco.images[image_id].file_name).stem
        for sub in ("train", "eval"):
            (OUT / sub / "images").mkdir(parents=True, exist_ok=True)
            (OUT / sub / "masks").mkdir(parents=True, exist_ok=True)
            img_path = OUT / sub / "images" / f"{stem}.jpg"
            if not img_path.exists():
                Image.fromarray(small).save(img_path, quality=90)
            Image.fromarray(mask).save(OUT / sub / "masks" / f"{stem}_{k:02d}.png", optimize=True)
        lines.append(json.dumps({"image": f"images/{stem}.jpg", "mask_merged": f"masks/{stem}_{k:02d}.png",
                                 "prompt": prompt}))
        items.append({"id": f"{k:05d}", "image": f"images/{stem}.jpg", "mask": f"masks/{stem}_{k:02d}.png",
                      "prompt": prompt, "concept": concept})
        provenance.append({"id": f"{k:05d}", "coco_image_id": image_id, "coco_annotation_ids": ann_ids})
    (OUT / "train" / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    (OUT / "eval" / "items.json").write_text(json.dumps(
        {"dataset": "converseg_coco128", "count": len(items), "items": items}, indent=1) + "\n")
    (OUT / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"{len(samples)} samples from {len({s[0] for s in samples})} images -> {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
