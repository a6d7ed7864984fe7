"""Interactive predictors: registry, SAM / SAM2 click driving, GrabCut baseline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from litseg.interactive.predictors import (
    ClickPredictor,
    available_predictors,
    build_predictor,
    check_image,
    clicks_to_points,
    drops_previous_mask,
    register_predictor,
)
from litseg.interactive.predictors import base as predictors_base
from litseg.interactive.types import Click, InteractivePredictor
from litseg.io import DataError
from litseg.nets.sam import tiny_sam, tiny_sam2

# sam2 scripts some helpers with the deprecated torch.jit.script (upstream, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# (y, x, positive) in click order, on a 48 x 80 image
CLICKS_5 = [(10, 20, True), (40, 60, False), (30, 15, True), (5, 70, False), (25, 40, True)]


def make_clicks(spec: list[tuple[int, int, bool]]) -> list[Click]:
    return [Click(y, x, pos, i) for i, (y, x, pos) in enumerate(spec)]


@pytest.fixture(scope="module")
def noise_image() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sam_model():
    return tiny_sam()


@pytest.fixture(scope="module")
def sam2_model():
    return tiny_sam2(image_size=128)


def run_clicks(predictor: InteractivePredictor, image: np.ndarray, spec) -> list[np.ndarray]:
    predictor.set_image(image)
    predictor.reset()
    clicks = make_clicks(spec)
    return [predictor.predict(clicks[: k + 1]) for k in range(len(clicks))]


class PromptSpy:
    """Records the ``masks`` argument each prompt-encoder call receives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prompt_encoder: torch.nn.Module) -> None:
        self.masks: list[torch.Tensor | None] = []
        original = prompt_encoder.forward

        def spy(points, boxes, masks):
            self.masks.append(None if masks is None else masks.detach().clone())
            return original(points, boxes, masks)

        monkeypatch.setattr(prompt_encoder, "forward", spy)


# ----------------------------------------------------------------------------- registry / helpers


def test_unknown_predictor_lists_known_names():
    known = "grabcut, mobile_sam, ritm, sam, sam2, sam_hq, simpleclick"
    with pytest.raises(ValueError, match=rf"unknown predictor 'nope'; known: {known}"):
        build_predictor("nope")


def test_register_and_import_string():
    class Constant:
        threshold = 0.5

        def set_image(self, image):
            self.hw = image.shape[:2]

        def reset(self):
            pass

        def predict(self, clicks):
            return np.full(self.hw, 0.25, np.float32)

    register_predictor("constant_for_test", Constant)
    try:
        assert "constant_for_test" in available_predictors()
        pred = build_predictor("constant_for_test")
        assert isinstance(pred, Constant)
        with pytest.raises(ValueError, match="already registered"):
            register_predictor("constant_for_test", Constant)
        register_predictor("constant_for_test", "litseg.interactive.predictors.classical:GrabCutPredictor",
                           overwrite=True)
        assert type(build_predictor("constant_for_test", max_side=64)).__name__ == "GrabCutPredictor"
    finally:
        predictors_base._REGISTRY.pop("constant_for_test")
    # an import string works without registering, in both spellings
    gc = build_predictor("litseg.interactive.predictors.classical:GrabCutPredictor", max_side=100)
    assert gc.max_side == 100
    assert build_predictor("litseg.interactive.predictors.classical.GrabCutPredictor").max_side == 320
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod'"):
        build_predictor("no_such_pkg.mod:Thing")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        build_predictor("litseg.interactive.predictors.classical:Nope")
    with pytest.raises(TypeError, match="lacks the InteractivePredictor members"):
        build_predictor("collections:OrderedDict")


def test_clicks_to_points_orders_by_index_and_swaps_to_xy():
    clicks = [Click(5, 7, False, 1), Click(2, 3, True, 0), Click(9, 1, True, 2)]
    coords, labels = clicks_to_points(clicks, (10, 8))
    np.testing.assert_array_equal(coords, [[3, 2], [7, 5], [1, 9]])
    np.testing.assert_array_equal(labels, [1, 0, 1])
    assert coords.dtype == np.float32
    with pytest.raises(ValueError, match="outside the 8x10 image"):
        clicks_to_points([Click(10, 0, True, 0)], (10, 8))
    with pytest.raises(ValueError, match="at least one click"):
        clicks_to_points([], (10, 8))


