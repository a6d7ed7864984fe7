"""ConverSeg data: the three dataset formats, the one mask reader and the training geometry.

Spec: ``shared/specs/converseg.md`` §3.2 (training pipeline), §4.1-4.2 (evaluation data), §5
(formats) and the "faithful re-implementation" items 1, 10, 14, 15.

Formats (all give a list of :class:`Sample`):

* :func:`read_train_jsonl`: training ``dataset.jsonl``, one ``{"image", "mask_merged", "prompt"}``
  object per line, paths relative to the JSONL's folder (absolute paths kept). Blank lines are
  skipped; every malformed line is reported (file and line number) in one :class:`DataError`.
  Upstream silently skips lines whose files are missing; here missing files are errors, found
  before the first step by the DataModule's check.
* :func:`read_items_json`: evaluation ``{"dataset", "count", "items": [{"id", "image", "mask",
  "prompt", "concept"?}]}``, paths relative to the JSON's folder. Upstream treats ``count`` as
  informational; here a ``count`` that disagrees with ``len(items)`` is an error (a truncated or
  hand-edited file).
* :func:`read_hf_dataset`: a local copy of the Hugging Face benchmark ``aadarsh99/ConverSeg``
  (columns ``id, image, mask, prompt, concept``; splits ``sam_seeded`` / ``human_annotated``).
  A snapshot of the dataset repository (``data/<split>.jsonl`` whose image / mask values are
  paths) is read without any extra package. ``save_to_disk`` folders and parquet files need the
  ``datasets`` package (or ``pyarrow``); with neither installed they raise a DataError naming the
  folder and the missing package.

Empty prompts (missing, null, or only whitespace) become ``"segment"`` as upstream, and the
sample says so (``prompt_was_empty``); :func:`count_empty_prompts` counts them.

Masks (:func:`read_binary_mask`, the one mask reader): foreground = alpha > 0 for RGBA / LA
images (the HF rule of eval.py, applied to every format), else the PIL ``"L"`` conversion > 0
(training's ``convert("L")``; for the usual 0/255 single-channel PNGs identical to eval.py's cv2
grayscale > 0).

Geometry (:func:`letterbox_1024`, :func:`make_target`), spec §3.2 and item 10: the image is
letterboxed to 1024 x 1024 with the suite's one letterbox (:mod:`litseg.letterbox`), centred,
long side -> 1024, INTER_AREA when shrinking / INTER_LINEAR when enlarging, padded with black
(0) pixels, and THEN ImageNet-normalised as a whole, as SAM2's transform does on upstream's
padded uint8 array: padding is therefore ``-mean/std`` in the tensor, not 0. The normalisation
(SAM2's ``ToTensor`` + ImageNet ``Normalize``) is done here, in the data layer, so the model
receives ``image_1024`` ready for ``SAM2Base.forward_image``. The target follows the order the
spec states: mask > 0, letterboxed like the image with nearest interpolation (zero padding),
eroded once with a 5 x 5 ones kernel at 1024, then nearest-downsampled to 256 x 256 (which, at
the exact factor 4, keeps pixels ``[4i, 4j]``). The evaluation GT is the original-size mask, not
eroded.

Known deviation: upstream sizes the short side as ``round(side * 1024 / long)``; the suite's
letterbox uses integer division (``side * 1024 // long``), so the inner image can be 1 px
shorter when the fraction is >= .5 (e.g. 300 x 200 -> 1024 x 682, upstream 683). 640 x 480,
2000 x 1000 and other common aspect ratios are identical.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from litseg.imaging import normalize
from litseg.io import DataError, _open, raise_problems, read_image, read_json, read_text
from litseg.letterbox import Letterbox

SIZE = 1024  # SAM2 input side
TARGET_SIZE = 256  # SAM2 low-res mask side (loss resolution)
EROSION_KERNEL = 5  # 5 x 5 ones, one iteration, at 1024
EMPTY_PROMPT = "segment"
HF_SPLITS = ("sam_seeded", "human_annotated")

PathOrArray = Path | np.ndarray


@dataclass(frozen=True)
class Sample:
    """One (image, mask, prompt) triple of any format.

    ``image`` / ``mask`` are file paths, or in-memory arrays (uint8 H x W x 3 / bool H x W) for
    HF rows stored as bytes. ``where`` locates the sample for messages ("line 3 of <file>").
    ``prompt`` is already "segment" when the file's prompt was empty (``prompt_was_empty``).
    """

    id: str
    image: PathOrArray
    mask: PathOrArray
    prompt: str
    concept: str = ""
    split: str = "train"
    where: str = ""
    prompt_was_empty: bool = False

    @property
    def image_path(self) -> Path | None:
        """The original image file (what Qwen reads, spec 1.2), None for an in-memory image."""
        return self.image if isinstance(self.image, Path) else None


def count_empty_prompts(samples: Sequence[Sample]) -> int:
    """How many samples had an empty prompt replaced by "segment"."""
    return sum(s.prompt_was_empty for s in samples)


def _prompt(value: Any) -> tuple[str | None, bool]:
    """(prompt, was_empty); prompt None when the value is not a string (a problem to report)."""
    if value is None:
        return EMPTY_PROMPT, True
    if not isinstance(value, str):
        return None, False
    if not value.strip():
        return EMPTY_PROMPT, True
    return value, False


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _json_problem(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"malformed JSON at column {err.colno}: {err.msg}"
    return f"malformed JSON ({err})"


def _path_field(record: dict, key: str) -> str | None:
    """Problem text when ``record[key]`` is not a non-empty string, else None."""
    if key not in record:
        return f"missing key '{key}'"
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        return f"'{key}' must be a non-empty path string, got {json.dumps(value)[:60]}"
    return None


# ----------------------------------------------------------------------------- training JSONL


def jsonl_objects(path: Path, problems: list[DataError]) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their line numbers; blank lines skipped, a malformed line
    added to ``problems`` (file and line named) and skipped."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as err:
            problems.append(DataError(path, f"line {number}: {_json_problem(err)}"))
            continue
        if not isinstance(record, dict):
            problems.append(DataError(path, f"line {number}: expected a JSON object, got {type(record).__name__}"))
            continue
        rows.append((number, record))
    return rows


def read_train_jsonl(path: str | os.PathLike[str], split: str = "train") -> list[Sample]:
    """Samples of a training ``dataset.jsonl`` (spec §5.1), in file order.

    Each non-blank line is ``{"image": str, "mask_merged": str, "prompt": str (optional)}``;
    paths are relative to the JSONL's folder. Every bad line (not JSON, not an object, a missing
    or non-string path, a non-string prompt) is reported together, each as ``line N: problem``.
    Sample ids are ``<image stem>@<line>``.
    """
    path = Path(path)
    base = path.parent
    problems: list[DataError] = []
    samples: list[Sample] = []
    for number, record in jsonl_objects(path, problems):
        bad = [p for p in (_path_field(record, "image"), _path_field(record, "mask_merged")) if p]
        prompt, empty = _prompt(record.get("prompt"))
        if prompt is None:
            bad.append(f"'prompt' must be a string, got {json.dumps(record['prompt'])[:60]}")
        if bad:
            problems.append(DataError(path, f"line {number}: {'; '.join(bad)}"))
            continue
        image = _resolve(base, record["image"])
        samples.append(Sample(id=f"{image.stem}@{number}", image=image, mask=_resolve(base, record["mask_merged"]),
                              prompt=prompt, concept="", split=split, where=f"line {number} of {path}",
                              prompt_was_empty=empty))
    raise_problems(problems, path, "ConverSeg training JSONL; one object per line: "
                                   '{"image", "mask_merged", "prompt"}')
    if not samples:
        raise DataError(path, "no samples (the JSONL has no non-blank line)")
    return samples


# ----------------------------------------------------------------------------- eval items.json


def read_items_json(path: str | os.PathLike[str], split: str | None = None) -> list[Sample]:
    """Samples of an evaluation ``items.json`` (spec §5.2), in item order.

    ``split`` defaults to the file's ``"dataset"`` name. Every bad item (missing / non-string
    path, non-string prompt or concept, duplicate id) is reported together as ``items[i]``; a
    ``count`` different from the number of items is an error naming the file.
    """
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise DataError(path, 'expected {"dataset": str, "count": int, "items": [...]}')
    items = doc["items"]
    problems: list[DataError] = []
    if "count" in doc and (isinstance(doc["count"], bool) or doc["count"] != len(items)):
        problems.append(DataError(path, f"'count' is {json.dumps(doc['count'])} but 'items' holds {len(items)} "
                                        "entries (a truncated or edited file?)"))
    dataset = doc.get("dataset")
    split = split if split is not None else (dataset if isinstance(dataset, str) and dataset else path.stem)
    base = path.parent
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(DataError(path, f"items[{i}]: expected an object, got {type(item).__name__}"))
            continue
        bad = [p for p in (_path_field(item, "image"), _path_field(item, "mask")) if p]
        raw_id = item.get("id", i)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            bad.append(f"'id' must be a string or integer, got {json.dumps(raw_id)[:60]}")
        sid = str(raw_id)
        if sid in seen:
            bad.append(f"id '{sid}' already used by items[{seen[sid]}]")
        prompt, empty = _prompt(item.get("prompt"))
        if prompt is None:
            bad.append(f"'prompt' must be a string, got {json.dumps(item['prompt'])[:60]}")
        concept = item.get("concept") or ""
        if not isinstance(concept, str):
            bad.append(f"'concept' must be a string, got {json.dumps(concept)[:60]}")
        if bad:
            problems.append(DataError(path, f"items[{i}] (id {sid}): {'; '.join(bad)}"))
            continue
        seen[sid] = i
        samples.append(Sample(id=sid, image=_resolve(base, item["image"]), mask=_resolve(base, item["mask"]),
                              prompt=prompt, concept=concept, split=split, where=f"items[{i}] (id {sid}) of {path}",
                              prompt_was_empty=empty))
    raise_problems(problems, path, "ConverSeg eval items.json")
    if not samples:
        raise DataError(path, "no items")
    return samples


# ----------------------------------------------------------------------------- Hugging Face dataset


def _hf_value(value: Any, folder: Path, jsonl_dir: Path, what: str) -> PathOrArray | bytes:
    """An HF ``Image`` value: a path string, a ``{"path", "bytes"}`` dict, raw bytes or a PIL image."""
    if isinstance(value, Image.Image):
        return value  # type: ignore[return-value]  (decoded by read_* below)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            data = value["bytes"]
            return base64.b64decode(data) if isinstance(data, str) else bytes(data)
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{what}' must be a path, a {{'path', 'bytes'}} dict or image bytes")
    p = Path(value)
    if p.is_absolute():
        return p
    # A dataset-repo snapshot: paths resolve against the repository root (HF convention); a file
    # beside the JSONL is accepted too. Reported against the root when neither exists.
    for candidate in (folder / p, jsonl_dir / p):
        if candidate.exists():
            return candidate
    return folder / p


def _hf_samples(rows: Sequence[tuple[int, dict]], split: str, folder: Path, source: Path,
                jsonl_dir: Path, locate: str) -> tuple[list[Sample], list[DataError]]:
    samples, problems = [], []
    seen: set[str] = set()
    for number, row in rows:
        where = f"{locate} {number} of {source}"
        bad = []
        resolved: dict[str, Any] = {}
        for key in ("image", "mask"):
            try:
                value = _hf_value(row.get(key), folder, jsonl_dir, key)
            except ValueError as err:
                bad.append(str(err))
                continue
            if isinstance(value, bytes | Image.Image):
                try:
                    value = _decode_image(value) if key == "image" else read_binary_mask(value)
                except DataError as err:
                    bad.append(f"'{key}': {err.problem}")
                    continue
            resolved[key] = value
        sid = str(row.get("id", number))
        if sid in seen:
            bad.append(f"id '{sid}' appears twice")
        seen.add(sid)
        prompt, empty = _prompt(row.get("prompt"))
        if prompt is None:
            bad.append("'prompt' must be a string")
        concept = row.get("concept") or ""
        if not isinstance(concept, str):
            bad.append("'concept' must be a string")
        if bad:
            problems.append(DataError(source, f"{locate} {number} (id {sid}): {'; '.join(bad)}"))
            continue
        samples.append(Sample(id=sid, image=resolved["image"], mask=resolved["mask"], prompt=prompt,
                              concept=concept, split=split, where=where, prompt_was_empty=empty))
    return samples, problems


def _hf_jsonl_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for sub in (folder / "data", folder):
        if sub.is_dir():
            for f in sorted(sub.glob("*.jsonl")):
                found.setdefault(f.stem, f)
    return found


def _hf_arrow_rows(folder: Path, split: str | None) -> dict[str, list[tuple[int, dict]]]:
    """Rows of a ``save_to_disk`` folder or parquet files, via ``datasets`` or else ``pyarrow``."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        datasets = None
    if datasets is not None:
        if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            files = sorted(str(f) for f in folder.rglob("*.parquet"))
            by_split: dict[str, list[str]] = {}
            for f in files:
                by_split.setdefault(Path(f).name.split("-")[0], []).append(f)
            loaded = datasets.load_dataset("parquet", data_files=by_split)
        if isinstance(loaded, datasets.Dataset):
            loaded = {split or folder.name: loaded}
        out = {}
        for name, ds in loaded.items():
            for col in ("image", "mask"):
                if col in ds.column_names and isinstance(ds.features[col], datasets.Image):
                    ds = ds.cast_column(col, datasets.Image(decode=False))
            out[name] = list(enumerate(ds, start=0))
        return out
    try:
        import pyarrow.ipc as ipc  # type: ignore[import-not-found]
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(folder, "a save_to_disk / parquet Hugging Face dataset needs the 'datasets' or the "
                                "'pyarrow' package, and neither is installed; install one, or use a snapshot "
                                "of the dataset repository (data/<split>.jsonl with image / mask paths)") from None
    out: dict[str, list[tuple[int, dict]]] = {}
    for f in sorted(folder.rglob("*.parquet")):
        out.setdefault(f.name.split("-")[0], []).extend(enumerate(pq.read_table(f).to_pylist()))
    for f in sorted(folder.rglob("*.arrow")):  # save_to_disk: <split>/data-0000x-of-0000y.arrow
        with open(f, "rb") as fh:
            table = ipc.open_stream(fh).read_all()
        out.setdefault(f.parent.name, []).extend(enumerate(table.to_pylist()))
    return out


