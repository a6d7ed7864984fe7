"""SAOM's model: the IoU-token classifier, what trains, the loss, the cache, everything mode, the
evaluation protocol, prediction files and the export that SAM's own registry loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from lit_modules.saom import SAOM
from litseg.metrics.masks import PooledClassIoU
from litseg.nets.sam import tiny_sam
from litseg.nets.saom import SAOMNet, best_by_predicted_iou, everything_masks, semantic_map
from litseg.saom.export import classifier_path, export_sam
from tests.helpers import WriteOnRankZero


def item(key: str, size=(40, 56), seed: int = 0, n: int = 3, num_classes: int = 4) -> dict:
    """A random image with ``n`` rectangles as instances."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        masks[i, y0:y0 + h // 3, x0:x0 + w // 3] = True
    labels = torch.as_tensor(rng.integers(0, num_classes, n), dtype=torch.int64)
    return {"image": image, "masks": masks, "labels": labels, "key": key,
            "mask_names": [f"obj{i}" for i in range(n)], "dropped_empty": 0}


def module(**kw) -> SAOM:
    torch.manual_seed(0)
    args = {"num_classes": 4, "model_type": "tiny", "nx": 8, "ny": 8} | kw
    return SAOM(**args)


# ----------------------------------------------------------------------------- network
def test_classifier_reads_the_iou_token_and_only_saom_parameters_train():
    net = SAOMNet(tiny_sam(), num_classes=5)
    captured = {}

    def keep_token(module, inputs, output):
        captured["token"] = inputs[0].detach().clone()

    net.sam.mask_decoder.iou_prediction_head.register_forward_hook(keep_token)
    features, _ = net.encode(item("a")["image"])
    decoded = net.decode(features, torch.tensor([[10.0, 12.0], [30.0, 20.0]]))
    assert decoded.low_res.shape[:2] == (2, 3) and decoded.iou.shape == (2, 3)
    torch.testing.assert_close(decoded.class_logits, net.classifier(captured["token"]))
    # the loss reaches the decoder, the used prompt embeddings and the classifier, never the encoder
    low, k = best_by_predicted_iou(decoded)
    assert torch.equal(k, decoded.iou.argmax(1))
    (low.sum() + decoded.class_logits.sum()).backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("sam.mask_decoder.transformer") for n in grads)
    assert {"classifier.weight", "sam.prompt_encoder.not_a_point_embed.weight",
            "sam.prompt_encoder.point_embeddings.1.weight"} <= grads
    assert not any(n.startswith("sam.image_encoder") for n in grads)
    assert not any(p.requires_grad for p in net.sam.image_encoder.parameters())
    assert not net.sam.prompt_encoder.mask_downscaling[0].weight.requires_grad
    assert all(p.grad is None for p in net.sam.mask_decoder.iou_prediction_head.parameters())


def test_training_keeps_the_frozen_encoder_in_eval_mode():
    net = SAOMNet(tiny_sam(), num_classes=2).train()
    assert net.training and net.sam.mask_decoder.training and not net.sam.image_encoder.training


# ----------------------------------------------------------------------------- loss and training
def test_loss_is_dice_plus_focal_plus_cross_entropy_by_hand():
    m = module()
    it = item("a")
    loss, stats = m._image_loss(it)
    features, input_size, points, keep, _ = m.prepare(it)
    decoded = m.net.decode(features, points)
    k = decoded.iou.argmax(1)
    logits = m.net.sam.postprocess_masks(decoded.low_res[torch.arange(len(k)), k][:, None], input_size,
                                         (40, 56))[:, 0]
    g = it["masks"][keep].float()
    p = torch.sigmoid(logits).flatten(1)
    dice = (1 - (2 * (p * g.flatten(1)).sum(1) + 1) / (p.sum(1) + g.flatten(1).sum(1) + 1)).sum()
    ce_pix = torch.nn.functional.binary_cross_entropy_with_logits(logits, g, reduction="none").flatten(1)
    pt = p * g.flatten(1) + (1 - p) * (1 - g.flatten(1))
    alpha = 0.25 * g.flatten(1) + 0.75 * (1 - g.flatten(1))
    focal = (alpha * ce_pix * (1 - pt) ** 2).mean(1).sum()
    ce = torch.nn.functional.cross_entropy(decoded.class_logits, it["labels"][keep])
    torch.testing.assert_close(loss, dice + focal + ce)
    assert stats["instances"] == 3


def test_a_short_fit_lowers_the_loss():
    m = module(lr=3e-3)
    items = [item(f"i{j}", seed=j) for j in range(3)]
    opt = torch.optim.AdamW(m.param_groups()[0]["params"], lr=3e-3, eps=1e-4)
    first = last = None
    for epoch in range(12):
        total = 0.0
        for it in items:
            loss, _ = m._image_loss(it)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        first = total if first is None else first
        last = total
    assert last < 0.7 * first, (first, last)