@pytest.mark.parametrize(
    ("signs", "first_click", "upstream"),
    [
        ([True], True, True),
        ([True, False], False, True),  # the upstream quirk: 1 pos + 1 neg = two slots
        ([True, True], False, False),  # 2 pos padded with 2 neg slots = four
        ([True, False, False], False, False),
        ([True, False, True], False, False),
    ],
)
def test_previous_mask_reset_policies(signs, first_click, upstream):
    clicks = [Click(0, i, s, i) for i, s in enumerate(signs)]
    assert drops_previous_mask(clicks, "first_click") is first_click
    assert drops_previous_mask(clicks, "upstream_two_slots") is upstream
    with pytest.raises(ValueError, match="unknown mask_reset"):
        drops_previous_mask(clicks, "sometimes")


def test_input_and_output_checks():
    with pytest.raises(ValueError, match="uint8 RGB image, got float64 array of shape"):
        check_image(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        check_image(np.zeros((4, 4), np.uint8))

    class WrongShape(ClickPredictor):
        def _encode(self, image):
            pass

        def _reset_prompts(self):
            pass

        def _predict(self, clicks):
            return np.zeros((3, 3), np.float32)

    pred = WrongShape()
    with pytest.raises(RuntimeError, match="call set_image"):
        pred.predict([Click(0, 0, True, 0)])
    pred.set_image(np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(RuntimeError, match=r"returned shape \(3, 3\), expected \(4, 5\)"):
        pred.predict([Click(0, 0, True, 0)])


# ----------------------------------------------------------------------------- SAM


def test_sam_three_clicks_shape_range_deterministic(noise_image, sam_model):
    first = run_clicks(build_predictor("sam", model=sam_model), noise_image, CLICKS_5[:3])
    again = run_clicks(build_predictor("sam", model=tiny_sam()), noise_image, CLICKS_5[:3])
    for a, b in zip(first, again, strict=True):
        assert a.shape == (48, 80) and a.dtype == np.float32
        assert 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])


def test_sam_keeps_best_iou_mask_and_feeds_it_back(noise_image, sam_model):
    """Reference: upstream SamPredictor.predict, choosing and feeding back by hand."""
    from segment_anything import SamPredictor

    ours = run_clicks(build_predictor("sam", model=sam_model), noise_image, CLICKS_5)
    reference = SamPredictor(sam_model)
    reference.set_image(noise_image)
    prev, chosen = None, []
    for k in range(len(CLICKS_5)):
        coords = np.array([[x, y] for y, x, _ in CLICKS_5[: k + 1]], dtype=float)
        labels = np.array([int(p) for _, _, p in CLICKS_5[: k + 1]])
        masks, iou, low_res = reference.predict(coords, labels, mask_input=prev, multimask_output=True,
                                                return_logits=True)
        best = int(np.argmax(iou))
        chosen.append(best)
        prev = low_res[best : best + 1]
        expected = torch.sigmoid(torch.from_numpy(masks[best])).numpy()
        np.testing.assert_allclose(ours[k], expected, atol=1e-6)
    assert set(chosen) != {0}  # a predictor ignoring the IoU head would fail above


def test_sam_mask_feedback_and_reset(noise_image, sam_model, monkeypatch):
    pred = build_predictor("sam", model=sam_model)
    spy = PromptSpy(monkeypatch, sam_model.prompt_encoder)
    pred.set_image(noise_image)
    pred.reset()
    clicks = make_clicks(CLICKS_5[:3])
    chosen = []
    for k in range(3):
        pred.predict(clicks[: k + 1])
        chosen.append(pred._prev_low_res.clone())
    assert spy.masks[0] is None
    assert tuple(spy.masks[1].shape) == (1, 1, 16, 16)
    assert torch.equal(spy.masks[1], chosen[0])  # call 2 gets call 1's chosen logits
    assert torch.equal(spy.masks[2], chosen[1])
    assert not torch.equal(chosen[0], chosen[1])
    pred.reset()
    pred.predict(clicks[:1])
    assert spy.masks[3] is None  # a new instance starts without a mask prompt

    # upstream quirk: a negative second click drops the mask prompt
    spy.masks.clear()
    quirky = build_predictor("sam", model=sam_model, mask_reset="upstream_two_slots")
    run_clicks(quirky, noise_image, CLICKS_5[:3])
    assert spy.masks[1] is None and spy.masks[2] is not None