def read_hf_dataset(folder: str | os.PathLike[str], split: str | None = None) -> list[Sample]:
    """Samples of a local Hugging Face ConverSeg dataset folder (spec §4.2), split by split.

    ``split`` = one split name (``sam_seeded`` / ``human_annotated``), or None for every split
    found (the known ones first, in that order). Layouts, tried in this order:

    1. a dataset-repository snapshot: ``data/<split>.jsonl`` (or ``<split>.jsonl``) rows
       ``{"id", "image", "mask", "prompt", "concept"}``; image / mask are paths (relative to the
       folder, else to the JSONL's folder), ``{"path", "bytes"}`` dicts (bytes base64 in JSON)
       or bytes. Bad rows are reported together by line number.
    2. ``save_to_disk`` (``dataset_dict.json`` / ``*.arrow``) or ``*.parquet``: through the
       ``datasets`` package if installed, else ``pyarrow``; a DataError naming the folder when
       neither is installed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "Hugging Face dataset folder not found")
    jsonls = _hf_jsonl_files(folder)
    problems: list[DataError] = []
    by_split: dict[str, list[Sample]] = {}
    if jsonls:
        for name, f in jsonls.items():
            if split is not None and name != split:
                continue
            rows = jsonl_objects(f, problems)
            samples, bad = _hf_samples(rows, name, folder, f, f.parent, "line")
            by_split[name], problems = samples, problems + bad
        available = sorted(jsonls)
    else:
        tables = _hf_arrow_rows(folder, split)
        for name, rows in tables.items():
            if split is not None and name != split:
                continue
            samples, bad = _hf_samples(rows, name, folder, folder / name, folder, "row")
            by_split[name], problems = samples, problems + bad
        available = sorted(tables)
    raise_problems(problems, folder, "ConverSeg Hugging Face dataset; columns id, image, mask, prompt, concept")
    if split is not None and split not in by_split:
        raise DataError(folder, f"no split '{split}' (found: {available or 'none'})")
    if not by_split:
        raise DataError(folder, "no split found (expected data/<split>.jsonl, a save_to_disk folder or parquet)")
    order = [s for s in HF_SPLITS if s in by_split] + sorted(s for s in by_split if s not in HF_SPLITS)
    return [sample for name in order for sample in by_split[name]]


def read_samples(path: str | os.PathLike[str], split: str | None = None) -> list[Sample]:
    """Any of the three formats, detected by kind: a folder -> HF dataset; ``*.jsonl`` -> training
    JSONL; any other file -> items.json."""
    path = Path(path)
    if path.is_dir():
        return read_hf_dataset(path, split)
    if path.suffix.lower() == ".jsonl":
        return read_train_jsonl(path, split or "train")
    return read_items_json(path, split)


# ----------------------------------------------------------------------------- pixels


def _decode_image(data: bytes | Image.Image) -> np.ndarray:
    img = data if isinstance(data, Image.Image) else _decode_bytes(data)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _decode_bytes(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError("<bytes>", f"cannot decode image bytes ({err})") from err
    return img


def _foreground(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3] if img.mode in ("P", "PA") else np.asarray(img)[..., -1]
        return alpha > 0
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(img) > 0
    return np.asarray(img.convert("L")) > 0


def read_binary_mask(source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """The one ConverSeg mask reader: ``H x W`` bool foreground.

    RGBA / LA (and palette images with transparency): alpha > 0. Otherwise the ``"L"``
    conversion > 0 (16-bit / float masks: value > 0). Arrays pass through as ``> 0``.
    Files are opened by the suite reader (missing / undecodable -> DataError naming the file).
    """
    if isinstance(source, np.ndarray):
        arr = source[..., -1] if source.ndim == 3 and source.shape[2] in (2, 4) else source
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        return np.ascontiguousarray(arr > 0)
    if isinstance(source, Image.Image):
        return _foreground(source)
    if isinstance(source, bytes | bytearray):
        return _foreground(_decode_bytes(bytes(source)))
    return _foreground(_open(Path(source)))


def load_image(image: PathOrArray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of a sample's image (file or array)."""
    return read_image(image) if isinstance(image, str | os.PathLike) else np.asarray(image, dtype=np.uint8)


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image, bool mask) of a sample; a mask of another size than its image is a
    DataError on the mask naming both sizes and the sample."""
    image = load_image(sample.image)
    mask = read_binary_mask(sample.mask)
    if image.shape[:2] != mask.shape[:2]:
        where_mask = sample.mask if isinstance(sample.mask, Path) else sample.where
        raise DataError(where_mask, f"mask size {mask.shape[1]}x{mask.shape[0]} does not match its image "
                                    f"{sample.image if isinstance(sample.image, Path) else ''} "
                                    f"({image.shape[1]}x{image.shape[0]}) ({sample.where})")
    return image, mask


# ----------------------------------------------------------------------------- geometry


def letterbox_1024(image: np.ndarray, size: int = SIZE) -> tuple[torch.Tensor, Letterbox]:
    """RGB uint8 H x W x 3 -> (3 x size x size float32 ImageNet-normalised tensor, Letterbox).

    Centred, INTER_AREA when shrinking / INTER_LINEAR otherwise, black padding, then the whole
    square is normalised (so padded pixels hold ``-mean/std``), as upstream + SAM2's transform.
    """
    image = np.asarray(image, dtype=np.uint8)
    box = Letterbox.fit(image.shape[0], image.shape[1], size, anchor="centre", pad_value=0)
    square = box.array(image, interpolation="area_down_linear_up")
    return normalize(square), box


def letterbox_mask(mask: np.ndarray, box: Letterbox) -> np.ndarray:
    """Bool H x W -> size x size bool, nearest, zero padding (the target's first step)."""
    return box.array(np.asarray(mask, dtype=np.uint8), nearest=True) > 0


def erode(mask: np.ndarray, kernel: int = EROSION_KERNEL) -> np.ndarray:
    """One erosion with a ``kernel x kernel`` ones kernel (cv2 default border: image edges do not erode)."""
    out = cv2.erode(np.asarray(mask, dtype=np.uint8), np.ones((kernel, kernel), np.uint8), iterations=1)
    return out > 0


def make_target(mask: np.ndarray, box: Letterbox, target_size: int = TARGET_SIZE) -> np.ndarray:
    """Training target ``target_size x target_size`` bool: mask > 0 -> letterbox (nearest) -> erode
    5 x 5 once at ``box.size`` -> nearest resize to ``target_size`` (spec §3.2, item 10)."""
    eroded = erode(letterbox_mask(mask, box))
    small = cv2.resize(eroded.astype(np.uint8), (target_size, target_size), interpolation=cv2.INTER_NEAREST)
    return small > 0


def stable_fraction(key: str, salt: str = "") -> float:
    """A reproducible number in [0, 1) per (salt, key), the same on every machine."""
    digest = hashlib.blake2b(f"{salt}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


__all__ = [
    "EMPTY_PROMPT", "HF_SPLITS", "SIZE", "TARGET_SIZE", "Sample", "count_empty_prompts", "erode", "letterbox_1024",
    "letterbox_mask", "load_image", "make_target", "read_binary_mask", "read_hf_dataset", "read_items_json",
    "read_pair", "read_samples", "read_train_jsonl", "stable_fraction",
]
