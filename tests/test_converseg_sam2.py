"""ConverSeg's SAM2 half (litseg/nets/converseg.py, litseg/converseg/convert.py) on a tiny random SAM2.

``tiny_sam2(image_size=128)`` stands in for hiera-L at 1024: every upstream size scales with it (input 1024 -> 128,
embedding grid 64 -> 8, low-res masks 256 -> 32 = image_size / 4, prompt width 256 -> 64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litseg.converseg.convert import ADAPTER_KEYS, convert_released_checkpoint, load_decoder, save_decoder
from litseg.imaging import normalize
from litseg.io import DataError
from litseg.letterbox import Letterbox
from litseg.nets.converseg import Sam2Segmenter, converseg_loss, logits_to_original, select_masks
from litseg.nets.sam import tiny_sam2

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

SIZE = 128  # tiny model input; upstream 1024


@pytest.fixture(scope="module")
def segmenter() -> Sam2Segmenter:
    return Sam2Segmenter(tiny_sam2(image_size=SIZE))


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    return raw, torch.stack([normalize(im) for im in raw])


def prompts(batch: int, tokens: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, dim, generator=g), torch.randn(batch, dim, generator=g)


def test_sizes_derive_from_the_model(segmenter):
    assert (segmenter.image_size, segmenter.embedding_size, segmenter.low_res_size, segmenter.prompt_dim) == (
        128, 8, 32, 64)
    trainable = {n.split(".")[1] for n, p in segmenter.named_parameters() if p.requires_grad}
    assert trainable == {"sam_mask_decoder"}


def test_encode_matches_the_image_predictor(segmenter, images):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    raw, batch = images
    feats = segmenter.encode(batch)
    assert feats["image_embed"].shape == (3, 64, 8, 8)
    assert [tuple(f.shape) for f in feats["high_res_feats"]] == [(3, 8, 32, 32), (3, 16, 16, 16)]
    predictor = SAM2ImagePredictor(segmenter.sam2)
    predictor._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]  # hard-coded for 1024 upstream
    for i in (0, 2):
        predictor.set_image(raw[i])
        torch.testing.assert_close(feats["image_embed"][i:i + 1], predictor._features["image_embed"])
        for ours, theirs in zip(feats["high_res_feats"], predictor._features["high_res_feats"]):
            torch.testing.assert_close(ours[i:i + 1], theirs)
    # no_mem_embed is added to the lowest-resolution level only
    bb = segmenter.sam2.forward_image(batch)
    no_mem = segmenter.sam2.no_mem_embed.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(feats["image_embed"] - bb["backbone_fpn"][-1], no_mem.expand(3, -1, 8, 8))
    torch.testing.assert_close(feats["high_res_feats"][0], bb["backbone_fpn"][0].detach())
    assert not feats["image_embed"].requires_grad
    with pytest.raises(ValueError, match="3 x 128 x 128"):
        segmenter.encode(torch.zeros(1, 3, 64, 64))


def test_feature_cache_is_exact_and_encodes_each_id_once(images, monkeypatch):
    _, batch = images
    seg = Sam2Segmenter(tiny_sam2(image_size=SIZE), cache_features=True)
    calls: list[int] = []
    encode = seg.encode
    monkeypatch.setattr(seg, "encode", lambda x: calls.append(x.shape[0]) or encode(x))
    first = seg.encode_cached(["a", "b"], batch[:2])
    second = seg.encode_cached(["b", "c"], batch[1:])  # only "c" is encoded
    assert calls == [1, 1, 1] and seg.cache_size == 3  # one image at a time, "b" only once
    assert all(t.device.type == "cpu" for entry in seg._cache.values() for t in entry)
    # exact and batch-independent: each image's features are what encode gives for it alone
    singles = [encode(batch[i:i + 1]) for i in range(3)]

    def stacked(rows):
        return {"image_embed": torch.cat([singles[i]["image_embed"] for i in rows]),
                "high_res_feats": [torch.cat([singles[i]["high_res_feats"][lv] for i in rows])
                                   for lv in range(len(singles[0]["high_res_feats"]))]}

    ab, expected = stacked([0, 1]), stacked([1, 2])
    for got, want in ((first, ab), (second, expected)):
        assert torch.equal(got["image_embed"], want["image_embed"])
        assert all(torch.equal(a, b) for a, b in zip(got["high_res_feats"], want["high_res_feats"]))
    uncached = Sam2Segmenter(seg.sam2, cache_features=False).encode_cached(["b", "c"], batch[1:])
    assert torch.equal(uncached["image_embed"], second["image_embed"])  # the cache changes nothing
    sparse, dense = prompts(2, 5, 64)
    seg.eval()
    out_cached = seg.decode(second, sparse, None, dense, multimask=True)
    out_direct = seg.decode(expected, sparse, None, dense, multimask=True)
    assert torch.equal(out_cached["low_res_logits"], out_direct["low_res_logits"])
    assert torch.equal(out_cached["iou"], out_direct["iou"])
    seg.clear_cache()
    assert seg.cache_size == 0
    with pytest.raises(ValueError, match="1 ids for 2 images"):
        seg.encode_cached(["x"], batch[:2])


def test_decode_shapes_and_equivalence_with_the_sam2_decoder(segmenter, images):
    _, batch = images
    feats = segmenter.encode(batch[:2])
    sparse, dense = prompts(2, 7, 64)
    single = segmenter.decode(feats, sparse, torch.ones(2, 7, dtype=torch.bool), dense, multimask=False)
    multi = segmenter.decode(feats, sparse, None, dense, multimask=True)
    assert single["low_res_logits"].shape == (2, 1, 32, 32) and single["iou"].shape == (2, 1)
    assert multi["low_res_logits"].shape == (2, 3, 32, 32) and multi["iou"].shape == (2, 3)
    assert single["all_low_res_logits"].shape == (2, 4, 32, 32) and single["all_iou"].shape == (2, 4)
    # the same call upstream makes (eval.py L194-226): dense expanded over the grid, get_dense_pe, no repeat
    sam2 = segmenter.sam2
    with torch.no_grad():
        low, iou, _, _ = sam2.sam_mask_decoder(
            image_embeddings=feats["image_embed"], image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense[:, :, None, None].expand(-1, -1, 8, 8),
            multimask_output=True, repeat_image=False, high_res_features=feats["high_res_feats"])
    torch.testing.assert_close(multi["low_res_logits"], low)
    torch.testing.assert_close(multi["iou"], iou)
    torch.testing.assert_close(single["low_res_logits"], single["all_low_res_logits"][:, :1])
    logits, scores = segmenter.predict(feats, sparse, None, dense, "multimask_argmax")
    best = multi["iou"].argmax(1)
    assert torch.equal(logits[:, 0], multi["low_res_logits"][torch.arange(2), best])
    assert torch.equal(scores, multi["iou"].max(1).values)
    with pytest.raises(ValueError, match="sparse must be 2 x T x 64"):
        segmenter.decode(feats, sparse[..., :32], None, dense)


def test_padding_per_sample_or_as_upstream(segmenter, images):
    _, batch = images
    feats = segmenter.encode(batch[:2])
    sparse, dense = prompts(2, 6, 64, seed=1)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    per_sample = segmenter.decode(feats, sparse, mask, dense, multimask=True, per_sample=True)
    alone = segmenter.decode({"image_embed": feats["image_embed"][1:], "high_res_feats": [h[1:] for h in
                              feats["high_res_feats"]]}, sparse[1:, :3], None, dense[1:], multimask=True)
    torch.testing.assert_close(per_sample["low_res_logits"][1:], alone["low_res_logits"])
    padded = segmenter.decode(feats, sparse, mask, dense, multimask=True)  # upstream: padded slots attend
    torch.testing.assert_close(padded["low_res_logits"][:1], per_sample["low_res_logits"][:1])
    assert not torch.allclose(padded["low_res_logits"][1:], per_sample["low_res_logits"][1:])


def test_mask_selections_on_hand_made_outputs(segmenter):
    logits = torch.full((3, 4, 4, 4), -3.0)
    logits[:, 1:] = torch.arange(1.0, 4.0).view(1, 3, 1, 1)  # token k (1-3) is the constant k
    logits[0, 0] = 2.0  # stable: nothing between -0.05 and 0.05
    logits[1, 0, :2] = 0.01  # unstable: half the pixels inside the +-delta band
    logits[2, 0, 0, 0] = 0.5  # stable: area 1 / 1
    iou = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.9, 0.1, 0.2, 0.8], [0.1, 0.7, 0.2, 0.3]])
    masks, scores = select_masks(logits, iou, "token0")
    assert torch.equal(masks, logits[:, :1]) and torch.equal(scores, iou[:, 0])
    masks, scores = select_masks(logits, iou, "multimask_argmax")  # token 0 never competes (eval.py)
    assert torch.equal(masks[:, 0, 0, 0], torch.tensor([2.0, 3.0, 1.0]))
    assert torch.equal(scores, torch.tensor([0.5, 0.8, 0.7]))
    masks, scores = select_masks(logits, iou, "dynamic_stability")
    assert torch.equal(masks[0], logits[0, :1]) and torch.equal(masks[2], logits[2, :1])
    assert torch.equal(masks[1], logits[1, 3:4]) and torch.equal(scores, torch.tensor([0.9, 0.8, 0.1]))
    # the same rule as SAM2's own decoder fallback
    theirs, their_scores = segmenter.sam2.sam_mask_decoder._dynamic_multimask_via_stability(logits, iou)
    assert torch.equal(masks, theirs) and torch.equal(scores, their_scores[:, 0])
    with pytest.raises(ValueError, match="mask_selection"):
        select_masks(logits, iou, "best")


def test_loss_against_a_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]], [[[-2.0, -2.0], [1.0, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    flat_l, flat_t = logits.flatten().tolist(), target.flatten().tolist()
    bce = -sum(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)) for x, t in zip(flat_l, flat_t)) / 8
    dices = []
    for b in range(2):
        p = [sig(x) for x in flat_l[4 * b:4 * b + 4]]
        t = flat_t[4 * b:4 * b + 4]
        dices.append(1 - (2 * sum(a * c for a, c in zip(p, t)) + 1e-6) / (sum(p) + sum(t) + 1e-6))
    dice = sum(dices) / 2
    out = converseg_loss(logits, target)
    assert out["bce"].item() == pytest.approx(bce, rel=1e-6)
    assert out["dice"].item() == pytest.approx(dice, rel=1e-6)
    assert out["loss"].item() == pytest.approx(bce + 0.25 * dice, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        converseg_loss(logits, target[:, :, :1])


def test_gradients_reach_the_decoder_and_prompts_not_the_encoder(images):
    _, batch = images
    seg = Sam2Segmenter(tiny_sam2(image_size=SIZE)).train()
    assert seg.mask_decoder.training and not seg.sam2.image_encoder.training
    feats = seg.encode(batch[:2])
    sparse, dense = prompts(2, 4, 64)
    sparse.requires_grad_(True)
    dense.requires_grad_(True)
    out = seg.decode(feats, sparse, None, dense, multimask=False)
    target = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    converseg_loss(out["low_res_logits"], target)["loss"].backward()
    assert sparse.grad.abs().sum() > 0 and dense.grad.abs().sum() > 0
    dec = seg.mask_decoder
    for module in (dec.transformer, dec.output_upscaling, dec.output_hypernetworks_mlps[0]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    # train.py: token 0 only -> no IoU / object-score loss, mask tokens 1-3 get no signal
    assert all(p.grad is None for p in dec.iou_prediction_head.parameters())
    assert all(p.grad is None or not p.grad.any() for p in dec.output_hypernetworks_mlps[1].parameters())
    # the frozen encoder, no_mem_embed and conv_s0 / conv_s1 (run inside the no-grad encode) get nothing
    frozen = [*seg.sam2.image_encoder.parameters(), seg.sam2.no_mem_embed, *dec.conv_s0.parameters(),
              *dec.conv_s1.parameters(), *seg.sam2.sam_prompt_encoder.parameters()]
    assert all(p.grad is None for p in frozen)
    assert not any(p.requires_grad for p in seg.sam2.image_encoder.parameters())


def test_stretch_and_letterbox_geometry_on_a_100x50_image():
    box = Letterbox.fit(height=50, width=100, size=SIZE)  # centred: rows 32..95 of the 128 square hold the image
    assert (box.top, box.inner_height, box.left, box.inner_width) == (32, 64, 0, 128)
    low = torch.full((1, 1, 32, 32), -1.0)
    low[..., 8:16, :] = 1.0  # low-res rows 8..15 = square rows 32..63 = the image's top half (letterbox)
    letter = logits_to_original(low, [box], "letterbox")[0]
    stretch = logits_to_original(low, [box], "stretch")[0]
    assert letter.shape == stretch.shape == (50, 100) and letter.dtype == torch.float32
    # letterbox: low-res row 8 is image row 0; the positive band is the top half of the image
    assert (letter[:24] > 0).all() and (letter[26:] < 0).all()
    # stretch: 32 low-res rows span all 50 image rows, the band lands on rows 12.5..25
    assert (stretch[:12] < 0).all() and (stretch[14:24] > 0).all() and (stretch[27:] < 0).all()
    torch.testing.assert_close(stretch, F.interpolate(low, size=(50, 100), mode="bilinear")[0, 0])
    # columns: the image is as wide as the square in both geometries
    low_cols = torch.full((1, 1, 32, 32), -1.0)
    low_cols[..., :16] = 1.0
    for mode in ("letterbox", "stretch"):
        out = logits_to_original(low_cols, [box], mode)[0]
        assert (out[:, :48] > 0).all() and (out[:, 52:] < 0).all()
    with pytest.raises(ValueError, match="geometry"):
        logits_to_original(low, [box], "crop")


def _tiny_peft_backbone(seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = nn.Module()
    base.layer = nn.Module()
    base.layer.q_proj = nn.Linear(8, 8)
    base.layer.down_proj = nn.Linear(8, 8)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            nn.init.normal_(p)
    return model


def _released_files(tmp_path, seed: int = 5) -> tuple[Sam2Segmenter, dict, nn.Module]:
    source = tiny_sam2(image_size=SIZE, seed=seed)
    sam_path, plm_path = tmp_path / "ConverSeg-Net_sam2_90000.torch", tmp_path / "ConverSeg-Net_plm_90000.torch"
    torch.save({"model": source.state_dict()}, sam_path)
    g = torch.Generator().manual_seed(seed)
    d_t, c = 32, 64
    shapes = {"txt_norm.weight": (d_t,), "txt_norm.bias": (d_t,), "to_sparse.weight": (c, d_t), "to_sparse.bias": (c,),
              "to_dense.0.weight": (c, d_t), "to_dense.0.bias": (c,), "to_dense.2.weight": (c, c),
              "to_dense.2.bias": (c,), "scale": (), "temp": ()}
    head = {k: torch.randn(shapes[k], generator=g) for k in ADAPTER_KEYS}
    backbone = _tiny_peft_backbone(seed)  # key names as LanguageAdapter.state_dict(): backbone.base_model.model...
    plm = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, **head}
    torch.save({"plm": plm}, plm_path)
    return Sam2Segmenter(source), head, backbone


def test_converter_round_trips_the_released_layout(tmp_path):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    source, head, backbone = _released_files(tmp_path)
    converted = convert_released_checkpoint(tmp_path / "ConverSeg-Net_sam2_90000.torch",
                                            tmp_path / "ConverSeg-Net_plm_90000.torch")
    assert set(converted) == {"sam2_decoder", "prompt_adapter", "lora"}
    target = Sam2Segmenter(tiny_sam2(image_size=SIZE, seed=9))
    target.mask_decoder.load_state_dict(converted["sam2_decoder"], strict=True)
    assert all(torch.equal(v, source.mask_decoder.state_dict()[k]) for k, v in target.mask_decoder.state_dict().items())
    assert converted["prompt_adapter"].keys() == head.keys()
    assert all(torch.equal(converted["prompt_adapter"][k], head[k]) for k in head)
    assert sorted(converted["lora"]) == sorted(get_peft_model_state_dict(backbone))
    assert "base_model.model.layer.q_proj.lora_A.weight" in converted["lora"]
    fresh = _tiny_peft_backbone(seed=11)
    set_peft_model_state_dict(fresh, converted["lora"])
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in backbone.state_dict().items() if "lora_" in k)
    # one file alone fills its own parts; the decoder file also loads through load_decoder
    only_plm = convert_released_checkpoint(tmp_path / "ConverSeg-Net_plm_90000.torch")
    assert only_plm["sam2_decoder"] == {} and only_plm["lora"].keys() == converted["lora"].keys()
    other = Sam2Segmenter(tiny_sam2(image_size=SIZE, seed=9))
    load_decoder(other, tmp_path / "ConverSeg-Net_sam2_90000.torch")
    saved = tmp_path / "decoder.pt"
    save_decoder(other, saved)
    again = Sam2Segmenter(tiny_sam2(image_size=SIZE, seed=9))
    load_decoder(again, saved)
    assert all(torch.equal(v, source.mask_decoder.state_dict()[k]) for k, v in again.mask_decoder.state_dict().items())


def test_bad_checkpoints_name_the_file_and_the_keys(tmp_path):
    _released_files(tmp_path)
    plm = torch.load(tmp_path / "ConverSeg-Net_plm_90000.torch", weights_only=True)["plm"]
    broken = tmp_path / "broken_plm.torch"
    torch.save({"plm": {k: v for k, v in plm.items() if not k.startswith("to_dense")}}, broken)
    with pytest.raises(DataError, match=r"broken_plm\.torch: missing adapter-head keys.*to_dense\.0\.bias"):
        convert_released_checkpoint(broken)
    torch.save({"plm": {**plm, "lm_head.weight": torch.zeros(1)}}, broken)
    with pytest.raises(DataError, match=r"broken_plm\.torch: unknown keys in 'plm': lm_head\.weight"):
        convert_released_checkpoint(broken)
    torch.save({"plm": {k: v for k, v in plm.items() if "lora_B" not in k or "q_proj" not in k}}, broken)
    with pytest.raises(DataError, match=r"without their A / B partner: base_model\.model\.layer\.q_proj"):
        convert_released_checkpoint(broken)
    model = torch.load(tmp_path / "ConverSeg-Net_sam2_90000.torch", weights_only=True)["model"]
    sam_file = tmp_path / "broken_sam2.torch"
    torch.save({"model": {**model, "decoder_extra.weight": torch.zeros(1)}}, sam_file)
    with pytest.raises(DataError, match=r"broken_sam2\.torch: unknown keys .*decoder_extra\.weight"):
        convert_released_checkpoint(sam_file)
    torch.save({"model": {k: v for k, v in model.items() if "mask_tokens" not in k}}, sam_file)
    with pytest.raises(DataError, match=r"broken_sam2\.torch: missing SAM2 mask-decoder keys: "
                                        r"sam_mask_decoder\.mask_tokens\.weight"):
        convert_released_checkpoint(sam_file)
    seg = Sam2Segmenter(tiny_sam2(image_size=SIZE))
    with pytest.raises(DataError, match=r"broken_sam2\.torch: .*missing \['mask_tokens\.weight'\]"):
        load_decoder(seg, sam_file)
    torch.save({"something": {}}, sam_file)
    with pytest.raises(DataError, match=r"broken_sam2\.torch: not a released ConverSeg-Net checkpoint"):
        convert_released_checkpoint(sam_file)
    saved = tmp_path / "decoder.pt"
    save_decoder(seg, saved)
    with pytest.raises(DataError, match="image_size 128, the model has 64"):
        load_decoder(Sam2Segmenter(tiny_sam2(image_size=64)), saved)
