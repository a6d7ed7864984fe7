"""RClicks clickability network: shapes, normalisation, click fusion; training on synthetic clicks."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from datamodules.rclicks import ClickMapDataModule
from lit_modules.rclicks import ClickabilityModel
from litseg.io import DataError, DataProblems, markdown_table, write_png
from litseg.nets.rclicks import ClickabilityNet, ScaleLayer, load_clickability_net, minmax_normalize
from litseg.rclicks.maps import Letterbox, gt_click_map
from litseg.rclicks.synthetic_clicks import CSV_NAME, PREVIOUS_MASKS, synthesize
from litseg.rclicks.user_clicks import COLUMNS, read_user_clicks
from tests.fakes import write_ritm


def _inputs(batch: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=g)
    clicks = (torch.rand(batch, 2, size, size, generator=g) > 0.5).float()
    return image, clicks


def test_scale_layer_and_minmax():
    layer = ScaleLayer(0.05)
    assert layer.scale.item() == pytest.approx(0.05)
    with torch.no_grad():
        layer.scale.fill_(-2.0)
    assert torch.equal(layer(torch.ones(3)), torch.full((3,), 2.0))  # x * |s|
    x = torch.tensor([[[1.0, 3.0, 5.0]], [[-2.0, -2.0, 0.0]]])
    out = minmax_normalize(x)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5, 1.0]], [[0.0, 0.0, 1.0]]]))


@pytest.mark.parametrize("fusion", ["stem", "early"])
def test_output_shape_range_and_determinism(fusion):
    torch.manual_seed(0)
    net = ClickabilityNet("resnet18", fusion=fusion, decoder_channels=16).eval()
    image, clicks = _inputs()
    out = net(image, clicks)
    assert out.shape == (2, 1, 64, 64)
    for sample in out:  # per-sample min-max: exactly 0 and (1 - 1e-9-ish) at the extremes, no sigmoid
        assert sample.min().item() == 0.0
        assert sample.max().item() == pytest.approx(1.0, abs=1e-6)
    torch.manual_seed(0)
    again = ClickabilityNet("resnet18", fusion=fusion, decoder_channels=16).eval()
    torch.testing.assert_close(again(image, clicks), out)
    # odd input sizes work too (the click branch is resized onto the stem grid)
    assert net(torch.randn(1, 3, 50, 70), torch.rand(1, 2, 50, 70)).shape == (1, 1, 50, 70)


def test_stem_fusion_adds_click_features_at_quarter_resolution():
    net = ClickabilityNet("resnet18", fusion="stem", decoder_channels=16).eval()
    assert net.stem_end == "maxpool"  # ResNet stem: conv1-bn-act-maxpool, 64 channels at 1/4
    encoder = net.click_encoder
    assert [type(m).__name__ for m in encoder] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d", "ScaleLayer"]
    assert (encoder[0].in_channels, encoder[0].out_channels, encoder[0].kernel_size) == (2, 16, (1, 1))
    assert (encoder[2].stride, encoder[4].stride, encoder[4].out_channels) == ((2, 2), (2, 2), 64)
    assert encoder[-1].scale.item() == pytest.approx(0.05)
    seen = {}

    def record(key):
        def hook(module, inputs, output):
            seen[key] = tuple(output.shape)  # returns None: the output is left unchanged
        return hook

    handles = [encoder.register_forward_hook(record("clicks")),
               net.backbone["maxpool"].register_forward_hook(record("stem"))]
    image, clicks = _inputs(batch=1)
    net(image, clicks)
    assert seen["clicks"] == seen["stem"] == (1, 64, 16, 16)
    for handle in handles:
        handle.remove()
    # the click maps change the prediction; with a zero scale they cannot
    other = net(image, 1 - clicks)
    assert not torch.allclose(net(image, clicks), other)
    with torch.no_grad():
        encoder[-1].scale.zero_()
    torch.testing.assert_close(net(image, clicks), net(image, 1 - clicks))


def test_early_fusion_takes_five_input_channels_and_other_backbones_work():
    early = ClickabilityNet("resnet18", fusion="early", decoder_channels=16)
    assert early.click_encoder is None
    assert early.backbone["conv1"].in_channels == 5
    convnext = ClickabilityNet("convnext_atto", decoder_channels=16).eval()
    assert convnext.stem_end == "stem_1"  # after the patchify conv's norm, like MSCAN's stem
    assert convnext(*_inputs(batch=1)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="fusion"):
        ClickabilityNet("resnet18", fusion="late")


def test_gradients_reach_the_click_branch():
    net = ClickabilityNet("resnet18", decoder_channels=16)
    image, clicks = _inputs()
    net(image, clicks).mean().backward()  # min-max keeps the graph (no detach)
    assert net.click_encoder[0].weight.grad is not None
    assert net.click_encoder[-1].scale.grad is not None
    with pytest.raises(ValueError, match="B x 2"):
        net(image, clicks[:, :1])


# ----------------------------------------------------------------------------- data + training

SIZE = 64


def make_ellipse_dataset(root: Path, n: int = 16, size: int = SIZE, seed: int = 0) -> None:
    """GrabCut-layout images (noise + one bright ellipse) and 0/255 masks."""
    rng = np.random.default_rng(seed)
    images, masks = {}, {}
    for i in range(n):
        img = (rng.random((size, size, 3)) * 80 + 40).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        cx, cy = rng.integers(18, size - 18, 2)
        ax, ay = rng.integers(8, 16, 2)
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.integers(0, 180)), 0, 360, 255, -1)
        colour = rng.integers(150, 255, 3)
        img[mask > 0] = (0.7 * colour + 0.3 * img[mask > 0]).astype(np.uint8)
        images[f"img{i:02d}"], masks[f"img{i:02d}"] = img, mask
    write_ritm(root, "GrabCut", masks, images=images, image_ext=".png", mask_ext=".png")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clickability")
    make_ellipse_dataset(base / "data")
    counts = synthesize(base / "data", "GrabCut", base / "clicks", clicks_per_stem=12, jitter=0.08, seed=0)
    assert counts == {"images": 16, "first": 16, "fn": 16, "fp": 16, "clicks": 576, "skipped": 0}
    return {"root": base / "data", "clicks": base / "clicks"}


def datamodule(synthetic, **overrides) -> ClickMapDataModule:
    c = synthetic["clicks"]
    args = dict(root=str(synthetic["root"]), clicks=str(c / CSV_NAME), dataset="GrabCut",
                previous_masks=str(c / PREVIOUS_MASKS), train_list=str(c / "synthetic_train.txt"),
                val_list=str(c / "synthetic_val.txt"), sigma=60.0, input_size=SIZE, batch_size=8)
    return ClickMapDataModule(**(args | overrides))


def test_synthetic_clicks_follow_the_rclicks_schema(synthetic):
    c = synthetic["clicks"]
    with open(c / CSV_NAME, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == COLUMNS
    clicks = read_user_clicks(c / CSV_NAME)  # the real-click reader accepts them
    assert {k.click_type for k in clicks} == {"first", "fn", "fp"}
    assert {k.model_type for k in clicks if k.click_type != "first"} == {"synthetic"}
    first = [k for k in clicks if k.full_stem == "img00"]
    assert len(first) == 12 and all(k.w == k.h == SIZE for k in first)
    assert (c / PREVIOUS_MASKS / "img00_synthetic_fn_pc_0.png").is_file()
    train = (c / "synthetic_train.txt").read_text().split()
    val = (c / "synthetic_val.txt").read_text().split()
    assert len(train) == 12 and len(val) == 4 and not set(train) & set(val)
    # first clicks land on the object
    mask = cv2.imread(str(synthetic["root"] / "GrabCut" / "boundary_GT" / "img00.png"), cv2.IMREAD_GRAYSCALE)
    assert all(mask[k.y, k.x] == 255 for k in first)


def test_datamodule_samples_split_and_targets(synthetic):
    dm = datamodule(synthetic)
    dm.setup("fit")
    assert len(dm.train_set) == 36 and len(dm.val_set) == 12  # 12 / 4 images x first, fn, fp
    val_stems = set((synthetic["clicks"] / "synthetic_val.txt").read_text().split())
    assert {t.record.stem for t in dm.val_set.tasks} == val_stems
    item = dm.train_set[0]
    assert item["image"].shape == (3, SIZE, SIZE)
    assert item["click_maps"].shape == (2, SIZE, SIZE) and item["target"].shape == (1, SIZE, SIZE)
    # the target is the letterboxed GT map of note 1.5 built from the task's clicks
    task = dm.train_set.tasks[0]
    assert task.click_type == "first"
    xy = np.array([(k.x, k.y) for k in task.clicks])
    gt = item["click_maps"][0].numpy() > 0.5
    expected = Letterbox.fit(SIZE, SIZE, SIZE).mask(gt_click_map(xy, gt.astype(np.float32), 60.0))
    np.testing.assert_allclose(item["target"][0].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(item["click_maps"][0], item["click_maps"][1])  # first click: error = gt
    dm.setup("test")
    test_item = dm.test_set[0]
    assert {"gt", "error", "clicks_xy", "letterbox"} <= set(test_item)
    assert {t.record.stem for t in dm.test_set.tasks} == val_stems  # the training dataset is tested on val


def test_joint_flip_is_seeded_per_sample(synthetic):
    dm = datamodule(synthetic, flip_p=1.0)
    dm.setup("fit")

    class FakeTrainer:  # what the datamodule reads: training state and the process layout
        training = True
        current_epoch = 0
        world_size, global_rank = 1, 0

    dm.trainer = FakeTrainer()
    batch = next(iter(dm.train_dataloader()))
    original = {k: batch[k].clone() for k in ("image", "click_maps", "target")}
    flipped = dm.on_after_batch_transfer(batch, 0)
    for key, value in original.items():
        torch.testing.assert_close(flipped[key], value.flip(-1))
    dm.flip_p = 0.5
    a = dm.on_after_batch_transfer({k: v.clone() for k, v in original.items()} | {"full_stem": batch["full_stem"]}, 0)
    b = dm.on_after_batch_transfer({k: v.clone() for k, v in original.items()} | {"full_stem": batch["full_stem"]}, 0)
    torch.testing.assert_close(a["image"], b["image"])  # same (seed, epoch, stem) -> same decision


def _rewrite_csv(src: Path, dst: Path, edit) -> Path:
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = edit(rows)
    with open(dst, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_datamodule_rejects_bad_clicks_and_masks(synthetic, tmp_path):
    src = synthetic["clicks"] / CSV_NAME
    missing = _rewrite_csv(src, tmp_path / "missing.csv", lambda rows: [{k: v for k, v in r.items() if k != "w"}
                                                                        for r in rows])
    with pytest.raises(DataError, match=r"missing\.csv.*missing column"):
        datamodule(synthetic, clicks=str(missing)).setup("fit")

    def unknown_image(rows):
        rows[5] |= {"image_stem": "nope", "full_stem": "nope"}
        return rows

    bad = _rewrite_csv(src, tmp_path / "unknown.csv", unknown_image)
    with pytest.raises(DataError, match=r"unknown\.csv: line 7: image 'nope' not found"):
        datamodule(synthetic, clicks=str(bad)).setup("fit")

    def outside(rows):  # frame says 64x32, image is 64x64: another image's click
        rows[0] |= {"h": "32", "y": "3"}
        return rows

    bad = _rewrite_csv(src, tmp_path / "outside.csv", outside)
    with pytest.raises(DataError, match=r"outside\.csv: line 2: click frame 64x32 does not match"):
        datamodule(synthetic, clicks=str(bad)).setup("fit")  # found before the first step

    masks = tmp_path / "prev"
    masks.mkdir()
    for png in (synthetic["clicks"] / PREVIOUS_MASKS).iterdir():
        write_png(masks / png.name, np.zeros((10, 12), np.uint8))  # wrong size
    with pytest.raises(DataError, match=r"prev/.*_fn_pc_0\.png: size 12x10 matches neither"):
        datamodule(synthetic, previous_masks=str(masks)).setup("fit")
    with pytest.raises(DataError, match=r"_fn_pc_0\.png: previous mask of full_stem"):
        datamodule(synthetic, previous_masks=str(tmp_path)).setup("fit")


def test_setup_reports_a_wrong_size_previous_mask_and_a_wrong_click_frame_together(synthetic, tmp_path):
    src = synthetic["clicks"] / CSV_NAME
    bad = _rewrite_csv(src, tmp_path / "both.csv", lambda rows: [rows[0] | {"h": "32", "y": "3"}, *rows[1:]])
    fn = next(k for k in read_user_clicks(bad) if k.click_type == "fn")
    masks = tmp_path / "prev"
    shutil.copytree(synthetic["clicks"] / PREVIOUS_MASKS, masks)
    wrong = masks / f"{fn.full_stem}.png"
    write_png(wrong, np.zeros((10, 12), np.uint8))
    with pytest.raises(DataProblems) as err:
        datamodule(synthetic, clicks=str(bad), previous_masks=str(masks)).setup("fit")
    assert str(err.value).startswith(f"{synthetic['root']}: 2 data problems (both.csv full_stems of stage fit, "
                                     "checked before the first step):\n")
    mask_problem = (f"{wrong}: size 12x10 matches neither the image (64x64) nor the clicks' frame (64x64) "
                    f"of full_stem '{fn.full_stem}' (both.csv line {fn.line})")
    frame_problem = f"{bad}: line 2: click frame 64x32 does not match the image size 64x64"
    assert sorted(str(p) for p in err.value.problems) == sorted([mask_problem, frame_problem])

    # read time keeps the same check as a safety net: a mask broken after setup passed
    shutil.copy(synthetic["clicks"] / PREVIOUS_MASKS / wrong.name, wrong)
    dm = datamodule(synthetic, previous_masks=str(masks))
    dm.setup("fit")
    write_png(wrong, np.zeros((10, 12), np.uint8))
    split, index = next((split, i) for split in (dm.train_set, dm.val_set)
                        for i, t in enumerate(split.tasks) if t.full_stem == fn.full_stem)
    with pytest.raises(DataError) as err:
        split[index]
    assert str(err.value) == mask_problem.replace("both.csv", CSV_NAME)


def test_short_training_lowers_validation_kl_and_checkpoint_reloads(synthetic, tmp_path):
    seed_everything(0)
    dm = datamodule(synthetic)
    model = ClickabilityModel(decoder_channels=32, eval_draws=5)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert after["val/KLD"] < 0.85 * before["val/KLD"]  # 3.52 -> 2.67 with this seed
    assert after["val/SIM"] > before["val/SIM"]
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    net = load_clickability_net(ckpt)
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(batch["image"], batch["click_maps"]),
                                   model(batch["image"], batch["click_maps"]))


def test_trained_model_beats_the_uniform_baseline_on_nss(synthetic, tmp_path):
    # ~25 epochs on 36 synthetic full_stems (about 1.5 min on 2 CPU cores). README's clickability table is
    # this test's printout: `pytest tests/test_clickability_model.py -k beats_the_uniform -s` (2 torch threads:
    # float sums, hence the trained model, depend on the thread count).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seed_everything(0)
    dm = datamodule(synthetic)
    model = ClickabilityModel(decoder_channels=32, eval_draws=10)
    trainer = Trainer(accelerator="cpu", max_epochs=25, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    try:
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    finally:
        torch.set_num_threads(threads)
    print("val", {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
    print(markdown_table(model.evaluation_rows, "{:.4g}"))
    table = {r["model"]: r for r in model.evaluation_rows}
    assert set(table) == {"Ours", "UD", "DT"} and table["Ours"]["full_stems"] == 12
    assert table["Ours"]["NSS"] > table["UD"]["NSS"]
    model.write_evaluation(tmp_path / "eval")
    assert (tmp_path / "eval" / "results.md").read_text().count("| GrabCut |") == 3


def test_demo_recipe_trains_and_keeps_the_best_val_sim_checkpoint(tmp_path):
    from litseg.cli import LitSegCLI

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "synthetic"
    synthesize(repo / "sample_data", "GrabCut", out, clicks_per_stem=5, subsequent=False)  # first clicks only
    cli = LitSegCLI(run=False, args=[
        "--config", str(repo / "configs/rclicks/train_clickability.yaml"),
        "--data.init_args.clicks", str(out / CSV_NAME),
        "--data.init_args.previous_masks", str(out / PREVIOUS_MASKS),
        "--data.init_args.train_list", str(out / "synthetic_train.txt"),
        "--data.init_args.val_list", str(out / "synthetic_val.txt"),
        "--data.init_args.input_size", "64", "--model.init_args.decoder_channels", "16",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
    ])
    assert cli.model.hparams.optimizer["class_path"] == "torch.optim.Adam" and cli.model.hparams.lr == 0.01
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/SIM" and checkpoint.mode == "max"
    assert Path(checkpoint.best_model_path).is_file()
    assert {"val/KLD", "val/CC", "val/SIM"} <= set(cli.trainer.callback_metrics)
