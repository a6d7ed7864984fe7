"""CLI of the weak-label generator: ``python -m litseg.weak_labels --root DIR --output FILE.json``.

See :mod:`litseg.weak_labels.generate` for what is generated and :mod:`litseg.weak_labels.format` for the file.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from litseg.io import DataError
from litseg.weak_labels.generate import GeneratorConfig, write_weak_labels


def main(argv: Sequence[str] | None = None) -> int:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m litseg.weak_labels",
        description="Generate tags / points / scribbles / boxes from Oxford-IIIT Pet trimaps "
                    "(root/images/*.jpg, root/annotations/trimaps/*.png) into one JSON file.",
    )
    parser.add_argument("--root", required=True, help="dataset root (Oxford-IIIT Pet layout)")
    parser.add_argument("--output", required=True, help="output JSON file (written atomically)")
    parser.add_argument("--stems-file", default=None, help="only these images: one stem per line, '#' comments")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the background-point sampling")
    parser.add_argument("--min-object-fraction", type=float, default=defaults.min_object_fraction,
                        help="smallest pet component kept as an object, as a fraction of the image area")
    parser.add_argument("--n-background-points", type=int, default=defaults.n_background_points)
    parser.add_argument("--bg-margin", type=int, default=defaults.bg_margin,
                        help="background points keep this many px from pet and border pixels")
    parser.add_argument("--scribble-erosion", type=int, default=defaults.scribble_erosion,
                        help="scribbles are skeletons of the region eroded by this many px")
    parser.add_argument("--scribble-length-fraction", type=float, default=defaults.scribble_length_fraction,
                        help="share of the longest skeleton path kept (its central part)")
    parser.add_argument("--max-background-scribbles", type=int, default=defaults.max_background_scribbles,
                        help="one scribble per background component, at most this many (largest first)")
    args = parser.parse_args(argv)
    try:
        config = GeneratorConfig(
            seed=args.seed,
            min_object_fraction=args.min_object_fraction,
            n_background_points=args.n_background_points,
            bg_margin=args.bg_margin,
            scribble_erosion=args.scribble_erosion,
            scribble_length_fraction=args.scribble_length_fraction,
            max_background_scribbles=args.max_background_scribbles,
        )
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    try:
        document = write_weak_labels(args.root, args.output, config, args.stems_file)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    images = document["images"]
    n_objects = sum(len(e["objects"]) for e in images.values())
    print(f"wrote {args.output}: {len(images)} images, {n_objects} objects, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
