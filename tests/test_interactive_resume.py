"""The interactive benchmark resumes: a killed evaluation restarted with the same partial folder
skips the images already written and ends with the same per_click.csv and summary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Callback

import litseg.interactive.episode as episode_module
from datamodules.interactive import InteractiveDataModule
from lit_modules.interactive import InteractiveBenchmark
from litseg.io import DataError
from tests.fakes import write_clicks_csv, write_ritm
from tests.test_interactive_benchmark import SquareOracle, black, make_root, make_trainer, read_rows, square

REPO = Path(__file__).resolve().parents[1]
COUNTING = "test_interactive_resume:CountingOracle"  # import string for build_predictor
DATASETS = ["GrabCut", "Berkeley"]
OUTPUTS = ("per_click.csv", "summary.csv", "summary.md")


class CountingOracle(SquareOracle):
    """SquareOracle that counts, across instances, which images it encoded."""

    encoded_images: list[tuple[int, int]] = []

    def set_image(self, image: np.ndarray) -> None:
        super().set_image(image)
        CountingOracle.encoded_images.append(image.shape[:2])


class FixedClock:
    """Stands in for ``time`` in the episode loop: every predictor call takes exactly 1/7 s, so
    timings are reproducible across runs (and 1/7 needs the full float repr to round-trip)."""

    def __init__(self) -> None:
        self.calls = 0

    def perf_counter(self) -> float:
        self.calls += 1
        return 0.0 if self.calls % 2 else 1 / 7


@pytest.fixture
def fixed_clock(monkeypatch):
    monkeypatch.setattr(episode_module, "time", FixedClock())


@pytest.fixture
def root(tmp_path) -> Path:
    """GrabCut a, b, c, d (20x20, 11x11, 9x9, 20x20) and Berkeley z: 5 images, 5 instances."""
    root = make_root(tmp_path / "data")
    write_ritm(root, "GrabCut", {"d": square((20, 20), 2, 9, 4, 15).astype(np.uint8) * 255}, images=black,
               image_ext=".png", mask_ext=".bmp")
    return root


def run(root: Path, tmp_path: Path, out: Path | None, partial: Path | None, predictor: str = COUNTING,
        datasets: list[str] = DATASETS, trainer_args: dict | None = None, **kwargs) -> InteractiveBenchmark:
    model = InteractiveBenchmark(predictor=predictor, **({"max_clicks": 4} | kwargs))
    model.resume_from(partial)
    make_trainer(tmp_path, **(trainer_args or {})).test(model, datamodule=InteractiveDataModule(str(root), datasets))
    if out is not None:
        model.write_evaluation(out)
    return model


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.startswith(".")]


KILLED_RUN = """
import os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from lightning.pytorch import Callback
import litseg.interactive.episode as episode_module
from test_interactive_resume import FixedClock, InteractiveBenchmark, InteractiveDataModule, make_trainer

class KillAfterSecondImage(Callback):
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)

episode_module.time = FixedClock()
model = InteractiveBenchmark(predictor={predictor!r}, max_clicks=4)
model.resume_from({partial!r})
make_trainer({tmp!r}, callbacks=[KillAfterSecondImage()]).test(
    model, datamodule=InteractiveDataModule({root!r}, {datasets!r}))
