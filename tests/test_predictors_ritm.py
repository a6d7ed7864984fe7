"""RITM HRNet predictor: official checkpoint container, click maps, Zoom-In, previous mask, benchmark run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from litseg.interactive.predictors import build_predictor
from litseg.interactive.predictors.ritm import (
    NetClick,
    RITMClickPredictor,
    ZoomIn,
    object_roi,
    points_tensor,
)
from litseg.interactive.types import Click, InteractivePredictor
from litseg.io import DataError
from litseg.nets.hrnet_ritm import (
    RITM_HRNET_CLASS,
    RITM_PRESETS,
    RITMHRNetModel,
    click_maps,
    ritm_checkpoint,
    ritm_config,
)

REPO = Path(__file__).resolve().parents[1]
RITM = "litseg.interactive.predictors.ritm:RITMClickPredictor"
# The published HRNet-18s ITER-M architecture (coco_lvis_h18s_itermask.pth), randomly initialised.
H18S = RITM_PRESETS["hrnet18s_itermask"]
# The same architecture at width 6 (the HRNet width and OCR width are free parameters): the loop tests.
TINY = dict(H18S, width=6, ocr_width=8)


@pytest.fixture(scope="module")
def h18s_file(tmp_path_factory) -> tuple[Path, RITMHRNetModel]:
    torch.manual_seed(0)
    model = RITMHRNetModel(**H18S).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong load would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ritm") / "coco_lvis_h18s_itermask.pth"
    torch.save(ritm_checkpoint(model), path)
    return path, model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> tuple[Path, RITMHRNetModel]:
    torch.manual_seed(0)
    model = RITMHRNetModel(**TINY).eval()
    path = tmp_path_factory.mktemp("ritm_tiny") / "tiny_h6s_itermask.pth"
    torch.save(ritm_checkpoint(model), path)
    return path, model


def test_container_layout_and_official_names(h18s_file):
    path, model = h18s_file
    ckpt = torch.load(path, weights_only=True)  # plain dicts / str / numbers: loads weights-only
    assert set(ckpt) == {"config", "state_dict"}
    assert ckpt["config"]["class"] == RITM_HRNET_CLASS
    params = ckpt["config"]["params"]
    assert params["width"] == {"type": "builtin", "value": 18, "specified": True}
    assert params["norm_layer"]["type"] == "class"
    keys = list(ckpt["state_dict"])
    for name in ("maps_transform.0.weight", "maps_transform.2.weight", "maps_transform.3.scale",
                 "feature_extractor.conv1.weight", "feature_extractor.layer1.0.downsample.0.weight",
                 "feature_extractor.transition1.1.0.0.weight", "feature_extractor.stage4.1.fuse_layers.3.0.2.0.weight",
                 "feature_extractor.ocr_distri_head.object_context_block.f_pixel.1.0.running_var",
                 "feature_extractor.ocr_distri_head.conv_bn_dropout.1.0.weight",
                 "feature_extractor.aux_head.3.bias", "feature_extractor.cls_head.weight"):
        assert name in keys, name
    assert not any(k.startswith("feature_extractor.stage3.3.") for k in keys)  # small: 3 modules in stage 3
    # Parameter counts match the release file sizes (16.5 / 38.8 / 119 MB of float32).
    assert sum(p.numel() for p in model.parameters()) == 4_220_047


def test_loads_through_predictor_and_matches_the_saved_model(h18s_file):
    path, model = h18s_file
    pred = build_predictor(RITM, checkpoint=str(path), device="cpu", zoom_in=False, with_flip=False)
    assert isinstance(pred, InteractivePredictor) and pred.threshold == 0.49
    for (k, a), b in zip(model.state_dict().items(), pred.model.state_dict().values()):
        assert torch.equal(a, b), k
    x, pts = torch.rand(1, 4, 40, 56), torch.tensor([[[5.0, 7.0, 0.0], [-1, -1, -1]]])
    with torch.no_grad():
        assert torch.allclose(model(x, pts)["instances"], pred.model(x, pts)["instances"])


def test_wrong_family_and_missing_keys_name_the_file(tmp_path, h18s_file):
    sam = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16),
                "mask_decoder.iou_token.weight": torch.zeros(1, 4)}, sam)
    with pytest.raises(DataError, match=r"sam_vit_b\.pth: not an RITM checkpoint: no 'config'.*image_encoder"):
        RITMClickPredictor(checkpoint=str(sam))

    path, model = h18s_file
    deeplab = tmp_path / "deeplab.pth"
    torch.save({"config": {"class": "isegm.model.is_deeplab_model.DeeplabModel", "params": {}},
                "state_dict": {}}, deeplab)
    with pytest.raises(DataError, match=r"deeplab\.pth: model class 'isegm\.model\.is_deeplab_model\.DeeplabModel'"):
        RITMClickPredictor(checkpoint=str(deeplab))

    sd = dict(model.state_dict())
    del sd["maps_transform.0.weight"], sd["feature_extractor.cls_head.bias"]
    broken = tmp_path / "broken.pth"
    torch.save({"config": ritm_config(**H18S), "state_dict": sd}, broken)
    with pytest.raises(DataError, match=r"broken\.pth: .*2 missing, first \['maps_transform\.0\.weight', "
                                        r"'feature_extractor\.cls_head\.bias'\]"):
        RITMClickPredictor(checkpoint=str(broken))

    wrong_width = tmp_path / "h32_config.pth"  # HRNet-18s weights under an HRNet-32 config
    torch.save({"config": ritm_config(**RITM_PRESETS["hrnet32_itermask"]), "state_dict": model.state_dict()},
               wrong_width)
    with pytest.raises(DataError, match=r"h32_config\.pth: weights do not match RITM HRNetModel\(width=32"):
        RITMClickPredictor(checkpoint=str(wrong_width))

    with pytest.raises(DataError, match="checkpoint not found"):
        RITMClickPredictor(checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="f-BRS-B.*not implemented"):
        RITMClickPredictor(model=model, brs="f-BRS-B")


def test_click_maps_are_disks_of_norm_radius():
    pts = torch.tensor([[[10.0, 12.0, 0.0], [-1, -1, -1], [3.0, 3.0, 1.0], [-1, -1, -1]]])  # 1 pos, 1 neg
    maps = click_maps(pts, 32, 40, norm_radius=5, use_disks=True)
    assert maps.shape == (1, 2, 32, 40)
    assert maps[0, 0].sum() == 81  # integer points with dy^2 + dx^2 <= 25
    assert maps[0, 0, 10, 17] == 1 and maps[0, 0, 10, 18] == 0 and maps[0, 0, 14, 15] == 1 and maps[0, 0, 14, 16] == 0
    yy, xx = np.mgrid[:32, :40]
    assert np.array_equal(maps[0, 1].numpy(), ((yy - 3) ** 2 + (xx - 3) ** 2 <= 25).astype(np.float32))
    dist = click_maps(pts, 32, 40, norm_radius=5, use_disks=False)
    assert dist[0, 0, 10, 12] == 0 and dist[0, 0, 10, 17] == pytest.approx(np.tanh(2.0))
    # Padded points are ignored; positives and negatives padded to the same count.
    p = points_tensor([[NetClick(1.5, 2.0, True, 0), NetClick(4, 5, True, 1), NetClick(6, 7, False, 2)]])
    assert p.tolist() == [[[1.5, 2.0, 0], [4, 5, 1], [6, 7, 2], [-1, -1, -1]]]


def test_zoom_in_crop_hand_made():
    zoom = ZoomIn(target_size=100, skip_clicks=1, expansion_ratio=1.4, min_crop_size=20)
    image = torch.arange(300 * 400, dtype=torch.float32).view(1, 1, 300, 400)
    first = [Click(150, 200, True, 0)]
    out, net = zoom.transform(image, first)  # the first click is skipped: full image
    assert out is image and net[0].y == 150 and zoom.roi is None
    prev = torch.zeros(1, 1, 300, 400)
    prev[0, 0, 100:150, 200:300] = 0.9  # rows 100..149, cols 200..299
    zoom.inv_transform(prev)
    clicks = first + [Click(120, 250, False, 1)]
    crop, net = zoom.transform(image, clicks)
    # bbox rows 100..150 (the positive click at row 150 extends it), cols 200..299; x1.4 around the centre
    # (Python's round half to even, as upstream: 179.5 -> 180, 319.5 -> 320).
    assert zoom.roi == (89, 161, 180, 320)
    assert crop.shape == (1, 1, 52, 100)  # longer side = target_size; 73 * 100 / 141 = 51.8
    assert crop[0, 0, 0, 0] == image[0, 0, 89, 180] and crop[0, 0, -1, -1] == image[0, 0, 161, 320]
    assert net[1].y == pytest.approx(52 * (120 - 89) / 73) and net[1].x == pytest.approx(100 * (250 - 180) / 141)
    back = zoom.inv_transform(torch.ones(1, 1, 52, 100))
    assert back.shape == (1, 1, 300, 400) and back.sum() == 73 * 141  # pasted into zeros
    # Min crop size and clamping to the image.
    assert object_roi(np.pad(np.ones((2, 2), bool), ((0, 8), (0, 8))), [], 1.4, 6) == (0, 4, 0, 4)
    # skip_clicks=-1 crops from the first click (the whole image, resized).
    z = ZoomIn(target_size=100, skip_clicks=-1)
    crop, _ = z.transform(image, first)
    assert z.roi == (0, 299, 0, 399) and crop.shape == (1, 1, 75, 100)


def test_previous_mask_is_fed_back_and_reset(tiny_file, monkeypatch):
    _, model = tiny_file
    pred = RITMClickPredictor(model=model, zoom_in=False, with_flip=True)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, p: seen.append((x.clone(), p.clone())) or forward(x, p))
    rng = np.random.default_rng(0)
    pred.set_image(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8))
    p1 = pred.predict([Click(10, 12, True, 0)])
    p2 = pred.predict([Click(10, 12, True, 0), Click(30, 40, False, 1)])
    x1, pts1 = seen[0]
    assert x1.shape == (2, 4, 36, 44) and x1[:, 3].abs().sum() == 0  # first click: zeros
    assert pts1[1, 0].tolist() == [10, 44 - 12 - 1, 0]  # the flipped copy
    x2, _ = seen[1]
    assert torch.allclose(x2[0, 3], torch.from_numpy(p1)) and torch.allclose(x2[1, 3], torch.from_numpy(p1).flip(1))
    assert p2.shape == (36, 44) and p2.dtype == np.float32
    pred.reset()
    pred.predict([Click(10, 12, True, 0)])
    assert seen[2][0][:, 3].abs().sum() == 0


def test_whole_benchmark_on_grabcut_sample(tiny_file, tmp_path):
    from datamodules.interactive import InteractiveDataModule
    from lit_modules.interactive import InteractiveBenchmark

    path, _ = tiny_file
    torch.manual_seed(0)
    module = InteractiveBenchmark(predictor=RITM, max_clicks=2, predictor_args={
        "checkpoint": str(path), "device": "auto", "zoom_in": {"target_size": 64, "skip_clicks": -1}})
    dm = InteractiveDataModule(root=str(REPO / "sample_data"), datasets=["GrabCut"], num_workers=0)
    Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(tmp_path)).test(module, datamodule=dm)
    (row,) = module.evaluation_rows
    assert row["dataset"] == "GrabCut" and row["n_instances"] == 4
    curve = module.miou_curves["GrabCut"]
    assert len(curve) == 2 and all(np.isfinite(curve)) and all(0 <= v <= 1 for v in curve)
    module.write_evaluation(tmp_path / "out")
    assert (tmp_path / "out" / "per_click.csv").is_file()
