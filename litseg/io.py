"""The one image / mask reader and the atomic writers shared by every method.

Every reader raises :class:`DataError` naming the file and the problem, so a bad
dataset stops with a message a researcher can act on instead of a stack trace
from deep inside OpenCV or PIL.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

_UMASK = os.umask(0)
os.umask(_UMASK)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data. The message always starts with the offending path."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = Image.open(path)
        img.load()  # force decoding now: a truncated file fails here, not later in a worker
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(path, f"cannot decode image ({err})") from err
    return img


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as an ``H x W x 3`` uint8 RGB array."""
    img = _open(Path(path))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_mask(
    path: str | os.PathLike[str], mode: Literal["index", "rgb", "first_channel"] = "index"
) -> np.ndarray:
    """Read a label / mask file.

    Modes:
        ``index``: an ``H x W`` uint8 array; palette PNGs give their indices, greyscale
            gives its values, RGB files are rejected (ambiguous).
        ``first_channel``: ``H x W`` uint8 of the first (red) channel; RGB-encoded masks
            whose channels are equal (GrabCut / Berkeley) read as their grey value.
        ``rgb``: ``H x W x 3`` uint8 (for instance ids encoded in the colour channels).
    """
    path = Path(path)
    img = _open(path)
    if mode == "rgb":
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if img.mode in ("P", "L"):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("1",):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("I", "I;16", "I;16B", "F"):
        arr = np.asarray(img)
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise DataError(path, f"mask values outside 0..255 (mode {img.mode})")
        arr = arr.astype(np.uint8)
    elif mode == "first_channel":
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)[..., 0]
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DataError(path, f"expected a single-channel label map, got colour mode {img.mode}")
        arr = arr[..., 0]
    if mode == "first_channel" and arr.ndim == 3:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def check_same_size(image: np.ndarray, mask: np.ndarray, mask_path: str | os.PathLike[str]) -> None:
    """Raise a :class:`DataError` on the mask path when image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            mask_path,
            f"size {mask.shape[1]}x{mask.shape[0]} does not match its image "
            f"({image.shape[1]}x{image.shape[0]})",
        )


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files of a folder sorted by name; a missing folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def index_by_stem(files: Sequence[Path], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Map stem -> file, rejecting two files with the same stem (e.g. ``a.jpg`` and ``a.png``)."""
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(folder, f"two files share the stem '{f.stem}': {out[f.stem].name}, {f.name}")
        out[f.stem] = f
    return out


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A crash half-way leaves the previous good file in place, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 label map (H x W) or RGB image (H x W x 3) as PNG, atomically."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"{path}: values outside 0..255 cannot be written as 8-bit PNG")
        arr = arr.astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (sorted keys, so the same content gives the same bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def write_table(rows: Sequence[dict[str, Any]], csv_path: str | os.PathLike[str],
                md_path: str | os.PathLike[str] | None = None, float_format: str = "{:.4f}",
                columns: Sequence[str] | None = None) -> None:
    """Write a results table as CSV (full precision) and optionally Markdown (rounded).

    Columns are the union of the rows' keys in first-seen order, or ``columns`` for a fixed
    schema (written even with no rows; a row key outside it is an error).
    """
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    columns = list(columns)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if md_path is not None:
        with atomic_path(md_path) as tmp:
            tmp.write_text(markdown_table(rows, float_format, columns))


def markdown_table(rows: Sequence[dict[str, Any]], float_format: str = "{:.4f}",
                   columns: Sequence[str] | None = None) -> str:
    """Rows as a Markdown table (floats rounded), columns in first-seen order unless given."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return float_format.format(v)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def read_csv_rows(path: str | os.PathLike[str], required: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV into dicts, checking the header has ``required`` columns.

    Rows with a different number of fields than the header raise a :class:`DataError`
    naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(path, "empty CSV (no header)") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; header is {header}")
        rows = []
        for line in reader:
            if not line:
                continue
            if len(line) != len(header):
                raise DataError(path, f"line {reader.line_num}: {len(line)} fields, header has {len(header)}")
            rows.append(dict(zip(header, line, strict=True)) | {"_line": str(reader.line_num)})
    return rows
