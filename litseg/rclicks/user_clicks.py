"""Real user clicks in RClicks' ``clicks.csv`` schema, and the User evaluation mode.

RClicks (Antonov et al., NeurIPS 2024) collected real clicks; its ``datasets/clicks.csv``
has one row per click (spec note 5.2):

``dataset, full_stem, image_stem, object_stem, click_type, model_type, device, x, y, w, h``

* ``dataset``: GrabCut, Berkeley, DAVIS, COCO (= COCO_MVal) or TETRIS;
* ``object_stem``: the instance id, or '' for single-object images;
* ``full_stem`` of a first click: ``<image_stem>``, or ``<image_stem>_______<object_stem>``
  (7 underscores) when the image has several objects;
* ``click_type``: first / fn / fp; ``model_type``: '' for first clicks, else the model
  that made the previous mask; ``device``: pc / mobile;
* ``x, y``: integer pixel coordinates in a ``w x h`` frame (the original image size; the
  benchmark may load a smaller image, e.g. TETRIS limited to 2048, so clicks are rescaled).

User mode: every real *first* click on an instance is its own 1-click episode (fresh
predictor state, one positive click); we report IoU@1 per click and NSR@1 = per instance
``std / (mean + 1e-9)`` of IoU@1 (population std), averaged over instances, x100
(:func:`litseg.metrics.robustness.nsr`, re-exported here).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from litseg.io import DataError, read_csv_rows
from litseg.metrics.robustness import nsr  # noqa: F401  (re-exported)

COLUMNS = (
    "dataset", "full_stem", "image_stem", "object_stem", "click_type", "model_type", "device", "x", "y", "w", "h",
)
CLICK_TYPES = ("first", "fn", "fp")
DEVICES = ("pc", "mobile")
OBJECT_SEPARATOR = "_______"  # 7 underscores between image stem and instance id


@dataclass(frozen=True)
class UserClick:
    """One row of clicks.csv, validated. ``object_id`` is None for single-object images."""

    dataset: str
    full_stem: str
    image_stem: str
    object_id: int | None
    click_type: str
    model_type: str
    device: str
    x: int
    y: int
    w: int
    h: int
    path: Path
    line: int

    @property
    def is_positive(self) -> bool:
        """First and fn clicks add object; fp clicks remove."""
        return self.click_type != "fp"

    def in_image(self, height: int, width: int) -> tuple[int, int]:
        """``(y, x)`` rescaled from the row's ``w x h`` frame to a ``width x height`` image.

        Pixel centres are mapped (``(x + 0.5) * width / w``), so an unscaled image gives
        the same coordinates. A frame whose aspect ratio differs from the image's by more
        than one pixel of rounding belongs to another image: :class:`DataError`.
        """
        if abs(self.w * height - self.h * width) > max(self.w, self.h, width, height):
            raise DataError(
                self.path,
                f"line {self.line}: click frame {self.w}x{self.h} does not match the image size {width}x{height}",
            )
        x = int((self.x + 0.5) * width / self.w)
        y = int((self.y + 0.5) * height / self.h)
        if not (0 <= x < width and 0 <= y < height):
            raise DataError(self.path, f"line {self.line}: click (x={x}, y={y}) outside the {width}x{height} image")
        return y, x


def instance_key(image_stem: str, instance_id: int, n_instances: int) -> str:
    """The full_stem of an instance's first clicks (RClicks' lookup key)."""
    return image_stem if n_instances == 1 else f"{image_stem}{OBJECT_SEPARATOR}{instance_id}"


def _int_field(row: dict[str, str], column: str, path: Path) -> int:
    value = row[column].strip()
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"line {row['_line']}: {column}={row[column]!r} is not an integer") from None


def read_user_clicks(path: str | os.PathLike[str]) -> list[UserClick]:
    """Read and validate every row of a clicks.csv; a malformed row raises naming its line."""
    path = Path(path)
    clicks = []
    for row in read_csv_rows(path, COLUMNS):
        line = int(row["_line"])

        def bad(problem: str) -> DataError:
            return DataError(path, f"line {line}: {problem}")

        x, y, w, h = (_int_field(row, c, path) for c in ("x", "y", "w", "h"))
        if w <= 0 or h <= 0:
            raise bad(f"frame size w={w}, h={h} must be positive")
        if not (0 <= x < w and 0 <= y < h):
            raise bad(f"click (x={x}, y={y}) outside its {w}x{h} frame")
        if row["click_type"] not in CLICK_TYPES:
            raise bad(f"unknown click_type {row['click_type']!r} (expected one of {list(CLICK_TYPES)})")
        if row["device"] not in DEVICES:
            raise bad(f"unknown device {row['device']!r} (expected one of {list(DEVICES)})")
        if not row["dataset"] or not row["image_stem"] or not row["full_stem"]:
            raise bad("dataset, image_stem and full_stem must not be empty")
        if row["click_type"] != "first" and not row["model_type"]:
            raise bad(f"a {row['click_type']} click needs the model_type of its previous mask")
        object_id = _int_field(row, "object_stem", path) if row["object_stem"] != "" else None
        if row["click_type"] == "first":
            expected = row["image_stem"] if object_id is None else f"{row['image_stem']}{OBJECT_SEPARATOR}{object_id}"
            if row["full_stem"] != expected:
                raise bad(f"full_stem {row['full_stem']!r} of a first click should be {expected!r}")
        clicks.append(UserClick(
            dataset=row["dataset"], full_stem=row["full_stem"], image_stem=row["image_stem"], object_id=object_id,
            click_type=row["click_type"], model_type=row["model_type"], device=row["device"],
            x=x, y=y, w=w, h=h, path=path, line=line,
        ))
    return clicks


def first_clicks_by_instance(clicks: Sequence[UserClick]) -> dict[tuple[str, str], list[UserClick]]:
    """First clicks grouped by ``(dataset, full_stem)``, in file order."""
    out: dict[tuple[str, str], list[UserClick]] = defaultdict(list)
    for click in clicks:
        if click.click_type == "first":
            out[(click.dataset, click.full_stem)].append(click)
    return dict(out)


@dataclass
class ClickMatch:
    """First clicks of clicks.csv matched against the evaluated images (:func:`match_first_clicks`)."""

    by_instance: dict[tuple[str, str], list[UserClick]]  # (dataset in clicks.csv, full_stem) -> clicks
    unmatched: list[tuple[UserClick, str]]  # rows naming an image or object the datasets lack, with why
    not_evaluated: int  # rows of images or datasets that exist but are not evaluated in this run
    frame_problems: list[DataError]  # rows whose w x h frame does not fit their image


def match_first_clicks(
    clicks: Sequence[UserClick],
    images: Mapping[tuple[str, str], tuple[int, int, Sequence[int]]],
    folders: Mapping[str, str],
    left_out: Collection[tuple[str, str]] = (),
    known_datasets: Collection[str] = (),
) -> ClickMatch:
    """Match every first click to an evaluated image and instance, and check its frame.

    ``images`` maps ``(dataset name in clicks.csv, image_stem)`` to ``(height, width,
    instance_ids)`` of every evaluated image (as loaded); ``folders`` maps the evaluated
    datasets' clicks.csv names to their folders (for messages); ``left_out`` holds the
    ``(dataset, image_stem)`` that exist but are not evaluated (``max_images``);
    ``known_datasets`` the clicks.csv names of datasets that exist but are not evaluated.

    A row whose dataset is evaluated but whose image or object is not there, or whose dataset
    is none of the known ones, is *unmatched*; a row whose click frame does not fit its image
    (:meth:`UserClick.in_image`) is a frame problem. Nothing is raised: the caller decides.
    """
    by_instance: dict[tuple[str, str], list[UserClick]] = defaultdict(list)
    unmatched: list[tuple[UserClick, str]] = []
    frame_problems: list[DataError] = []
    not_evaluated = 0
    for click in clicks:
        if click.click_type != "first":
            continue  # user mode replays first clicks only
        if click.dataset not in folders:
            if click.dataset in known_datasets:
                not_evaluated += 1
            else:
                unmatched.append((click, f"dataset '{click.dataset}' is none of "
                                         f"{sorted({*folders, *known_datasets})}"))
            continue
        image = images.get((click.dataset, click.image_stem))
        if image is None:
            if (click.dataset, click.image_stem) in left_out:
                not_evaluated += 1
            else:
                unmatched.append((click, f"image '{click.image_stem}' is not in {folders[click.dataset]}"))
            continue
        height, width, ids = image
        if click.object_id is None and len(ids) != 1:
            unmatched.append((click, f"no object_stem, but image '{click.image_stem}' has {len(ids)} objects"))
            continue
        if click.object_id is not None and click.object_id not in ids:
            unmatched.append((click, f"object {click.object_id} is not in the mask of image '{click.image_stem}' "
                                     f"(ids {list(ids)})"))
            continue
        instance = click.object_id if click.object_id is not None else ids[0]
        if instance_key(click.image_stem, instance, len(ids)) != click.full_stem:
            unmatched.append((click, f"image '{click.image_stem}' has a single object, so its full_stem is "
                                     f"'{click.image_stem}', not {click.full_stem!r}"))
            continue
        try:
            click.in_image(height, width)
        except DataError as err:
            frame_problems.append(err)
            continue
        by_instance[(click.dataset, click.full_stem)].append(click)
    return ClickMatch(dict(by_instance), unmatched, not_evaluated, frame_problems)


def describe_unmatched(match: ClickMatch, shown: int = 10) -> str:
    """``N first-click row(s) ... (lines a, b, ...; line a: why; ...)`` for an error or a warning."""
    rows = match.unmatched
    lines = ", ".join(str(c.line) for c, _ in rows[:shown]) + (f", ... ({len(rows) - shown} more)"
                                                             if len(rows) > shown else "")
    reasons = "; ".join(f"line {c.line}: {why}" for c, why in rows[:3])
    return (f"{len(rows)} first-click row(s) refer to an image or object the evaluated datasets do not have "
            f"(lines {lines}). {reasons}")
