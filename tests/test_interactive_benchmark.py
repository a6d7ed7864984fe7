"""The episode loop and the InteractiveBenchmark module: hand-worked episodes with an oracle
predictor, outputs, User mode, 2-process DDP, and the classical predictor end to end."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lightning.pytorch import Callback, Trainer
from PIL import Image

from datamodules.interactive import InteractiveDataModule
from lit_modules.interactive import InteractiveBenchmark
from litseg.interactive.clicker import BaselineClicker, ReplayClicks
from litseg.interactive.episode import mask_iou, run_episode, run_image
from litseg.interactive.types import Click
from litseg.io import DataError
from tests.fakes import write_clicks_csv, write_ritm
from tests.helpers import RecordingWandbLogger

REPO = Path(__file__).resolve().parents[1]
ORACLE = "test_interactive_benchmark:SquareOracle"  # import string for build_predictor


class SquareOracle:
    """Test predictor: every click paints a (2r+1)^2 square, 1 for positive, 0 for negative,
    in click order. Counts calls so tests can check how it was driven."""

    threshold = 0.5

    def __init__(self, radius: int = 3) -> None:
        self.radius = radius
        self.encoded = self.resets = self.calls = 0
        self.shape: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.encoded += 1

    def reset(self) -> None:
        self.resets += 1

    def predict(self, clicks: list[Click]) -> np.ndarray:
        self.calls += 1
        probs = np.zeros(self.shape, dtype=np.float32)
        r = self.radius
        for c in sorted(clicks, key=lambda c: c.index):
            probs[max(0, c.y - r) : c.y + r + 1, max(0, c.x - r) : c.x + r + 1] = 1.0 if c.is_positive else 0.0
        return probs


class ConstantPredictor(SquareOracle):
    def __init__(self, value: float, threshold: float) -> None:
        super().__init__()
        self.value, self.threshold = value, threshold

    def predict(self, clicks: list[Click]) -> np.ndarray:
        return np.full(self.shape, self.value, dtype=np.float32)


def square(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


GT_A = square((20, 20), 5, 14, 5, 14)  # 10x10 object: needs several clicks
GT_B = square((11, 11), 2, 8, 2, 8)  # 7x7 object: one click at its centre covers it exactly


def episode(gt: np.ndarray, max_clicks: int, predictor: SquareOracle | None = None):
    predictor = predictor or SquareOracle()
    image = np.zeros((*gt.shape, 3), np.uint8)
    predictor.set_image(image)
    return run_episode(predictor, image, gt, np.zeros_like(gt), BaselineClicker(), np.random.default_rng(0),
                       max_clicks)


# ----------------------------------------------------------------------------- episode loop


def test_episode_hand_worked():
    records = episode(GT_A, 3)
    # 1: positive at the DT centre (9, 9) (first of the four DT-5 pixels); its 7x7 square
    #    (6..12)^2 is inside the object: IoU 49/100.
    # 2: the uncovered object is a frame 1-2 px thick; its farthest pixel is the inner corner
    #    (13, 13), sqrt(2) from the predicted (12, 12): positive there. Square (10..16)^2
    #    adds 16 object and 24 background pixels: 65/124.
    # 3: the 24 fp pixels form a 2-px L whose inner corner (15, 15) is sqrt(2) from the
    #    object, beating the fn frame (DT 1): negative at (15, 15), erasing (12..18)^2:
    #    9 object and 16 background pixels fewer: 56/108.
    assert [(r.k, r.click) for r in records] == [
        (1, Click(9, 9, True, 0)), (2, Click(13, 13, True, 1)), (3, Click(15, 15, False, 2))]
    assert [r.iou for r in records] == pytest.approx([49 / 100, 65 / 124, 56 / 108], abs=1e-12)
    assert all(r.seconds >= 0 for r in records)


def test_user_stops_when_no_error_is_left_and_the_curve_is_filled():
    predictor = SquareOracle()
    records = episode(GT_B, 5, predictor)
    assert records[0].click == Click(5, 5, True, 0) and records[0].iou == 1.0
    assert [r.click for r in records[1:]] == [None] * 4
    assert [r.iou for r in records] == [1.0] * 5
    assert [r.k for r in records] == [1, 2, 3, 4, 5]
    assert predictor.calls == 1  # no predictor call once the user has stopped


def test_threshold_is_strict_and_comes_from_the_predictor():
    gt = square((4, 5), 0, 1, 0, 4)  # 10 of 20 pixels
    assert episode(gt, 1, ConstantPredictor(0.5, threshold=0.5))[0].iou == 0.0  # 0.5 > 0.5 is False
    assert episode(gt, 1, ConstantPredictor(0.5, threshold=0.49))[0].iou == 0.5  # everything: 10/20


def test_iou_ignores_ignore_pixels():
    gt = square((4, 4), 0, 1, 0, 3)  # 8 px
    pred = square((4, 4), 0, 2, 0, 3)  # 12 px: 4 fp on row 2
    ignore = square((4, 4), 2, 2, 0, 1)  # 2 of the fp are ignore
    assert mask_iou(gt, pred, np.zeros_like(gt)) == 8 / 12
    assert mask_iou(gt, pred, ignore) == 8 / 10
    assert mask_iou(np.zeros_like(gt), np.zeros_like(gt), ignore) == 1.0


def test_image_encoded_once_and_reset_per_instance():
    predictor = SquareOracle()
    image = np.zeros((20, 20, 3), np.uint8)
    gts = [GT_A, square((20, 20), 0, 2, 0, 2)]
    out = run_image(predictor, image, gts, np.zeros((20, 20), bool), BaselineClicker(), np.random.default_rng(0), 2)
    assert predictor.encoded == 1 and predictor.resets == 2 and len(out) == 2
    assert out[1][0].click == Click(1, 1, True, 0)  # the second instance starts afresh


def test_bad_predictor_output_and_out_of_image_clicks():
    class WrongShape(SquareOracle):
        def predict(self, clicks):
            return np.zeros((3, 3), np.float32)

    with pytest.raises(ValueError, match=r"WrongShape\.predict returned shape \(3, 3\), expected \(20, 20\)"):
        episode(GT_A, 1, WrongShape())
    predictor = SquareOracle()
    predictor.set_image(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match=r"ReplayClicks clicked at \(y=20, x=0\), outside the 20x20 image"):
        run_episode(predictor, None, GT_A, np.zeros_like(GT_A), ReplayClicks([(20, 0, True)]),
                    np.random.default_rng(0), 1)


# ----------------------------------------------------------------------------- the module


def black(stem: str, shape: tuple[int, int]) -> np.ndarray:
    return np.zeros((*shape, 3), np.uint8)


def make_root(tmp_path: Path) -> Path:
    """GrabCut layout: a = GT_A, b = GT_B, c = a 7x7 object in 9x9; Berkeley layout: one GT_B image."""
    masks = {"a": GT_A, "b": GT_B, "c": square((9, 9), 1, 7, 1, 7)}
    write_ritm(tmp_path, "GrabCut", {stem: gt.astype(np.uint8) * 255 for stem, gt in masks.items()},
               images=black, image_ext=".png", mask_ext=".bmp")
    write_ritm(tmp_path, "Berkeley", {"z": GT_B.astype(np.uint8) * 255}, images=black, image_ext=".png",
               mask_ext=".png")
    return tmp_path


def make_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
              **kwargs}
    return Trainer(**kwargs)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_module_summary_and_outputs(tmp_path):
    root = make_root(tmp_path / "data")
    model = InteractiveBenchmark(predictor=ORACLE, max_clicks=4)
    dm = InteractiveDataModule(root=str(root), datasets=["GrabCut", "Berkeley"])
    make_trainer(tmp_path).test(model, datamodule=dm)

    curve_a = [r.iou for r in episode(GT_A, 4)]
    grabcut, berkeley = model.evaluation_rows
    assert grabcut["dataset"] == "GrabCut" and grabcut["predictor"] == ORACLE and grabcut["strategy"] == "baseline"
    assert grabcut["n_instances"] == 3 and berkeley["n_instances"] == 1
    # b and c are covered exactly by the first click (IoU 1); a never reaches 0.8 in 4 clicks.
    assert grabcut["NoC@90"] == pytest.approx((4 + 1 + 1) / 3)
    assert grabcut["NoF@90"] == 1 and grabcut["NoF@85"] == 1
    assert grabcut["mIoU@1"] == pytest.approx((0.49 + 1 + 1) / 3)
    assert grabcut["IoU-AUC"] == pytest.approx((np.trapezoid(curve_a) / 3 + 1 + 1) / 3)
    assert "mIoU@5" not in grabcut  # only k <= max_clicks
    assert berkeley["NoC@90"] == 1 and berkeley["mIoU@1"] == 1.0
    assert grabcut["seconds_per_click"] >= 0

    out = tmp_path / "out"
    model.write_evaluation(out)
    rows = read_rows(out / "per_click.csv")
    assert list(rows[0]) == ["dataset", "image", "instance", "episode", "k", "click_x", "click_y", "sign", "iou",
                             "seconds"]
    assert len(rows) == 4 * 4
    a_rows = [r for r in rows if r["image"] == "a"]
    assert [(r["k"], r["click_x"], r["click_y"], r["sign"]) for r in a_rows[:3]] == [
        ("1", "9", "9", "positive"), ("2", "13", "13", "positive"), ("3", "15", "15", "negative")]
    assert [float(r["iou"]) for r in a_rows] == pytest.approx(curve_a)
    b_rows = [r for r in rows if r["image"] == "b"]
    assert [r["sign"] for r in b_rows] == ["positive", "none", "none", "none"]
    assert b_rows[1]["click_x"] == ""
    summary = read_rows(out / "summary.csv")
    assert [r["dataset"] for r in summary] == ["GrabCut", "Berkeley"]
    assert float(summary[0]["NoC@90"]) == pytest.approx(2.0)
    assert (out / "summary.md").read_text().startswith("| dataset | predictor | strategy | NoC@80 |")
    with Image.open(out / "miou_vs_clicks.png") as png:
        assert png.format == "PNG" and min(png.size) >= 300  # a real figure, not a stub
    assert model.miou_curves["GrabCut"] == pytest.approx([(c + 1 + 1) / 3 for c in curve_a])


def test_write_evaluation_logs_plot_and_table_to_wandb(tmp_path):
    import wandb

    root = make_root(tmp_path / "data")
    model = InteractiveBenchmark(predictor=ORACLE, max_clicks=2)
    dm = InteractiveDataModule(root=str(root), datasets=["Berkeley"])
    make_trainer(tmp_path).test(model, datamodule=dm)
    logger = RecordingWandbLogger()
    model.trainer.loggers = [logger]
    model.write_evaluation(tmp_path / "out")
    (logged,) = logger.logged
    assert isinstance(logged["interactive/miou_vs_clicks"], wandb.Image)
    table = logged["interactive/summary"]
    assert isinstance(table, wandb.Table)
    assert table.columns[:4] == ["dataset", "predictor", "strategy", "NoC@80"]
    assert table.data[0][0] == "Berkeley"


def test_user_mode_episodes_and_nsr(tmp_path):
    root = make_root(tmp_path / "data")
    rows = [
        ["GrabCut", "a", "a", "", "first", "", "pc", 9, 9, 20, 20],  # IoU 49/100
        ["GrabCut", "a", "a", "", "first", "", "mobile", 5, 5, 20, 20],  # square (2..8)^2: 16/133
        ["GrabCut", "b", "b", "", "first", "", "pc", 5, 5, 11, 11],  # exact: 1.0
        ["GrabCut", "b_ritm_fn_pc_1", "b", "", "fn", "ritm", "pc", 0, 0, 11, 11],  # not a first click
        ["DAVIS", "a", "a", "", "first", "", "pc", 1, 1, 20, 20],  # another dataset: not used
    ]
    clicks = write_clicks_csv(tmp_path / "clicks.csv", rows)
    model = InteractiveBenchmark(predictor=ORACLE, strategy="user", user_clicks=str(clicks))
    dm = InteractiveDataModule(root=str(root), datasets=["GrabCut"])
    make_trainer(tmp_path).test(model, datamodule=dm)
    (summary,) = model.evaluation_rows
    a = np.array([49 / 100, 16 / 133])
    assert summary["n_instances"] == 2 and summary["n_clicks"] == 3
    assert summary["n_instances_without_clicks"] == 1  # image c
    assert summary["mIoU@1"] == pytest.approx((a.mean() + 1.0) / 2)
    assert summary["NSR@1"] == pytest.approx(100 * (a.std() / a.mean() + 0.0) / 2)
    assert [(r["image"], r["episode"], r["source_line"], r["iou"]) for r in model.click_rows] == [
        ("a", 0, 2, pytest.approx(a[0])), ("a", 1, 3, pytest.approx(a[1])), ("b", 0, 4, 1.0)]


def test_sample_mode_draws_one_click_per_real_user_from_the_map(tmp_path):
    root = make_root(tmp_path / "data")
    rows = [
        ["GrabCut", "a", "a", "", "first", "", "pc", 9, 9, 20, 20],
        ["GrabCut", "a", "a", "", "first", "", "mobile", 5, 5, 20, 20],
        ["GrabCut", "b", "b", "", "first", "", "pc", 5, 5, 11, 11],
    ]
    clicks = write_clicks_csv(tmp_path / "clicks.csv", rows)

    def run():
        model = InteractiveBenchmark(predictor=ORACLE, strategy="sample", user_clicks=str(clicks),
                                     strategy_args={"clickability": "distance_transform"})
        make_trainer(tmp_path).test(model, datamodule=InteractiveDataModule(root=str(root), datasets=["GrabCut"]))
        return model

    model = run()
    (summary,) = model.evaluation_rows
    assert summary["n_instances"] == 2 and summary["n_clicks"] == 3  # as many samples as real users
    got = [(r["image"], r["episode"], r["sign"], r["click_x"], r["click_y"]) for r in model.click_rows]
    assert [g[:3] for g in got] == [("a", 0, "positive"), ("a", 1, "positive"), ("b", 0, "positive")]
    # The first error region is the whole object: every sampled first click lies on it, and the
    # draws are reproducible (per-image seed).
    gts = {"a": GT_A, "b": GT_B}
    assert all(gts[image][y, x] for image, _, _, x, y in got)
    assert got == [(r["image"], r["episode"], r["sign"], r["click_x"], r["click_y"]) for r in run().click_rows]


def test_user_mode_click_frame_mismatch_names_the_row(tmp_path):
    root = make_root(tmp_path / "data")
    # a is 20x20
    clicks = write_clicks_csv(tmp_path / "clicks.csv", [["GrabCut", "a", "a", "", "first", "", "pc", 1, 1, 40, 10]])
    model = InteractiveBenchmark(predictor=ORACLE, strategy="user", user_clicks=str(clicks))
    with pytest.raises(DataError, match=r"clicks\.csv: line 2: click frame 40x10 does not match the image size 20x20"):
        make_trainer(tmp_path).test(model, datamodule=InteractiveDataModule(root=str(root), datasets=["GrabCut"]))


def test_user_mode_needs_both_settings():
    with pytest.raises(ValueError, match="'user' / 'sample' and user_clicks go together"):
        InteractiveBenchmark(predictor=ORACLE, strategy="user")
    with pytest.raises(ValueError, match="'user' / 'sample' and user_clicks go together"):
        InteractiveBenchmark(predictor=ORACLE, strategy="sample")
    with pytest.raises(ValueError, match="'user' / 'sample' and user_clicks go together"):
        InteractiveBenchmark(predictor=ORACLE, user_clicks="clicks.csv")


def test_fit_is_refused(tmp_path):
    root = make_root(tmp_path / "data")
    model = InteractiveBenchmark(predictor=ORACLE)
    with pytest.raises(RuntimeError, match="no trainable parameters and only runs the test loop"):
        make_trainer(tmp_path, max_epochs=1).fit(model, datamodule=InteractiveDataModule(str(root), ["GrabCut"]))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    root = make_root(tmp_path / "data")
    missing = tmp_path / "sam_vit_b.pth"
    model = InteractiveBenchmark(predictor="sam", predictor_args={"checkpoint": str(missing), "device": "auto"})
    with pytest.raises(DataError, match=r"sam_vit_b\.pth: checkpoint not found"):
        make_trainer(tmp_path).test(model, datamodule=InteractiveDataModule(str(root), ["GrabCut"]))


# ----------------------------------------------------------------------------- DDP


class WriteOnRankZero(Callback):
    """ddp_spawn keeps results in the workers: write them from there."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_test_end(self, trainer, pl_module) -> None:
        pl_module.write_evaluation(Path(self.out_dir))