def test_sam_encodes_once_with_identical_masks(noise_image, sam_model, monkeypatch):
    calls = []
    original = sam_model.image_encoder.forward
    monkeypatch.setattr(sam_model.image_encoder, "forward", lambda x: calls.append(1) or original(x))
    once = run_clicks(build_predictor("sam", model=sam_model), noise_image, CLICKS_5)
    assert len(calls) == 1
    calls.clear()
    every = run_clicks(build_predictor("sam", model=sam_model, encode_every_click=True), noise_image, CLICKS_5)
    assert len(calls) == 1 + len(CLICKS_5)
    for a, b in zip(once, every, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sam_checkpoint_round_trip_and_errors(noise_image, sam_model, tmp_path):
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam_model.state_dict(), path)
    expected = run_clicks(build_predictor("sam", model=sam_model), noise_image, CLICKS_5[:2])
    other = tiny_sam(seed=1)
    assert not torch.equal(other.mask_decoder.iou_token.weight, sam_model.mask_decoder.iou_token.weight)
    loaded = run_clicks(build_predictor("sam", model=other, checkpoint=str(path)), noise_image, CLICKS_5[:2])
    for a, b in zip(expected, loaded, strict=True):
        np.testing.assert_array_equal(a, b)

    missing = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(DataError, match=f"{missing}: checkpoint not found"):
        build_predictor("sam", model_type="vit_b", checkpoint=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=f"{corrupt}: not a readable checkpoint"):
        build_predictor("sam", model=tiny_sam(), checkpoint=str(corrupt))
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(2)}, wrong)
    with pytest.raises(DataError, match=f"{wrong}: weights do not match the model"):
        build_predictor("sam", model=tiny_sam(), checkpoint=str(wrong))
    with pytest.raises(ValueError, match="unknown SAM model_type 'vit_x'; known: vit_b, vit_l, vit_h"):
        build_predictor("sam", model_type="vit_x", checkpoint=str(path))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build_predictor("sam")
    with pytest.raises(ValueError, match="unknown mask_reset"):
        build_predictor("sam", model=sam_model, mask_reset="never")


# ----------------------------------------------------------------------------- SAM2


def test_sam2_three_clicks_match_upstream_predictor(noise_image, sam2_model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = build_predictor("sam2", model=sam2_model)
    assert pred.sam2_predictor._bb_feat_sizes == [(32, 32), (16, 16), (8, 8)]
    ours = run_clicks(pred, noise_image, CLICKS_5[:3])
    again = run_clicks(build_predictor("sam2", model=tiny_sam2(image_size=128)), noise_image, CLICKS_5[:3])

    reference = SAM2ImagePredictor(sam2_model)
    reference._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]
    reference.set_image(noise_image)
    prev = None
    for k in range(3):
        coords = np.array([[x, y] for y, x, _ in CLICKS_5[: k + 1]], dtype=float)
        labels = np.array([int(p) for _, _, p in CLICKS_5[: k + 1]])
        masks, _, prev = reference.predict(coords, labels, mask_input=prev, multimask_output=False,
                                           return_logits=True)
        assert ours[k].shape == (48, 80) and ours[k].dtype == np.float32
        assert 0.0 <= ours[k].min() and ours[k].max() <= 1.0
        np.testing.assert_allclose(ours[k], torch.sigmoid(torch.from_numpy(masks[0])).numpy(), atol=1e-6)
        np.testing.assert_array_equal(ours[k], again[k])