def test_embedding_cache_gives_identical_losses_and_encodes_once():
    cached, fresh = module(embedding_cache=True), module(embedding_cache=False)
    calls = {"n": 0}
    cached.net.sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    items = [item("a", seed=1), item("b", seed=2)]
    for _ in range(3):  # three "epochs"
        for it in items:
            a, _ = cached._image_loss(it)
            b, _ = fresh._image_loss(it)
            assert torch.equal(a, b)
    assert calls["n"] == 2


def test_an_image_without_usable_instances_gives_a_zero_loss_that_touches_every_trained_parameter():
    m = module()
    empty = item("e", n=0)
    loss = m.training_step([empty], 0)
    assert float(loss) == 0.0
    loss.backward()
    assert all(p.grad is not None for p in m.net.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- evaluation
def test_prompted_protocol_feeds_the_pooled_metric_and_the_baseline_equals_the_untrained_model():
    m = module()
    it = item("a", seed=3)
    ours, base = m.predict_instances(it), m.predict_instances(it, baseline=True)
    assert ours["masks"].shape == it["masks"].shape
    assert torch.equal(ours["masks"], base["masks"])  # nothing trained yet: the copy is the original
    with torch.no_grad():
        for p in m.net.sam.mask_decoder.parameters():
            p.add_(0.5)
    assert torch.equal(m.predict_instances(it, baseline=True)["masks"], base["masks"])
    m._evaluate([it], "val")
    expected = PooledClassIoU(4)
    expected.update(m.predict_instances(it)["masks"], it["masks"], it["labels"])
    torch.testing.assert_close(m.metrics["val_saom"].compute()["IoU"], expected.compute()["IoU"], equal_nan=True)


def test_dropped_instances_count_as_empty_predictions():
    m = module()
    it = item("a", n=2)
    it["masks"][1] = False
    it["masks"][1, 0, 0] = True  # one pixel: no cell of the embedding grid is inside -> no prior
    pred = m.predict_instances(it)
    assert not pred["masks"][1].any() and int(pred["classes"][1]) == -1


def test_everything_mode_keeps_each_masks_own_point_class():
    net = SAOMNet(tiny_sam(), num_classes=3)
    torch.manual_seed(1)
    with torch.no_grad():
        net.classifier.weight.normal_()
    it = item("a")
    features, input_size = net.encode(it["image"])
    lattice = np.array([[x, y] for y in (8.0, 24.0) for x in (8.0, 24.0, 40.0)])
    loose = type(m_cfg := __import__("litseg.nets.saom", fromlist=["EverythingConfig"]).EverythingConfig())(
        pred_iou_thresh=-10.0, stability_score_thresh=-1.0, box_nms_thresh=1.0, min_mask_region_area=0)
    out = everything_masks(net, features, input_size, (40, 56), lattice, loose)
    assert m_cfg.pred_iou_thresh == 0.3  # SAOM's default
    # with every filter open, all 3 masks of each point survive, point-major, each with its point's class
    assert len(out["masks"]) <= 3 * len(lattice)
    for mask_class, point in zip(out["classes"].tolist(), out["points"].tolist(), strict=True):
        j = int(np.flatnonzero((lattice == np.array(point)).all(1))[0])
        decoded = net.decode(features, net.to_input_frame(torch.tensor([point]), (40, 56)))
        assert mask_class == int(decoded.class_logits.argmax(1)[0]), j


def test_semantic_map_paints_the_most_confident_mask_last():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    out = semantic_map(masks, torch.tensor([0.9, 0.5]), torch.tensor([1, 2]), (4, 4), background=7)
    assert out[:, 0].tolist() == [1, 1, 2, 7]


# ----------------------------------------------------------------------------- export
def test_export_loads_through_sam_model_registry_and_gives_identical_masks(tmp_path):
    m = module(model_type="vit_b", nx=4, ny=4, sam_baseline=False)
    with torch.no_grad():
        m.net.sam.mask_decoder.iou_token.weight.add_(1.0)  # a "fine-tuned" weight
    ckpt = tmp_path / "saom.ckpt"
    torch.save({"state_dict": m.state_dict(), "saom_classes": ["a", "b", "c", "d"]}, ckpt)
    sam_file, head_file = export_sam(ckpt, tmp_path / "sam_saom.pth")
    assert head_file == classifier_path(sam_file)
    loaded: Sam = sam_model_registry["vit_b"](checkpoint=str(sam_file))
    for name, value in m.net.sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    head = torch.load(head_file, weights_only=True)
    assert head["classes"] == ["a", "b", "c", "d"] and torch.equal(head["weight"], m.net.classifier.weight)
    # the interactive benchmark's `sam` predictor takes the file as it is
    from litseg.interactive.predictors.sam import SamClickPredictor

    predictor = SamClickPredictor(model_type="vit_b", checkpoint=str(sam_file), device="cpu")
    assert torch.equal(predictor.model.mask_decoder.iou_token.weight, m.net.sam.mask_decoder.iou_token.weight)
    # same decoder outputs on the same embedding and prompts
    features = torch.randn(1, 256, 64, 64)
    points = torch.tensor([[100.0, 200.0], [512.0, 512.0]])
    ours = m.net.decode(features, points)
    other = SAOMNet(loaded, 4).decode(features, points)
    assert torch.equal(ours.low_res, other.low_res) and torch.equal(ours.iou, other.iou)


def test_export_rejects_a_checkpoint_of_another_method(tmp_path):
    from litseg.io import DataError

    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.encoder.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(DataError, match="not a SAOM checkpoint"):
        export_sam(ckpt, tmp_path / "x.pth")


def test_missing_sam_checkpoint_stops_naming_the_file(tmp_path):
    from litseg.io import DataError

    with pytest.raises(DataError, match="checkpoint not found") as err:
        SAOM(num_classes=3, model_type="vit_b", checkpoint=str(tmp_path / "sam_vit_b.pth"))
    assert str(tmp_path / "sam_vit_b.pth") in str(err.value)


# ----------------------------------------------------------------------------- prediction files
def test_saved_predictions_follow_the_metadata_schema_and_rescore(tmp_path):
    m = module()
    items = [item("images/scene-1-rgb.png", seed=4), item("images/scene-2-rgb.png", seed=5, n=2)]
    outputs = [m.predict_step(items, 0)]
    count = m.write_predictions(outputs, tmp_path / "pred", split="val")
    assert count == 5
    meta = json.loads((tmp_path / "pred" / "DSmetadata-predval.json").read_text())
    records = meta["val_data"]
    assert [r["image_name"] for r in records] == ["images/scene-1-rgb.png", "images/scene-2-rgb.png"]
    from PIL import Image

    rescored = PooledClassIoU(4)
    direct = PooledClassIoU(4)
    for rec, it, out in zip(records, items, outputs[0], strict=True):
        assert rec["entity_indices"] == it["labels"].tolist()
        assert len(rec["predicted_indices"]) == len(rec["entity_masks"])
        preds = [np.array(Image.open(tmp_path / "pred" / p.lstrip("/")))[..., 0] > 0 for p in rec["entity_masks"]]
        gts = [np.array(Image.open(tmp_path / "pred" / "gt" / Path(p).name))[..., 0] > 0 for p in rec["entity_masks"]]
        rescored.update(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(gts)), rec["entity_indices"])
        direct.update(out["masks"], it["masks"], it["labels"])
    torch.testing.assert_close(rescored.compute()["IoU"], direct.compute()["IoU"], equal_nan=True)


