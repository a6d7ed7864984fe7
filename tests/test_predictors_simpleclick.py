"""SimpleClick / CFR-ICL: a tiny random PlainVitModel saved in the official isegm container and key
layout loads through the predictor and runs the whole benchmark on the bundled GrabCut sample;
wrong-family / incomplete / unsafe files stop with messages naming the file."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from litseg.interactive.predictors.simpleclick import SimpleClickPredictor
from litseg.interactive.types import Click
from litseg.io import DataError
from litseg.nets.simpleclick import (
    PlainVitModel,
    VisionTransformer,
    build_simpleclick,
    click_disk_maps,
    official_config,
)

REPO = Path(__file__).resolve().parents[1]
PREDICTOR = "litseg.interactive.predictors.simpleclick:SimpleClickPredictor"

# The published architecture, small: ViT (embed 32, depth 4, 2 heads, patch 16) at 64 px.
TINY_BACKBONE = dict(img_size=(64, 64), patch_size=(16, 16), in_chans=3, embed_dim=32, depth=4, num_heads=2,
                     mlp_ratio=4, qkv_bias=True)
TINY_NECK = dict(in_dim=32, out_dims=[8, 16, 32, 64])
TINY_HEAD = dict(in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3], channels=16, dropout_ratio=0.1, num_classes=1,
                 align_corners=False, upsample="x1")
LOSS_MODULE = "isegm.model.modeling.transformer_helper.cross_entropy_loss"


def tiny_model(seed: int = 0) -> PlainVitModel:
    torch.manual_seed(seed)
    return PlainVitModel(TINY_BACKBONE, TINY_NECK, TINY_HEAD, with_prev_mask=True, use_disks=True, norm_radius=5)


def fake_isegm_loss(monkeypatch) -> object:
    """An instance of a class pickled as isegm's ``CrossEntropyLoss``, like the official files'
    ``head_params['loss_decode']``; the fake modules are gone again when the file is read."""
    parts = LOSS_MODULE.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    module = sys.modules[LOSS_MODULE]

    def binary_cross_entropy(*args):  # pragma: no cover - never called
        raise AssertionError

    binary_cross_entropy.__module__ = LOSS_MODULE
    binary_cross_entropy.__qualname__ = "binary_cross_entropy"
    module.binary_cross_entropy = binary_cross_entropy

    class CrossEntropyLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.use_sigmoid, self.loss_weight, self.cls_criterion = False, 1.0, binary_cross_entropy

    CrossEntropyLoss.__module__ = LOSS_MODULE
    CrossEntropyLoss.__qualname__ = "CrossEntropyLoss"
    module.CrossEntropyLoss = CrossEntropyLoss
    return CrossEntropyLoss()


def save_official(path: Path, model: PlainVitModel, monkeypatch=None, cls: str | None = None,
                  drop: tuple[str, ...] = ()) -> Path:
    head = dict(TINY_HEAD)
    if monkeypatch is None:
        return _save(path, model, head, cls, drop)
    with monkeypatch.context() as m:  # the fake isegm modules exist only while saving
        head["loss_decode"] = fake_isegm_loss(m)
        return _save(path, model, head, cls, drop)


def _save(path: Path, model: PlainVitModel, head: dict, cls: str | None, drop: tuple[str, ...]) -> Path:
    config = official_config(TINY_BACKBONE, TINY_NECK, head, **({"cls": cls} if cls else {}))
    state = {k: v for k, v in model.state_dict().items() if k not in drop}
    torch.save({"state_dict": state, "config": config}, path)
    return path


@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> Path:
    mp = pytest.MonkeyPatch()
    try:
        return save_official(tmp_path_factory.mktemp("sc") / "cocolvis_vit_tiny.pth", tiny_model(), mp)
    finally:
        mp.undo()


# ----------------------------------------------------------------------------- loading


def test_official_container_loads_strictly_with_the_same_weights(official_file):
    assert "isegm" not in sys.modules  # the loss object's class cannot be imported: placeholders only
    with pytest.raises(Exception):
        torch.load(official_file, weights_only=True)  # what plain weights_only says about the real files
    model = build_simpleclick(official_file)
    ref = tiny_model()
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())
    keys = set(model.state_dict())
    # The official key layout (a few representative names).
    for k in ("patch_embed_coords.proj.weight", "backbone.patch_embed.proj.weight", "backbone.pos_embed",
              "backbone.cls_token", "backbone.blocks.3.attn.qkv.bias", "backbone.blocks.0.mlp.fc2.weight",
              "backbone.fc_norm.weight", "backbone.head.weight", "neck.down_4.0.weight", "neck.down_32.3.bias",
              "head.convs.3.conv.weight", "head.fusion_conv.conv.bias", "head.up_conv2.3.weight",
              "head.conv_seg.weight"):
        assert k in keys, k
    assert model.patch_embed_coords.proj.in_channels == 3  # prev mask + positive + negative disks


def test_wrong_family_and_missing_keys_name_the_file(tmp_path):
    ritm = save_official(tmp_path / "coco_lvis_h18_itermask.pth", tiny_model(),
                         cls="isegm.model.is_hrnet_model.HRNetModel")
    with pytest.raises(DataError, match=r"coco_lvis_h18_itermask\.pth: .*HRNetModel.*not a SimpleClick"):
        SimpleClickPredictor(checkpoint=str(ritm))
    sam = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, sam)
    with pytest.raises(DataError, match=r"sam_vit_b\.pth: not an isegm"):
        SimpleClickPredictor(checkpoint=str(sam))
    cut = save_official(tmp_path / "cut.pth", tiny_model(),
                        drop=("backbone.blocks.1.attn.qkv.weight", "head.conv_seg.bias"))
    with pytest.raises(DataError, match=r"cut\.pth: weights do not match the model: missing "
                                        r"\['backbone\.blocks\.1\.attn\.qkv\.weight', 'head\.conv_seg\.bias'\]"):
        SimpleClickPredictor(checkpoint=str(cut))
    with pytest.raises(DataError, match=r"missing\.pth: checkpoint not found"):
        SimpleClickPredictor(checkpoint=str(tmp_path / "missing.pth"))


class Payload:  # a global outside the isegm config objects
    pass


def test_foreign_pickled_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_model().state_dict(), "config": {"class": "x", "params": {}, "p": Payload()}},
               path)
    with pytest.raises(DataError, match=r"evil\.pth: refusing to unpickle .*test_predictors_simpleclick\.Payload"):
        build_simpleclick(path)


# ----------------------------------------------------------------------------- pieces


def test_disk_maps_and_window_layout():
    pts = torch.tensor([[[5.0, 5.0, 0], [-1, -1, -1], [1.0, 8.0, 1], [-1, -1, -1]]])  # 2 pos slots, 2 neg
    maps = click_disk_maps(pts, 12, 12, radius=2)
    assert maps.shape == (1, 2, 12, 12)
    assert maps[0, 0].sum() == 13 and maps[0, 0, 5, 5] == 1 and maps[0, 0, 5, 7] == 1 and maps[0, 0, 6, 7] == 0
    assert maps[0, 1, 1, 8] == 1 and maps[0, 1, 5, 5] == 0  # negative channel second, padding ignored
    # 448 px at patch 16: a 28x28 grid in 2x2 windows of 14x14 tokens (224 px).
    vit = VisionTransformer(img_size=(448, 448), patch_size=(16, 16), embed_dim=8, depth=4, num_heads=2)
    tokens = torch.arange(28 * 28, dtype=torch.float32).view(1, -1, 1)
    windows = vit.patchify(tokens)
    assert windows.shape == (4, 196, 1)
    assert windows[1, :14, 0].tolist() == list(range(14, 28))  # window 1 = top-right 14x14 block
    assert torch.equal(vit.unpatchify(windows), tokens)


def test_pos_embed_interpolation_keeps_shapes(official_file):
    predictor = SimpleClickPredictor(checkpoint=str(official_file), input_size=96)
    backbone = predictor.model.backbone
    assert predictor.input_size == (96, 96)
    assert backbone.pos_embed.shape == (1, 6 * 6 + 1, 32) and backbone.patch_embed.grid_size == (6, 6)
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    predictor.set_image(image)
    probs = predictor.predict([Click(20, 30, True, 0)])
    assert probs.shape == (50, 70) and np.isfinite(probs).all()
    probs2 = predictor.predict([Click(20, 30, True, 0), Click(5, 5, False, 1)])
    assert probs2.shape == (50, 70)
    # Without Zoom-In the whole image is stretched to the network size at every click.
    flat = SimpleClickPredictor(checkpoint=str(official_file), zoom_in=False, with_flip=False, input_size=64)
    flat.set_image(image)
    assert flat.predict([Click(20, 30, True, 0)]).shape == (50, 70)


# ----------------------------------------------------------------------------- whole benchmark


def test_tiny_simpleclick_runs_the_whole_benchmark_on_grabcut(tmp_path, official_file):
    from lit_modules.interactive import InteractiveBenchmark
    from litseg.cli import LitSegCLI

    c = LitSegCLI(args=["--config", str(REPO / "configs/interactive/benchmark_simpleclick.yaml"),
                        "--trainer.default_root_dir", str(tmp_path),
                        "--model.init_args.predictor_args.checkpoint", str(official_file),
                        "--model.init_args.predictor_args.input_size", "64",
                        "--model.init_args.max_clicks", "3",
                        "--data.init_args.root", str(REPO / "sample_data"),
                        "--data.init_args.datasets", "[GrabCut]",
                        "--data.init_args.max_images", "2",
                        "--data.init_args.num_workers", "0"], run=False)
    assert isinstance(c.model, InteractiveBenchmark) and c.model.predictor_name == "simpleclick"
    c.trainer.test(c.model, datamodule=c.datamodule)
    predictor = c.model.predictor
    assert isinstance(predictor, SimpleClickPredictor) and predictor.threshold == 0.49
    (row,) = c.model.evaluation_rows
    assert row["n_instances"] == 2
    ious = [r["iou"] for r in c.model.click_rows]
    assert len(ious) == 2 * 3 and all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in ious)
    assert predictor.zoom_in is not None and predictor.zoom_in.roi is not None  # Zoom-In was active