def test_sam2_mask_feedback_and_encode_once(noise_image, sam2_model, monkeypatch):
    pred = build_predictor("sam2", model=sam2_model)
    spy = PromptSpy(monkeypatch, sam2_model.sam_prompt_encoder)
    calls = []
    original = sam2_model.forward_image
    monkeypatch.setattr(sam2_model, "forward_image", lambda x: calls.append(1) or original(x))

    pred.set_image(noise_image)
    pred.reset()
    clicks = make_clicks(CLICKS_5)
    once = [pred.predict(clicks[:1])]
    fed_back = torch.from_numpy(pred._prev_low_res).clone()[None]  # 1 x h x w -> 1 x 1 x h x w
    once += [pred.predict(clicks[: k + 1]) for k in range(1, 5)]
    assert len(calls) == 1
    assert spy.masks[0] is None
    assert tuple(spy.masks[1].shape) == (1, 1, 32, 32)
    assert torch.equal(spy.masks[1], fed_back)

    calls.clear()
    every = run_clicks(build_predictor("sam2", model=sam2_model, encode_every_click=True), noise_image, CLICKS_5)
    assert len(calls) == 1 + 5
    for a, b in zip(once, every, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sam2_checkpoint_round_trip_and_errors(noise_image, sam2_model, tmp_path):
    path = tmp_path / "tiny_sam2.pt"
    torch.save({"model": sam2_model.state_dict()}, path)  # the upstream layout
    expected = run_clicks(build_predictor("sam2", model=sam2_model), noise_image, CLICKS_5[:2])
    other = tiny_sam2(image_size=128, seed=1)
    assert not torch.equal(other.sam_mask_decoder.iou_token.weight, sam2_model.sam_mask_decoder.iou_token.weight)
    loaded = run_clicks(build_predictor("sam2", model=other, checkpoint=str(path)), noise_image, CLICKS_5[:2])
    for a, b in zip(expected, loaded, strict=True):
        np.testing.assert_array_equal(a, b)

    missing = tmp_path / "sam2.1_hiera_tiny.pt"
    with pytest.raises(DataError, match=f"{missing}: checkpoint not found"):
        build_predictor("sam2", checkpoint=str(missing))
    with pytest.raises(ValueError, match=r"unknown SAM2 config 'configs/nope.yaml'; known: .*sam2.1_hiera_t.yaml"):
        build_predictor("sam2", config="configs/nope.yaml", checkpoint=str(path))


# ----------------------------------------------------------------------------- GrabCut


def square_scene() -> tuple[np.ndarray, np.ndarray]:
    """A bright textured square on a dark textured background, 120 x 160."""
    rng = np.random.default_rng(3)
    gt = np.zeros((120, 160), bool)
    gt[30:90, 50:120] = True
    image = np.where(gt[..., None], 200, 40) + rng.integers(-25, 26, size=(120, 160, 3))
    return image.astype(np.uint8), gt


def test_grabcut_segments_square_from_one_click():
    image, gt = square_scene()
    pred = build_predictor("grabcut")
    probs = run_clicks(pred, image, [(60, 85, True)])[0]
    assert probs.shape == gt.shape and probs.dtype == np.float32
    mask = probs > pred.threshold
    iou = (mask & gt).sum() / (mask | gt).sum()
    assert iou > 0.8, iou


def test_grabcut_three_clicks_downscaled_deterministic():
    image, gt = square_scene()
    big = np.repeat(np.repeat(image, 3, axis=0), 3, axis=1)  # 360 x 480: GrabCut runs at 240 x 320
    spec = [(180, 255, True), (30, 30, False), (150, 200, True)]
    first = run_clicks(build_predictor("grabcut"), big, spec)
    again = run_clicks(build_predictor("grabcut"), big, spec)
    for a, b in zip(first, again, strict=True):
        assert a.shape == (360, 480) and 0.0 <= a.min() and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
    big_gt = np.repeat(np.repeat(gt, 3, axis=0), 3, axis=1)
    mask = first[-1] > 0.5
    assert (mask & big_gt).sum() / (mask | big_gt).sum() > 0.8


def test_grabcut_negative_click_alone_gives_empty_mask():
    image, _ = square_scene()
    probs = run_clicks(build_predictor("grabcut"), image, [(5, 5, False)])[0]
    np.testing.assert_array_equal(probs, np.zeros((120, 160), np.float32))


# ----------------------------------------------------------------------------- speed benchmark


def test_speed_benchmark_smoke_on_tiny_sam(capsys):
    """The benchmark script runs end to end and its two loops give identical IoU curves."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "interactive_speed.py"
    spec = importlib.util.spec_from_file_location("interactive_speed_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--model", "tiny", "--images", "1", "--clicks", "3", "--repeats", "1"])
    assert results["identical"] == 1.0
    assert results["encoder_s"] > 0 and results["full_s"] > 0 and results["reencode_s"] > 0  # no timing order: CI noise
    assert "| re-encode at every click (upstream) |" in capsys.readouterr().out
