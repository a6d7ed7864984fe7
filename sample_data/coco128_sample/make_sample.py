"""Rebuild this COCO128 sample from a COCO128 checkout (byte-identical images, pruned JSON).

Usage (from the repository root)::

    python sample_data/coco128_sample/make_sample.py ../shared/data/coco_subset

Selection rule (deterministic, from the source files only):

* the smallest image file (bytes, ties by file name) that has an ``iscrowd`` annotation, so the
  sample exercises the crowd RLE path; plus
* the 7 smallest image files with 1 to 6 non-crowd annotations and no crowd annotation.

The JSON keeps, verbatim, the ``info`` block, the ``licenses`` table, the selected ``images``
entries (with their Flickr ``license`` ids and URLs), all their annotations, and only the
categories those annotations use, with their original COCO ids (the class list of the sample is
those categories in id order).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

N_PLAIN = 7
MAX_INSTANCES = 6


def select(data: dict, image_dir: Path) -> list[dict]:
    plain = Counter(a["image_id"] for a in data["annotations"] if not a["iscrowd"])
    crowd = Counter(a["image_id"] for a in data["annotations"] if a["iscrowd"])
    by_size = sorted(data["images"], key=lambda im: ((image_dir / im["file_name"]).stat().st_size, im["file_name"]))
    with_crowd = [im for im in by_size if crowd[im["id"]]][:1]
    few = [im for im in by_size if not crowd[im["id"]] and 1 <= plain[im["id"]] <= MAX_INSTANCES][:N_PLAIN]
    return sorted(with_crowd + few, key=lambda im: im["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="COCO128 folder with train2017/ and annotations/")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    image_dir = args.source / "train2017"
    data = json.loads((args.source / "annotations" / "instances_train2017.json").read_text())
    images = select(data, image_dir)
    ids = {im["id"] for im in images}
    annotations = sorted((a for a in data["annotations"] if a["image_id"] in ids), key=lambda a: a["id"])
    used = {a["category_id"] for a in annotations}
    categories = sorted((c for c in data["categories"] if c["id"] in used), key=lambda c: c["id"])
    out_images = args.out / "train2017"
    out_images.mkdir(parents=True, exist_ok=True)
    for old in out_images.glob("*.jpg"):
        old.unlink()
    for im in images:
        shutil.copyfile(image_dir / im["file_name"], out_images / im["file_name"])
    doc = {"info": data.get("info", {}), "licenses": data.get("licenses", []), "images": images,
           "annotations": annotations, "categories": categories}
    (args.out / "annotations").mkdir(parents=True, exist_ok=True)
    (args.out / "annotations" / "instances.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"{len(images)} images, {len(annotations)} annotations "
          f"({sum(a['iscrowd'] for a in annotations)} crowd), {len(categories)} categories -> {args.out}")


if __name__ == "__main__":
    main()
