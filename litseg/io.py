"""The one image / mask reader and the atomic writers shared by every method.

Every reader raises :class:`DataError` naming the file and the problem, so a bad
dataset stops with a message a researcher can act on instead of a stack trace
from deep inside OpenCV or PIL.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


class DataProblems(DataError):
    """Several data problems found together (e.g. by :func:`run_checks` before the first step).

    With one problem the message is that problem's own (``<file>: <problem>``) plus ``context``;
    with more, the first line names ``where``, the count and ``context``, and the next lines list
    the first ``limit`` problems, one per line, each starting with its file.
    """

    def __init__(self, problems: Sequence[DataError], where: str | os.PathLike[str], context: str,
                 limit: int = 20) -> None:
        if not problems:
            raise ValueError("DataProblems needs at least one problem")
        self.problems = list(problems)
        if len(self.problems) == 1:
            only = self.problems[0]
            super().__init__(only.path, f"{only.problem} ({context})" if context else only.problem)
            return
        shown = [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            shown.append(f"  ... and {len(self.problems) - limit} more")
        head = f"{len(self.problems)} data problems" + (f" ({context})" if context else "") + ":"
        super().__init__(where, "\n".join([head, *shown]))


def raise_problems(problems: Sequence[DataError], where: str | os.PathLike[str], context: str) -> None:
    """Raise every problem at once as one :class:`DataProblems`; nothing when the list is empty."""
    if problems:
        raise DataProblems(problems, where, context)


class ConfigError(ValueError):
    """A config value that cannot work: ``<config file>: <key>: <problem>``.

    Code that does not know which file set the key (a module's ``setup``) leaves ``source`` empty;
    ``litseg.cli.run_cli`` fills it in from the command line's ``--config`` files.
    """

    def __init__(self, key: str, problem: str, source: str | None = None) -> None:
        self.key, self.problem, self.source = key, problem, source
        super().__init__(f"{source}: {key}: {problem}" if source else f"{key}: {problem}")


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


def read_text(path: str | os.PathLike[str]) -> str:
    """A whole text file decoded as UTF-8 (a leading byte-order mark is dropped).

    A missing or unreadable file, or bytes that are not UTF-8, raise a :class:`DataError`
    naming the file, and for bad bytes the line, column and byte offset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read the file ({err.strerror or err})") from err
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise DataError(path, f"not UTF-8 text: byte 0x{data[offset]:02x} at line {line} column {column} "
                              f"(byte offset {offset}); save the file as UTF-8") from None


def read_stem_list(path: str | os.PathLike[str], what: str = "stem list", first_column: bool = False) -> list[str]:
    """The one list-file reader: one stem per line, in file order.

    Blank lines and ``#`` comments are skipped; ``first_column`` keeps only the first
    whitespace-separated field of a line (Oxford-IIIT Pet's ``trainval.txt`` / ``test.txt``:
    ``stem class species breed``). A missing file (``<what> not found``), bad bytes and a stem
    listed twice raise a :class:`DataError` naming the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    stems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        stem = line.split("#", 1)[0].strip()
        if not stem:
            continue
        if first_column:
            stem = stem.split()[0]
        if stem in seen:
            raise DataError(path, f"line {number}: stem '{stem}' listed twice")
        seen.add(stem)
        stems.append(stem)
    return stems


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; bad bytes or bad JSON raise a :class:`DataError` with the file and position."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (ValueError, RecursionError) as err:  # e.g. an integer too long, nesting too deep
        raise DataError(path, f"malformed JSON: {err}") from err


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

    The file is read as UTF-8 (:func:`read_text`: bad bytes are named by line). Rows with a
    different number of fields than the header, or that the csv module rejects, raise a
    :class:`DataError` naming the line.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
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
    except csv.Error as err:
        raise DataError(path, f"line {reader.line_num}: malformed CSV ({err})") from err
    return rows


# ----------------------------------------------------------------------------- checking data before use

CHECK_CACHE_FORMAT = "litseg-data-check"
CHECK_CACHE_VERSION = 1


@dataclass(frozen=True)
class FileCheck:
    """One unit of the up-front data check: the files it reads and the function that reads them.

    ``check()`` reads the files with the very reader the dataset uses at read time (so the two
    checks cannot drift apart), raises :class:`DataError` on a problem and returns a small
    JSON value (e.g. the image size) for checks across files. ``key`` identifies the check in
    the cache; make it with :func:`check_key` (a rule name with a version, and the paths).
    """

    key: str
    files: tuple[Path, ...]
    check: Callable[[], Any]


def check_key(rule: str, *paths: str | os.PathLike[str]) -> str:
    """Cache key of a check: the rule (bump its version when the rule changes) and absolute paths."""
    return rule + ":" + "|".join(os.path.abspath(p) for p in paths)


@dataclass
class CheckReport:
    """Result of :func:`run_checks`."""

    infos: dict[str, Any] = field(default_factory=dict)  # key -> value of every check that passed
    problems: list[DataError] = field(default_factory=list)  # in the order of the checks
    entries: dict[str, Any] = field(default_factory=dict)  # key -> cache entry of every check that passed
    failed: set[str] = field(default_factory=set)  # keys of the checks that failed
    read: int = 0  # checks run now (their files decoded)
    cached: int = 0  # checks skipped: their files are unchanged since they passed
    seconds: float = 0.0


def file_stamps(paths: Sequence[str | os.PathLike[str]]) -> list[list[Any]] | None:
    """``[absolute path, size, mtime_ns]`` of each file, or None when one cannot be stat'ed."""
    stamps = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        stamps.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return stamps


def default_check_workers() -> int:
    """Threads for :func:`run_checks`: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _run_one(check: FileCheck) -> tuple[Any, DataError | None]:
    try:
        info = check.check()
    except DataError as err:
        return None, err
    except Exception as err:  # noqa: BLE001  a reader crashing on odd bytes is a problem of that file too
        where = check.files[-1] if check.files else check.key
        return None, DataError(where, f"cannot be read ({type(err).__name__}: {err})")
    # Normalised through JSON so a value read now equals the same value read from the cache.
    return json.loads(json.dumps(info)), None


def run_checks(checks: Sequence[FileCheck], known: Mapping[str, Any] | None = None,
               workers: int | None = None) -> CheckReport:
    """Run every check (in a thread pool: decoding releases the GIL) and collect every problem.

    ``known`` maps keys to entries of earlier passed checks (a cache); a check whose files still
    have the recorded size and modification time is not run again. Nothing is raised: the
    caller adds its own cross-file problems and raises them all at once (:func:`raise_problems`).
    """
    start = time.perf_counter()
    known = known or {}
    report = CheckReport()
    todo: list[tuple[FileCheck, list[Any] | None]] = []
    for check in checks:
        stamps = file_stamps(check.files)
        entry = known.get(check.key)
        if stamps is not None and isinstance(entry, dict) and entry.get("files") == stamps:
            report.infos[check.key] = entry.get("info")
            report.entries[check.key] = entry
            report.cached += 1
        else:  # stamped before reading: a file changed while being read is read again next time
            todo.append((check, stamps))
    n_workers = workers or default_check_workers()
    if n_workers > 1 and len(todo) > 1:
        with concurrent.futures.ThreadPoolExecutor(n_workers, thread_name_prefix="data-check") as pool:
            results = list(pool.map(_run_one, [c for c, _ in todo]))
    else:
        results = [_run_one(c) for c, _ in todo]
    for (check, stamps), (info, err) in zip(todo, results, strict=True):
        if err is not None:
            report.problems.append(err)
            report.failed.add(check.key)
            continue
        report.infos[check.key] = info
        if stamps is not None:
            report.entries[check.key] = {"files": stamps, "info": info}
    report.read = len(todo)
    report.seconds = time.perf_counter() - start
    return report


def load_check_cache(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Entries of a check cache written by :func:`save_check_cache`; {} if absent or unusable
    (it is our own file: a damaged one is rebuilt, never an error)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (not isinstance(document, dict) or document.get("format") != CHECK_CACHE_FORMAT
            or document.get("version") != CHECK_CACHE_VERSION or not isinstance(document.get("entries"), dict)):
        return {}
    return document["entries"]


def save_check_cache(path: str | os.PathLike[str], entries: Mapping[str, Any]) -> None:
    """Write the check cache atomically."""
    write_json(path, {"format": CHECK_CACHE_FORMAT, "version": CHECK_CACHE_VERSION, "entries": dict(entries)})