# ----------------------------------------------------------------------------- through Lightning
def _trainer(tmp_path, **kw):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=kw.pop("devices", 1), logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path), **kw)


def _sample_dm():
    from datamodules.saom import SAOMDataModule

    return SAOMDataModule(root="sample_data/coco128_sample", source="coco", val_fraction=0.25)


def test_two_process_ddp_evaluation_equals_one_process(tmp_path):
    dm = _sample_dm()
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) % 2 == 1  # ranks get unequal shares
    single = module(num_classes=17, tiny_img_size=128)
    _trainer(tmp_path).test(single, datamodule=_sample_dm())
    single.write_evaluation(tmp_path / "single")
    ddp = module(num_classes=17, tiny_img_size=128)
    _trainer(tmp_path, devices=2, strategy="ddp_spawn", callbacks=[WriteOnRankZero(tmp_path / "ddp")]).test(
        ddp, datamodule=_sample_dm())
    for name in ("summary.csv", "per_class.csv"):
        assert (tmp_path / "ddp" / name).read_text() == (tmp_path / "single" / name).read_text()
    assert "person" in (tmp_path / "single" / "per_class.csv").read_text()


def test_num_classes_must_match_the_data(tmp_path):
    from litseg.io import ConfigError

    with pytest.raises(ConfigError, match="model.init_args.num_classes.*17 classes"):
        _trainer(tmp_path).validate(module(num_classes=4), datamodule=_sample_dm())


def test_the_demo_recipe_lowers_the_loss_on_the_bundled_sample(tmp_path):
    import csv

    from litseg.cli import LitSegCLI

    LitSegCLI(args=["fit", "--config", "configs/saom/demo.yaml", "--trainer.max_epochs", "6",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)])
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    per_epoch: dict[int, list[float]] = {}
    for r in rows:
        if r.get("train/loss"):
            per_epoch.setdefault(int(r["epoch"]), []).append(float(r["train/loss"]))
    mean = {e: sum(v) / len(v) for e, v in per_epoch.items()}
    assert mean[5] < 0.95 * mean[0], mean