def comparable(path: Path, drop: str) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != drop} for row in read_rows(path)]


def test_two_process_ddp_equals_one_process(tmp_path):
    # 4 GrabCut images + 1 Berkeley image over 2 ranks: rank 0 takes a, c, z; rank 1 takes b, d.
    # A padding sampler would repeat one image on rank 1; rank 1 gets no Berkeley image, so
    # its Berkeley metric is empty (the all_gather must still line up).
    root = make_root(tmp_path / "data")
    write_ritm(root, "GrabCut", {"d": square((20, 20), 2, 9, 4, 15).astype(np.uint8) * 255}, images=black,
               image_ext=".png", mask_ext=".bmp")
    datasets = ["GrabCut", "Berkeley"]
    single = InteractiveBenchmark(predictor=ORACLE, max_clicks=5)
    make_trainer(tmp_path).test(single, datamodule=InteractiveDataModule(str(root), datasets))
    single.write_evaluation(tmp_path / "single")

    ddp = InteractiveBenchmark(predictor=ORACLE, max_clicks=5)
    trainer = make_trainer(tmp_path, devices=2, strategy="ddp_spawn",
                           callbacks=[WriteOnRankZero(str(tmp_path / "ddp"))])
    trainer.test(ddp, datamodule=InteractiveDataModule(str(root), datasets))

    assert comparable(tmp_path / "ddp" / "per_click.csv", "seconds") == comparable(
        tmp_path / "single" / "per_click.csv", "seconds")
    assert comparable(tmp_path / "ddp" / "summary.csv", "seconds_per_click") == comparable(
        tmp_path / "single" / "summary.csv", "seconds_per_click")
    assert len(read_rows(tmp_path / "ddp" / "per_click.csv")) == 5 * 5  # every instance exactly once


