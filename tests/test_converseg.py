"""ConverSeg's LightningModule with a tiny random Qwen2.5-VL and a tiny SAM2: the loss falls, the
feature cache changes nothing, the saved artefacts reproduce the model, per-group gIoU / cIoU,
evaluate.py's files and a 2-process DDP evaluation equal to one process."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules.converseg import ConverSegDataModule
from lit_modules.converseg import ConverSeg, group_scores
from litseg.converseg.tiny_qwen import tiny_qwen_folder
from litseg.io import DataError
from litseg.nets.sam import TINY_SAM2_CONFIG, tiny_sam2_overrides
from tests.helpers import REPO, WriteOnRankZero

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> str:
    return str(tiny_qwen_folder(tmp_path_factory.mktemp("qwen")))


def build(qwen: str, seed: int = 0, **kw) -> ConverSeg:
    torch.manual_seed(seed)  # the random SAM2 encoder and the LoRA / head initialisation
    args = {"qwen": qwen, "qwen_dtype": "float32", "sam2_config": TINY_SAM2_CONFIG,
            "sam2_overrides": tiny_sam2_overrides(128), "lr": 1e-3} | kw
    return ConverSeg(**args)


def datamodule(**kw) -> ConverSegDataModule:
    args = {"root": str(REPO / "sample_data/converseg_coco128"), "train_jsonl": "train/dataset.jsonl",
            "val": "eval/items.json", "test": "eval/items.json", "size": 128, "target_size": 32, "batch_size": 2} | kw
    return ConverSegDataModule(**args)


def batches(n: int = 2) -> list[dict]:
    dm = datamodule()
    dm.setup("fit")
    loader = dm.train_dataloader()
    return [b for b, _ in zip(loader, range(n), strict=False)]


def test_a_short_fit_lowers_the_loss(qwen):
    m = build(qwen)
    opt = torch.optim.AdamW(m.param_groups()[0]["params"], lr=1e-3, weight_decay=1e-4)
    data = batches(2)
    losses = []
    for _ in range(6):
        total = 0.0
        for b in data:
            loss = m.training_step(b, 0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.param_groups()[0]["params"], 1.0)
            opt.step()
            total += float(loss)
        losses.append(total)
    assert losses[-1] < 0.8 * losses[0], losses


def test_only_the_decoder_the_adapter_head_and_lora_train(qwen):
    m = build(qwen)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("segmenter.sam2.sam_mask_decoder") or ".adapter." in f".{n}"
                         or "lora_" in n for n in names), sorted(names)[:10]
    assert any("lora_A" in n for n in names) and any(n.startswith("prompter.adapter") for n in names)
    assert not any(p.requires_grad for p in m.segmenter.sam2.image_encoder.parameters())


def test_feature_cache_gives_identical_losses(qwen):
    cached, fresh = build(qwen, feature_cache=True), build(qwen, feature_cache=False)
    data = batches(1)
    for _ in range(2):  # the second pass reads the cache
        a, b = cached.training_step(data[0], 0), fresh.training_step(data[0], 0)
        assert torch.equal(a, b)
    assert cached.segmenter.cache_size > 0 and fresh.segmenter.cache_size == 0


def test_saved_artefacts_reproduce_the_predictions(qwen, tmp_path):
    m = build(qwen)
    opt = torch.optim.AdamW(m.param_groups()[0]["params"], lr=1e-2)
    b = batches(1)[0]
    for _ in range(2):
        loss = m.training_step(b, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.save_artefacts(tmp_path / "artefacts")
    assert (tmp_path / "artefacts" / "lora_plm_adapter" / "adapter_config.json").is_file()
    restored = build(qwen, artefacts=str(tmp_path / "artefacts"))
    untrained = build(qwen)
    m.eval(), restored.eval(), untrained.eval()
    with torch.no_grad():
        ours = m.low_res_logits(b)
        assert torch.equal(ours, restored.low_res_logits(b))
        assert not torch.equal(ours, untrained.low_res_logits(b))


def test_group_scores_by_hand():
    rows = [{"split": "human_annotated", "concept": "affordances", "intersection": 5, "union": 10, "iou": 0.5},
            {"split": "human_annotated", "concept": "spatial", "intersection": 0, "union": 0, "iou": 1.0},
            {"split": "sam_seeded", "concept": "", "intersection": 3, "union": 12, "iou": 0.25}]
    table = {r["group"]: r for r in group_scores(rows)}
    assert table["all"]["gIoU"] == pytest.approx(100 * (0.5 + 1.0 + 0.25) / 3)
    assert table["all"]["cIoU"] == pytest.approx(100 * 8 / 22)
    assert table["split=human_annotated"]["cIoU"] == pytest.approx(50.0)
    assert table["split=human_annotated concept=spatial"]["gIoU"] == 100.0
    assert table["split=sam_seeded"]["samples"] == 1
    assert math.isnan(group_scores([])[0]["gIoU"])


def test_missing_model_folders_stop_naming_them(qwen, tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        build(qwen, sam2_checkpoint=str(tmp_path / "sam2_hiera_large.pt"))
    with pytest.raises(DataError) as err:
        build(str(tmp_path / "Qwen2.5-VL-3B-Instruct"))
    assert str(tmp_path / "Qwen2.5-VL-3B-Instruct") in str(err.value)


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(accelerator="cpu", devices=kw.pop("devices", 1), logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def test_test_loop_writes_tables_and_panels_and_ddp_equals_one_process(qwen, tmp_path):
    single = build(qwen, mask_selection="multimask_argmax")
    state = {k: v.clone() for k, v in single.state_dict().items()}
    # batch 1: Qwen's float sums depend on the batch shape (last bits), not on the rank; 9 samples: ranks get 5 and 4
    _trainer(tmp_path).test(single, datamodule=datamodule(batch_size=1, max_samples=9))
    single.write_evaluation(tmp_path / "single")
    rows = {r["group"]: r for r in single.evaluation_rows}
    assert rows["all"]["samples"] == 9 and 0.0 <= rows["all"]["gIoU"] <= 100.0
    assert sorted(p.name for p in (tmp_path / "single" / "panels").glob("*.png"))
    ddp = build(qwen, mask_selection="multimask_argmax")
    ddp.load_state_dict(state)
    _trainer(tmp_path, devices=2, strategy="ddp_spawn", callbacks=[WriteOnRankZero(tmp_path / "ddp")]).test(
        ddp, datamodule=datamodule(batch_size=1, max_samples=9))
    for name in ("results.csv", "per_sample.csv"):
        assert (tmp_path / "ddp" / name).read_text() == (tmp_path / "single" / name).read_text()
