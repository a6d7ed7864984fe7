"""Interactive-segmentation benchmark as a test-only LightningModule (RITM protocol, RClicks).

``trainer.test(InteractiveBenchmark(...), datamodule=InteractiveDataModule(...))`` runs,
for every instance of every image, a ``max_clicks``-click episode of a simulated user
(:mod:`litseg.interactive.clicker`) against a predictor (:func:`litseg.interactive.predictors.build_predictor`)
and reports NoC@80/85/90, NoF@85/90, mIoU@k and IoU-AUC per dataset
(:class:`litseg.metrics.noc.NoCMetric`). With ``strategy: user`` every real first click of
``user_clicks`` (RClicks' clicks.csv) is a 1-click episode instead; the summary then
reports mIoU@1 and NSR@1.

``write_evaluation(DIR)`` writes ``per_click.csv``, ``summary.csv`` / ``summary.md`` and
``miou_vs_clicks.png`` (and logs the plot and table to W&B when the logger is W&B).

Resuming: after ``model.resume_from(FOLDER)`` (``evaluate.py`` passes ``<output_dir>/partial``)
each image's per-click rows are written, once all its instances are done, to
``FOLDER/<dataset>/<image>.csv`` (atomically; floats at full ``repr`` precision, timings
included). A restarted run with the same folder reads those rows instead of running the
predictor on the image (per-image click RNG: results do not depend on which images ran
before), so a killed evaluation ends with the same ``per_click.csv`` and summary as an
uninterrupted one. ``FOLDER/settings.json`` records what determines the rows (predictor and
its arguments, strategy and its arguments, ``max_clicks``, ``seed``, the content hash of
``user_clicks``); a run with other settings stops with an error naming the folder and each
differing setting. There is no "overwrite" switch: delete the folder (or choose another
output folder) to start afresh. The IoU / NoF thresholds are not part of it: the summary is
recomputed from the rows, so they may change between runs. The folder is kept after a
finished run (evaluating again with it only re-reads the rows).

Under DDP every rank evaluates a disjoint share of the images (no padding), the curves are
gathered by the metric and the per-click rows with ``all_gather_object``; the results
equal a single-process run. Use ``strategy: ddp`` (as ``configs/trainer/ddp_cpu.yaml``):
with ``ddp_spawn`` the results stay in the spawned workers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lit_modules.base import LitSegModule
from litseg.distributed import gather_objects, gather_rows
from litseg.interactive.clicker import ClickStrategy, ReplayClicks, build_strategy
from litseg.interactive.episode import ClickRecord, run_episode
from litseg.interactive.predictors import build_predictor
from litseg.interactive.predictors.base import predictor_factory
from litseg.interactive.types import InteractivePredictor
from litseg.io import ConfigError, DataError, raise_problems, read_csv_rows, read_json, write_json, write_table
from litseg.metrics.noc import NoCMetric, instance_id, threshold_label
from litseg.metrics.robustness import nsr
from litseg.plots import line_plot
from litseg.rclicks.user_clicks import (
    UserClick,
    describe_unmatched,
    instance_key,
    match_first_clicks,
    read_user_clicks,
)
from litseg.readers.ritm import DATASETS
from litseg.seeding import item_rng

SUMMARY_MIOU_AT = (1, 5, 10, 20)
PARTIAL_FORMAT = "litseg-interactive-partial"
PARTIAL_VERSION = 1
# Columns of a per-click row (per_click.csv, the partial files), by value type.
_INT_COLUMNS = frozenset({"instance", "episode", "k", "source_line"})
_OPTIONAL_INT_COLUMNS = frozenset({"click_x", "click_y"})  # "" when the user had stopped
_FLOAT_COLUMNS = frozenset({"iou", "seconds"})


class InteractiveBenchmark(LitSegModule):
    """Test-only benchmark of a click-based interactive segmenter.

    Args:
        predictor: predictor name for ``litseg.interactive.predictors.build_predictor`` (e.g.
            ``grabcut``, ``sam``, ``sam2``, or ``package.module:Factory``).
        predictor_args: its keyword arguments (checkpoint, model type, ...). ``device: auto``
            is replaced by this process's device (each DDP rank gets its own GPU).
        strategy: the simulated user: ``baseline`` (RITM); ``clickability`` (RClicks: locations
            sampled from a clickability map, optionally one clicking group, see
            ``litseg.rclicks.band_sampler.ClickabilityStrategy``); ``user`` (replay the real first
            clicks of ``user_clicks``, one 1-click episode each); ``sample`` (RClicks "Sample":
            as ``user``, but each real click replaced by one click sampled from the unsliced
            clickability map, the RNG not reseeded between users).
        strategy_args: keyword arguments of the strategy (``clickability`` / ``sample``: the
            ``ClickabilityStrategy`` arguments, e.g. ``{checkpoint: ..., clicking_group: 3}``).
        max_clicks: clicks per episode (all are run: no early stop). User mode always runs
            1-click episodes.
        iou_thresholds: thresholds of the NoC columns.
        nof_thresholds: thresholds of the NoF columns.
        seed: seed of the per-image click RNG (``item_rng(seed, dataset, image_stem)``).
        user_clicks: RClicks ``clicks.csv`` path (``strategy: user`` / ``sample`` only). Before the
            first step every first click is matched to an evaluated image and instance: rows whose
            image or object the datasets do not have stop the run with the file, their count and
            line numbers (rows of datasets, or of images left out by ``max_images``, that are not
            evaluated are only counted).
        allow_unmatched_clicks: the evaluated data is meant to be a subset of what clicks.csv
            covers: unmatched rows are skipped with a warning (count and line numbers) instead.
    """

    trainable = False  # test only: no optimiser arguments, configure_optimizers refuses

    def __init__(
        self,
        predictor: str,
        predictor_args: dict[str, Any] | None = None,
        strategy: Literal["baseline", "clickability", "user", "sample"] = "baseline",
        strategy_args: dict[str, Any] | None = None,
        max_clicks: int = 20,
        iou_thresholds: list[float] | None = None,
        nof_thresholds: list[float] | None = None,
        seed: int = 42,
        user_clicks: str | None = None,
        allow_unmatched_clicks: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        if (strategy in ("user", "sample")) != (user_clicks is not None):
            raise ValueError("strategies 'user' / 'sample' and user_clicks go together: set both or neither")
        try:
            predictor_factory(predictor)  # an unknown name stops here, not after the data is read
        except ValueError as err:
            raise ConfigError("model.init_args.predictor", str(err)) from None
        self.predictor_name = predictor
        self.predictor_args = dict(predictor_args or {})
        self.strategy_name = strategy
        self.strategy_args = dict(strategy_args or {})
        self.max_clicks = max_clicks
        self.iou_thresholds = list(iou_thresholds if iou_thresholds is not None else [0.8, 0.85, 0.9])
        self.nof_thresholds = list(nof_thresholds if nof_thresholds is not None else [0.85, 0.9])
        self.seed = seed
        self.user_clicks = user_clicks
        self.allow_unmatched_clicks = allow_unmatched_clicks
        self.user_mode = strategy in ("user", "sample")  # one 1-click episode per real first click
        # Built in setup(), in the process (and on the device) that runs the test.
        self.predictor: InteractivePredictor | None = None
        self.strategy: ClickStrategy | None = None
        self.noc_metrics = torch.nn.ModuleDict()
        self.dataset_names: list[str] = []
        self.click_rows: list[dict[str, Any]] = []
        self.miou_curves: dict[str, list[float]] = {}
        self._user_first_clicks: dict[tuple[str, str], list[UserClick]] = {}
        self._without_clicks: dict[str, int] = {}
        # Resuming (see resume_from): the folder of per-image partial results, or None.
        self.partial_dir: Path | None = None
        self._resumed: dict[str, int] = {}

    # ------------------------------------------------------------------ resuming
    def resume_from(self, folder: str | os.PathLike[str] | None) -> None:
        """Keep per-image results in ``folder`` and reuse those found there (None: off).

        Call before ``trainer.test``. Each image's click rows go to ``folder/<dataset>/<image>.csv``
        when all its instances are done; a later run with the same folder and settings loads them
        instead of running the predictor (see the module docstring).
        """
        self.partial_dir = None if folder is None else Path(folder)

    def partial_settings(self) -> dict[str, Any]:
        """What determines the per-click rows, as stored in ``settings.json`` (JSON-normalised)."""
        clicks_hash = None
        if self.user_clicks is not None:
            clicks_hash = hashlib.sha256(Path(self.user_clicks).read_bytes()).hexdigest()
        settings = {
            "format": PARTIAL_FORMAT, "version": PARTIAL_VERSION,
            "predictor": self.predictor_name, "predictor_args": self.predictor_args,
            "strategy": self.strategy_name, "strategy_args": self.strategy_args,
            "max_clicks": self.max_clicks, "seed": self.seed, "user_clicks_sha256": clicks_hash,
        }
        return json.loads(json.dumps(settings, sort_keys=True, default=str))

    def _prepare_partial(self, folder: Path) -> None:
        """Check ``folder/settings.json`` against this run's settings, or write it (every rank: the
        write is atomic and the content the same)."""
        path = folder / "settings.json"
        want = self.partial_settings()
        if not path.is_file():
            write_json(path, want)
            return
        have = read_json(path)
        if not isinstance(have, dict):
            raise DataError(path, "not a settings object; delete the folder to start afresh")
        differ = [key for key in sorted(set(want) | set(have)) if want.get(key) != have.get(key)]
        if differ:
            details = "; ".join(f"{key}: {have.get(key)!r} there, {want.get(key)!r} in this run" for key in differ)
            raise DataError(folder, f"partial results of an evaluation with other settings ({details}). Delete "
                                    "the folder or choose another output folder to start afresh, or restore "
                                    "the settings to resume")

    def _row_columns(self) -> list[str]:
        base = ["dataset", "image", "instance", "episode"]
        if self.user_mode:
            base += ["device", "source_line"]
        return base + ["k", "click_x", "click_y", "sign", "iou", "seconds"]

    def _partial_path(self, dataset: str, stem: str) -> Path:
        assert self.partial_dir is not None
        return self.partial_dir / dataset / f"{stem}.csv"

    def _load_partial(self, dataset: str, stem: str, instance_ids: list[int]) -> list[dict[str, Any]] | None:
        """The image's rows from an earlier run, typed as when computed; None when not written yet."""
        if self.partial_dir is None:
            return None
        path = self._partial_path(dataset, stem)
        if not path.is_file():
            return None
        columns = self._row_columns()
        rows = []
        for raw in read_csv_rows(path, columns):
            if list(raw)[:-1] != columns:  # read_csv_rows appends "_line"
                raise DataError(path, f"header {list(raw)[:-1]} is not {columns}; delete the file to re-evaluate "
                                      "the image")
            try:
                rows.append({c: _parse_cell(c, raw[c]) for c in columns})
            except ValueError as err:
                raise DataError(path, f"line {raw['_line']}: {err}; delete the file to re-evaluate the image") \
                    from None
        found = [(r["instance"], r["episode"], r["k"]) for r in rows]
        if self.user_mode:  # 1-click episodes of some of the instances
            fits = all(k == 1 and i in instance_ids for i, _, k in found)
        else:
            fits = found == [(i, 0, k) for i in instance_ids for k in range(1, self.max_clicks + 1)]
        if not fits or any(r["dataset"] != dataset or r["image"] != stem for r in rows):
            raise DataError(path, f"rows do not match the image's instances {instance_ids} "
                                  f"({self.max_clicks} clicks each); delete the file to re-evaluate the image")
        return rows

    def _save_partial(self, dataset: str, stem: str, rows: list[dict[str, Any]]) -> None:
        if self.partial_dir is not None:
            write_table(rows, self._partial_path(dataset, stem), columns=self._row_columns())

    # ------------------------------------------------------------------ building
    def build_predictor(self) -> InteractivePredictor:
        args = dict(self.predictor_args)
        if args.get("device") == "auto":
            args["device"] = str(self.trainer.strategy.root_device)
        return build_predictor(self.predictor_name, **args)

    def setup(self, stage: str) -> None:
        if stage != "test":
            raise RuntimeError(
                f"InteractiveBenchmark has no trainable parameters and only runs the test loop "
                f"(trainer.test / evaluate.py); '{stage}' is not supported"
            )
        datamodule = self.trainer.datamodule
        names = getattr(datamodule, "datasets", None)
        if not names:
            raise RuntimeError("InteractiveBenchmark needs an InteractiveDataModule (with a `datasets` list)")
        self.dataset_names = list(names)
        # The same metrics on every rank, created before any rank sees data.
        self.noc_metrics = torch.nn.ModuleDict({
            name: NoCMetric(self.max_clicks, self.iou_thresholds, self.nof_thresholds) for name in self.dataset_names
        })
        import litseg.rclicks.band_sampler  # noqa: F401  (registers the "clickability" strategy)

        if self.user_mode:
            self._user_first_clicks = self._match_user_clicks(datamodule)
        if self.strategy_name in ("clickability", "sample"):
            self.strategy = build_strategy("clickability", **self.strategy_args)
        elif self.strategy_name == "baseline":
            self.strategy = build_strategy("baseline", **self.strategy_args)
        if self.partial_dir is not None:
            self._prepare_partial(self.partial_dir)  # before loading the predictor: a mismatch stops at once
        self.predictor = self.build_predictor()

    def _match_user_clicks(self, datamodule: Any) -> dict[tuple[str, str], list[UserClick]]:
        """First clicks of ``user_clicks`` by instance, checked against the images the datamodule's
        setup checked (sizes, instance ids) before the first step."""
        assert self.user_clicks is not None
        path = Path(self.user_clicks)
        found = getattr(datamodule, "summaries", None)
        if found is None:
            raise RuntimeError("user mode needs an InteractiveDataModule (its setup records each image's instances)")
        images = {(DATASETS[name].clicks_name, stem): (s.height, s.width, s.instance_ids)
                  for (name, stem), s in found.items()}
        folders = {DATASETS[name].clicks_name: str(datamodule.root / name) for name in self.dataset_names}
        left_out = {(DATASETS[name].clicks_name, stem) for name, stems in datamodule.left_out.items() for stem in stems}
        others = {layout.clicks_name for layout in DATASETS.values()} - set(folders)
        match = match_first_clicks(read_user_clicks(path), images, folders, left_out, others)
        problems = list(match.frame_problems)
        if match.unmatched:
            summary = describe_unmatched(match)
            if not self.allow_unmatched_clicks:
                problems.insert(0, DataError(path, f"{summary} Set allow_unmatched_clicks: true if evaluating a "
                                                   "subset is intended."))
            else:
                rank_zero_warn(f"{path}: {summary} Skipped (allow_unmatched_clicks).")
        raise_problems(problems, path, "first clicks checked against the evaluated images before the first step")
        if match.not_evaluated:
            rank_zero_info(f"{path}: {match.not_evaluated} first-click row(s) of datasets or images not evaluated "
                           "in this run (datasets / max_images) skipped")
        return match.by_instance

    # Defined only so that Lightning's loop checks pass and setup() can refuse "fit" clearly; the base
    # refuses configure_optimizers (trainable = False).
    def training_step(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("InteractiveBenchmark cannot be trained; run trainer.test / evaluate.py")

    # ------------------------------------------------------------------ test loop
    def on_test_epoch_start(self) -> None:
        for metric in self.noc_metrics.values():
            metric.reset()
        self.click_rows = []
        self._without_clicks = dict.fromkeys(self.dataset_names, 0)
        self._resumed = dict.fromkeys(self.dataset_names, 0)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        dataset, stem, instance_ids = batch["dataset"], batch["image_stem"], list(batch["instance_ids"])
        if self.user_mode:  # RClicks evaluates only instances with real clicks
            self._without_clicks[dataset] += sum(
                not self._clicks_of(dataset, instance_key(stem, inst, len(instance_ids))) for inst in instance_ids)
        rows = self._load_partial(dataset, stem, instance_ids)
        if rows is None:
            rows = self._run_image(batch)
            self._save_partial(dataset, stem, rows)  # only once every instance of the image is done
        else:
            self._resumed[dataset] += 1
        self.click_rows.extend(rows)
        if not self.user_mode:
            assert self.strategy is not None
            for inst in instance_ids:
                curve = np.array([r["iou"] for r in rows if r["instance"] == inst], dtype=np.float64)  # k order
                self.noc_metrics[dataset].update(curve, instance_id(dataset, stem, inst), self.strategy.group)

    def _run_image(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-click rows of every instance of one image, from the predictor."""
        assert self.predictor is not None
        dataset, stem, image, ignore = batch["dataset"], batch["image_stem"], batch["image"], batch["ignore"]
        rng = item_rng(self.seed, dataset, stem)  # reset per image: independent of order and rank
        self.predictor.set_image(image)  # encoded once for all instances and clicks
        n_instances = len(batch["instance_ids"])
        rows: list[dict[str, Any]] = []
        for inst, gt in zip(batch["instance_ids"], batch["instances"], strict=True):
            base = {"dataset": dataset, "image": stem, "instance": inst}
            if self.user_mode:
                rows += self._user_episodes(base, image, gt, ignore, rng, instance_key(stem, inst, n_instances))
                continue
            assert self.strategy is not None
            records = run_episode(self.predictor, image, gt, ignore, self.strategy, rng, self.max_clicks)
            rows += _click_rows(base | {"episode": 0}, records)
        return rows

    def _clicks_of(self, dataset: str, key: str) -> list[UserClick]:
        return self._user_first_clicks.get((DATASETS[dataset].clicks_name, key), [])

    def _user_episodes(self, base: dict[str, Any], image: np.ndarray, gt: np.ndarray, ignore: np.ndarray,
                       rng: np.random.Generator, key: str) -> list[dict[str, Any]]:
        """Each real first click of the instance as its own fresh 1-click positive episode."""
        rows: list[dict[str, Any]] = []
        clicks = self._clicks_of(base["dataset"], key)
        height, width = gt.shape
        for episode, click in enumerate(clicks):
            if self.strategy_name == "sample":  # as many sampled first clicks as real users
                assert self.strategy is not None
                records = run_episode(self.predictor, image, gt, ignore, self.strategy, rng, max_clicks=1)
            else:
                y, x = click.in_image(height, width)
                records = run_episode(self.predictor, image, gt, ignore, ReplayClicks([(y, x, True)]), rng,
                                      max_clicks=1)
            extra = {"episode": episode, "device": click.device, "source_line": click.line}
            rows += _click_rows(base | extra, records)
        return rows

    def on_test_epoch_end(self) -> None:
        self.click_rows = self._gather_rows(self.click_rows)
        self._without_clicks = self._gather_counts(self._without_clicks)
        if self.partial_dir is not None:
            resumed = sum(self._gather_counts(self._resumed).values())
            rank_zero_info(f"{self.partial_dir}: {resumed} image(s) taken from earlier partial results")
        self.evaluation_rows = []
        self.miou_curves = {}
        for name in self.dataset_names:
            rows = [r for r in self.click_rows if r["dataset"] == name]
            summary = self._user_summary(name, rows) if self.user_mode else self._noc_summary(name)
            timed = [r["seconds"] for r in rows if r["sign"] != "none"]
            summary["seconds_per_click"] = float(np.mean(timed)) if timed else float("nan")
            self.evaluation_rows.append(summary)
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    # Already global (gathered above): no further reduction.
                    self.log(f"{name}/{key}", float(value), sync_dist=False)

    def _noc_summary(self, name: str) -> dict[str, Any]:
        stats = {k: float(v) for k, v in self.noc_metrics[name].compute().items()}
        self.miou_curves[name] = [stats[f"mIoU@{k}"] for k in range(1, self.max_clicks + 1)]
        row: dict[str, Any] = {"dataset": name, "predictor": self.predictor_name, "strategy": self.strategy_name}
        row |= {f"NoC@{threshold_label(t)}": stats[f"NoC@{threshold_label(t)}"] for t in self.iou_thresholds}
        row |= {f"NoF@{threshold_label(t)}": int(stats[f"NoF@{threshold_label(t)}"]) for t in self.nof_thresholds}
        row["IoU-AUC"] = stats["IoU-AUC"]
        row |= {f"mIoU@{k}": stats[f"mIoU@{k}"] for k in SUMMARY_MIOU_AT if k <= self.max_clicks}
        row["n_instances"] = int(stats["n_instances"])
        return row

    def _user_summary(self, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        per_instance: dict[tuple[str, int], list[float]] = {}
        for r in rows:
            per_instance.setdefault((r["image"], r["instance"]), []).append(r["iou"])
        ious = list(per_instance.values())
        miou = float(np.mean([np.mean(v) for v in ious])) if ious else float("nan")
        self.miou_curves[name] = [miou]
        return {
            "dataset": name, "predictor": self.predictor_name, "strategy": self.strategy_name,
            "mIoU@1": miou, "NSR@1": nsr(ious), "n_instances": len(ious), "n_clicks": len(rows),
            "n_instances_without_clicks": self._without_clicks.get(name, 0),
        }

    def _gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All ranks' per-click rows, in a fixed order (dataset order, image, instance, episode, k)."""
        order = {name: i for i, name in enumerate(self.dataset_names)}
        return sorted(gather_rows(rows),
                      key=lambda r: (order[r["dataset"]], r["image"], r["instance"], r["episode"], r["k"]))

    def _gather_counts(self, counts: dict[str, int]) -> dict[str, int]:
        parts = gather_objects(counts)
        return {name: sum(part.get(name, 0) for part in parts) for name in self.dataset_names}

    # ------------------------------------------------------------------ outputs
    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """Write ``per_click.csv``, ``summary.csv`` / ``.md`` and ``miou_vs_clicks.png``.

        Only global rank 0 writes (every rank holds the same gathered results).
        """
        if not self.evaluation_rows:
            raise RuntimeError("InteractiveBenchmark: no evaluation results; run the test loop first")
        if self._trainer is not None and not self.trainer.is_global_zero:
            return self.evaluation_rows
        output_dir = Path(output_dir)
        write_table(self.click_rows, output_dir / "per_click.csv")
        write_table(self.evaluation_rows, output_dir / "summary.csv", output_dir / "summary.md")
        plot_path = output_dir / "miou_vs_clicks.png"
        line_plot(self.miou_curves, plot_path, xlabel="number of clicks", ylabel="mIoU",
                  title=f"{self.predictor_name}, {self.strategy_name} clicks", ylim=(0.0, 1.0), integer_x=True)
        self.log_report("interactive", self.evaluation_rows, {"miou_vs_clicks": plot_path})
        return self.evaluation_rows


def _parse_cell(column: str, text: str) -> Any:
    """A per-click CSV cell back as the value written (ints, floats exactly: CSV holds their repr)."""
    if column in _INT_COLUMNS or (column in _OPTIONAL_INT_COLUMNS and text != ""):
        return int(text)
    if column in _FLOAT_COLUMNS:
        return float(text)
    return text


def _click_rows(base: dict[str, Any], records: list[ClickRecord]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        click = r.click
        rows.append(base | {
            "k": r.k,
            "click_x": "" if click is None else click.x,
            "click_y": "" if click is None else click.y,
            "sign": "none" if click is None else ("positive" if click.is_positive else "negative"),
            "iou": r.iou,
            "seconds": r.seconds,
        })
    return rows
