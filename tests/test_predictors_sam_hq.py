"""SAM-HQ and MobileSAM click predictors: random models saved in the official checkpoint layout
load through the predictors and run the whole benchmark on the bundled GrabCut sample; wrong
families and missing keys stop with the file and the first missing keys; upstream parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything_hq import SamPredictor as HQSamPredictor
from segment_anything_hq import sam_model_registry as hq_model_registry

from lit_modules.interactive import InteractiveBenchmark
from litseg.interactive.predictors.sam_hq import (
    MobileSamClickPredictor,
    SamHQClickPredictor,
    build_mobile_sam,
    mobile_sam,
    tiny_sam_hq,
)
from litseg.interactive.types import Click
from litseg.io import DataError
from litseg.nets.sam import tiny_sam

REPO = Path(__file__).resolve().parents[1]
HQ_ONLY = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
CLICKS = [Click(40, 50, True, 0), Click(10, 15, False, 1), Click(60, 70, True, 2)]


# Factories named by import string in the benchmark config (the file is in the official layout:
# a plain state dict with image_encoder.* / prompt_encoder.* / mask_decoder.* keys).
def sam_hq_from_file(checkpoint: str, **kwargs) -> SamHQClickPredictor:
    return SamHQClickPredictor(checkpoint=checkpoint, model=tiny_sam_hq(seed=1), **kwargs)


def mobile_sam_from_file(checkpoint: str, **kwargs) -> MobileSamClickPredictor:
    # The published MobileSAM at a 128-px input: the same parameter shapes as the 1024-px model.
    return MobileSamClickPredictor(checkpoint=checkpoint, model=mobile_sam(128, seed=1), **kwargs)


@pytest.fixture(scope="module")
def hq_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "sam_hq_vit_b.pth"
    torch.save(tiny_sam_hq(seed=0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def mobile_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "mobile_sam.pt"
    torch.save(mobile_sam(1024, seed=0).state_dict(), path)  # the published architecture, 1024 px
    return path


def cli(config: str, tmp_path: Path, *extra: str):
    from litseg.cli import LitSegCLI

    return LitSegCLI(args=["--config", str(REPO / config), "--trainer.default_root_dir", str(tmp_path), *extra],
                     run=False)


def holds_file_weights(model: torch.nn.Module, path: Path) -> bool:
    sa, sb = model.state_dict(), torch.load(path, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k]) for k in sa)


def count_encodes(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# ----------------------------------------------------------------------------- whole benchmark


@pytest.mark.parametrize("family", ["sam_hq", "mobile_sam"])
def test_checkpoint_runs_the_whole_benchmark_on_bundled_grabcut(tmp_path, family, hq_file, mobile_file):
    factory, path = {"sam_hq": ("sam_hq_from_file", hq_file), "mobile_sam": ("mobile_sam_from_file", mobile_file)}[
        family]
    factory = f"tests.test_predictors_sam_hq:{factory}"
    c = cli("configs/interactive/grabcut_classical.yaml", tmp_path, "--model.init_args.max_clicks", "3",
            "--model.init_args.predictor", factory,
            "--model.init_args.predictor_args", f'{{"checkpoint": "{path}"}}', "--data.init_args.max_images", "2")
    c.trainer.test(c.model, datamodule=c.datamodule)
    predictor = c.model.predictor
    assert holds_file_weights(predictor.model, path)  # the file, not the seed-1 init, is what runs
    assert predictor.threshold == 0.5
    (row,) = c.model.evaluation_rows
    assert row["n_instances"] == 2 and row["predictor"] == factory
    ious = [r["iou"] for r in c.model.click_rows]
    assert len(ious) == 2 * 3 and all(0.0 <= v <= 1.0 for v in ious)
    assert row["mIoU@1"] == pytest.approx(np.mean([r["iou"] for r in c.model.click_rows if r["k"] == 1]))


@pytest.mark.parametrize("config,name", [("benchmark_sam_hq.yaml", "sam_hq"),
                                         ("benchmark_mobile_sam.yaml", "mobile_sam")])
def test_recipes_parse(tmp_path, config, name):
    c = cli(f"configs/interactive/{config}", tmp_path)
    assert isinstance(c.model, InteractiveBenchmark) and c.model.predictor_name == name
    assert c.model.predictor_args["device"] == "auto" and c.model.max_clicks == 20


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("family", ["sam_hq", "mobile_sam"])
def test_image_encoded_once_per_image_and_probabilities_out(family):
    predictor = (SamHQClickPredictor(model=tiny_sam_hq()) if family == "sam_hq"
                 else MobileSamClickPredictor(model=mobile_sam(128, seed=0)))
    calls = count_encodes(predictor.model)
    image = (np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    for _ in range(2):  # two instances of the same image
        predictor.reset()
        for k in range(1, 4):
            probs = predictor.predict(CLICKS[:k])
            assert probs.shape == (80, 100) and probs.dtype == np.float32
            assert predictor._prev_low_res is not None and predictor._prev_low_res.shape[1] == 1
    assert calls[0] == 1


def test_hq_output_matches_the_upstream_predictor_and_hq_token_only_switches_it():
    model = tiny_sam_hq()
    image = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    upstream = HQSamPredictor(model)
    upstream.set_image(image)
    outs = {}
    for hq_only in (False, True):
        ours = SamHQClickPredictor(model=model, hq_token_only=hq_only)
        ours.set_image(image)
        probs = ours.predict(CLICKS[:1])
        logits, _, low_res = upstream.predict(np.array([[50.0, 40.0]]), np.array([1]), multimask_output=True,
                                              return_logits=True, hq_token_only=hq_only)
        assert logits.shape == (1, 48, 64)  # the HQ decoder returns one mask: nothing left to pick
        np.testing.assert_allclose(probs, torch.sigmoid(torch.from_numpy(logits[0])).numpy(), atol=1e-5)
        np.testing.assert_allclose(ours._prev_low_res[0].numpy(), low_res, atol=1e-5)
        outs[hq_only] = probs
    assert not np.allclose(outs[False], outs[True])


def test_mobile_sam_has_the_official_key_layout(mobile_file):
    # MobileSAM == SAM-HQ's vit_tiny (the same TinyViT from the same package) without the HQ decoder parts.
    hq_tiny = {k: v.shape for k, v in hq_model_registry["vit_tiny"]().state_dict().items()
               if not any(t in k for t in HQ_ONLY)}
    ours = {k: v.shape for k, v in torch.load(mobile_file, weights_only=True).items()}
    assert ours == hq_tiny
    assert any(k.startswith("image_encoder.layers.2.blocks.5.") for k in ours)  # TinyViT-5M depths 2/2/6/2
    model = build_mobile_sam(mobile_file)  # the default 1024-px build loads it unchanged
    assert holds_file_weights(model, mobile_file)
    assert sum(p.numel() for p in model.image_encoder.parameters()) < 7e6


# ----------------------------------------------------------------------------- wrong files


def test_plain_sam_file_for_sam_hq_names_the_file_and_the_missing_hq_keys(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(tiny_sam().state_dict(), path)
    with pytest.raises(DataError, match="not a SAM-HQ checkpoint") as err:
        SamHQClickPredictor(checkpoint=str(path), model=tiny_sam_hq())
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "plain SAM / MobileSAM" in msg
    assert "mask_decoder.hf_token.weight" in msg and "mask_decoder.hf_mlp.layers.0.weight" in msg


def test_mobile_sam_file_for_sam_hq_vit_tiny(mobile_file):
    with pytest.raises(DataError, match=r"not a SAM-HQ vit_tiny checkpoint .*hf_token") as err:
        SamHQClickPredictor("vit_tiny", checkpoint=str(mobile_file))
    assert str(err.value).startswith(f"{mobile_file}: ")


def test_sam_hq_file_for_mobile_sam_names_the_missing_encoder_keys(hq_file):
    with pytest.raises(DataError, match=r"not a MobileSAM checkpoint .*image_encoder\.patch_embed") as err:
        MobileSamClickPredictor(checkpoint=str(hq_file), model=mobile_sam(128))
    assert str(err.value).startswith(f"{hq_file}: ")


def test_missing_keys_are_named(tmp_path, hq_file):
    sd = torch.load(hq_file, weights_only=True)
    dropped = ["prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight"]
    for key in dropped:
        del sd[key]
    path = tmp_path / "truncated.pth"
    torch.save(sd, path)
    with pytest.raises(DataError, match="2 of .* keys missing") as err:
        SamHQClickPredictor(checkpoint=str(path), model=tiny_sam_hq())
    assert str(err.value).startswith(f"{path}: ") and all(k in str(err.value) for k in dropped)


def test_missing_file_and_no_checkpoint(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        SamHQClickPredictor("vit_b", checkpoint=str(tmp_path / "sam_hq_vit_b.pth"))
    with pytest.raises(DataError, match="checkpoint not found"):
        MobileSamClickPredictor(checkpoint=str(tmp_path / "mobile_sam.pt"))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        MobileSamClickPredictor()
    with pytest.raises(ValueError, match="unknown SAM-HQ model_type"):
        SamHQClickPredictor("vit_x", checkpoint=str(tmp_path))
    with pytest.raises(TypeError, match="MaskDecoderHQ"):
        SamHQClickPredictor(model=tiny_sam())