# ----------------------------------------------------------------------------- configs, classical


def cli(config: str, tmp_path: Path, *extra: str):
    from litseg.cli import LitSegCLI

    return LitSegCLI(args=["--config", str(REPO / config), "--trainer.default_root_dir", str(tmp_path), *extra],
                     run=False)


@pytest.mark.parametrize("config", ["benchmark_sam.yaml", "benchmark_sam2.yaml", "user_clicks.yaml"])
def test_configs_parse(tmp_path, config):
    c = cli(f"configs/interactive/{config}", tmp_path)
    assert isinstance(c.model, InteractiveBenchmark) and isinstance(c.datamodule, InteractiveDataModule)
    assert c.trainer.logger is None


def test_classical_predictor_on_bundled_grabcut(tmp_path):
    c = cli("configs/interactive/grabcut_classical.yaml", tmp_path, "--model.init_args.max_clicks", "3")
    assert c.model.predictor_name == "grabcut" and c.datamodule.datasets == ["GrabCut"]
    c.trainer.test(c.model, datamodule=c.datamodule)
    (row,) = c.model.evaluation_rows
    assert row["n_instances"] == 4
    # The metric path (NoCMetric) and the per-click rows agree.
    curves = np.array([[r["iou"] for r in c.model.click_rows if r["image"] == stem]
                       for stem in ("106024", "153077", "227092", "teddy")])
    assert curves.shape == (4, 3)
    assert row["mIoU@1"] == pytest.approx(curves[:, 0].mean())
    nocs = [next((k + 1 for k in range(3) if curve[k] >= 0.9), 3) for curve in curves]
    assert row["NoC@90"] == pytest.approx(np.mean(nocs))
    assert row["NoF@90"] == sum(n == 3 for n in nocs)
    # The first click does not depend on the predictor: the DT centre of each object.
    from litseg.interactive.clicker import baseline_location, error_state
    from litseg.readers.ritm import load_sample, scan_dataset

    firsts = [(r["image"], r["click_y"], r["click_x"]) for r in c.model.click_rows if r["k"] == 1]
    want = []
    for record in scan_dataset(REPO / "sample_data", "GrabCut"):
        s = load_sample(record)
        gt = s["instances"][0]
        y, x = baseline_location(error_state(gt, np.zeros_like(gt), s["ignore"], np.ones_like(gt)))
        want.append((record.stem, y, x))
    assert firsts == want
    c.model.write_evaluation(tmp_path / "out")
    assert len(read_rows(tmp_path / "out" / "per_click.csv")) == 4 * 3


@pytest.mark.parametrize("factory", ["tests.tiny_models:tiny_sam_predictor", "tests.tiny_models:tiny_sam2_predictor"])
def test_tiny_sam_and_sam2_run_through_the_whole_benchmark(tmp_path, factory):
    c = cli("configs/interactive/grabcut_classical.yaml", tmp_path, "--model.init_args.max_clicks", "4",
            "--model.init_args.predictor", factory, "--data.init_args.max_images", "2")
    c.trainer.test(c.model, datamodule=c.datamodule)
    (row,) = c.model.evaluation_rows
    assert row["n_instances"] == 2 and row["predictor"] == factory
    assert c.model.predictor.threshold == 0.5  # SAM family
    ious = [r["iou"] for r in c.model.click_rows]
    assert len(ious) == 2 * 4 and all(0.0 <= v <= 1.0 for v in ious)
    assert row["mIoU@1"] == pytest.approx(np.mean([r["iou"] for r in c.model.click_rows if r["k"] == 1]))
    c.model.write_evaluation(tmp_path / "out")
    assert (tmp_path / "out" / "miou_vs_clicks.png").is_file()