raise SystemExit("not killed")
"""


def test_killed_evaluation_resumes_with_identical_outputs(tmp_path, root, fixed_clock):
    full = run(root, tmp_path, tmp_path / "full", None)
    assert len(full.click_rows) == 5 * 4

    partial = tmp_path / "resume" / "partial"
    script = KILLED_RUN.format(repo=str(REPO), tests=str(REPO / "tests"), predictor=COUNTING, partial=str(partial),
                               tmp=str(tmp_path), root=str(root), datasets=DATASETS)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    # Images a and b (dataset order, then file name) were finished before the kill.
    assert sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*.csv")) == ["GrabCut/a.csv",
                                                                                         "GrabCut/b.csv"]
    assert (partial / "settings.json").is_file() and not leftovers(partial)

    CountingOracle.encoded_images = []
    resumed = run(root, tmp_path, tmp_path / "resume", partial)
    # Only c (9x9), d (20x20) and z (11x11) went through the predictor.
    assert CountingOracle.encoded_images == [(9, 9), (20, 20), (11, 11)]
    for name in OUTPUTS:  # every column, the timings included
        assert (tmp_path / "resume" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    assert resumed.evaluation_rows == full.evaluation_rows
    assert sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*.csv")) == [
        "Berkeley/z.csv", "GrabCut/a.csv", "GrabCut/b.csv", "GrabCut/c.csv", "GrabCut/d.csv"]
    assert not leftovers(partial)


def test_partial_files_keep_real_timings_exactly(tmp_path, root):
    partial = tmp_path / "partial"
    run(root, tmp_path, tmp_path / "first", partial)
    # The partial file of an image holds its rows of per_click.csv, every column, byte for byte.
    rows = read_rows(tmp_path / "first" / "per_click.csv")
    assert read_rows(partial / "GrabCut" / "a.csv") == [r for r in rows if r["image"] == "a"]
    assert any(float(r["seconds"]) > 0 for r in rows)

    CountingOracle.encoded_images = []
    again = run(root, tmp_path, tmp_path / "again", partial)
    assert CountingOracle.encoded_images == []  # everything came from the partial folder
    for name in OUTPUTS:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name
    assert again.evaluation_rows[0]["n_instances"] == 4


class FailAfterFirstImage(Callback):
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            raise RuntimeError("interrupted")


def test_user_mode_resumes(tmp_path, root, fixed_clock):
    rows = [
        ["GrabCut", "a", "a", "", "first", "", "pc", 9, 9, 20, 20],
        ["GrabCut", "a", "a", "", "first", "", "mobile", 5, 5, 20, 20],
        ["GrabCut", "d", "d", "", "first", "", "pc", 6, 6, 20, 20],
    ]
    clicks = str(write_clicks_csv(tmp_path / "clicks.csv", rows))
    args = {"strategy": "user", "user_clicks": clicks, "datasets": ["GrabCut"]}
    full = run(root, tmp_path, tmp_path / "full", None, **args)

    partial = tmp_path / "resume" / "partial"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(root, tmp_path, None, partial, trainer_args={"callbacks": [FailAfterFirstImage()]}, **args)
    assert [p.name for p in partial.rglob("*.csv")] == ["a.csv"] and not leftovers(partial)
    CountingOracle.encoded_images = []
    resumed = run(root, tmp_path, tmp_path / "resume", partial, **args)
    assert len(CountingOracle.encoded_images) == 3  # b, c (no clicks: encoded, no episode) and d
    for name in OUTPUTS:
        assert (tmp_path / "resume" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    (summary,) = resumed.evaluation_rows
    assert summary["n_instances_without_clicks"] == 2 and summary["n_clicks"] == 3  # b and c
    assert resumed.evaluation_rows == full.evaluation_rows


def test_other_settings_stop_with_the_folder_and_setting(tmp_path, root):
    partial = tmp_path / "partial"
    run(root, tmp_path, None, partial, datasets=["Berkeley"], max_clicks=3)
    CountingOracle.encoded_images = []
    folder = re.escape(str(partial))
    with pytest.raises(DataError, match=rf"^{folder}: partial results of an evaluation with other settings "
                                        r"\(max_clicks: 3 there, 4 in this run; seed: 42 there, 7 in this run\)"):
        run(root, tmp_path, None, partial, datasets=["Berkeley"], max_clicks=4, seed=7)
    with pytest.raises(DataError, match=r"predictor: 'test_interactive_resume:CountingOracle' there, "
                                        r"'test_interactive_benchmark:SquareOracle' in this run"):
        run(root, tmp_path, None, partial, predictor="test_interactive_benchmark:SquareOracle",
            datasets=["Berkeley"], max_clicks=3)
    assert CountingOracle.encoded_images == []
    # Thresholds only enter the summary, recomputed from the rows: they may change on a restart.
    resumed = run(root, tmp_path, None, partial, datasets=["Berkeley"], max_clicks=3, iou_thresholds=[0.5])
    assert CountingOracle.encoded_images == [] and "NoC@50" in resumed.evaluation_rows[0]


def test_a_damaged_partial_file_is_named(tmp_path, root):
    partial = tmp_path / "partial"
    run(root, tmp_path, None, partial, datasets=["Berkeley"])
    path = partial / "Berkeley" / "z.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # one click missing
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: rows do not match the image's instances "
                                        r"\[1\] \(4 clicks each\); delete the file"):
        run(root, tmp_path, None, partial, datasets=["Berkeley"])


class WriteOnRankZero(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_test_end(self, trainer, pl_module) -> None:
        pl_module.write_evaluation(Path(self.out_dir))


def test_two_process_ddp_resumes_a_single_process_run(tmp_path, root):
    full = tmp_path / "full"
    run(root, tmp_path, full, None, predictor="test_interactive_benchmark:SquareOracle")
    partial = tmp_path / "partial"
    # "Killed" after 3 images (a, b, c); two ranks then take the rest (rank 0: a, c, z; rank 1: b, d).
    run(root, tmp_path, None, partial, predictor="test_interactive_benchmark:SquareOracle",
        trainer_args={"limit_test_batches": 3})
    earlier = {p.stem: read_rows(p) for p in (partial / "GrabCut").glob("*.csv")}
    assert sorted(earlier) == ["a", "b", "c"]

    model = InteractiveBenchmark(predictor="test_interactive_benchmark:SquareOracle", max_clicks=4)
    model.resume_from(partial)
    trainer = make_trainer(tmp_path, devices=2, strategy="ddp_spawn",
                           callbacks=[WriteOnRankZero(str(tmp_path / "ddp"))])
    trainer.test(model, datamodule=InteractiveDataModule(str(root), DATASETS))

    def without_seconds(path: Path, drop: str) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != drop} for row in read_rows(path)]

    assert without_seconds(tmp_path / "ddp" / "per_click.csv", "seconds") == without_seconds(
        full / "per_click.csv", "seconds")
    assert without_seconds(tmp_path / "ddp" / "summary.csv", "seconds_per_click") == without_seconds(
        full / "summary.csv", "seconds_per_click")
    rows = read_rows(tmp_path / "ddp" / "per_click.csv")
    for stem, kept in earlier.items():  # the finished images' rows, timings included, came from the files
        assert [r for r in rows if r["image"] == stem] == kept
    assert sorted(p.stem for p in partial.rglob("*.csv")) == ["a", "b", "c", "d", "z"] and not leftovers(partial)
    assert os.path.isfile(partial / "settings.json")
