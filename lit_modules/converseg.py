"""ConverSeg: SAM2 prompted by Qwen2.5-VL hidden states through a LoRA-tuned adapter (Sahoo &
Gkioxari, CVPR 2026; upstream ``train.py`` / ``eval.py`` / ``demo.py``).

The prompt side (``litseg/nets/converseg_vlm.py``) runs one chat turn (the original image, then the
free-text prompt) through Qwen2.5-VL with LoRA; its last hidden layer, after a trainable LayerNorm,
gives sparse tokens (every plain-text position -> Linear(D, 256) x scale) and a dense prompt (the last
``<|im_end|>`` -> MLP x clamped temperature, in place of ``no_mask_embed``). The mask side
(``litseg/nets/converseg.py``) is SAM2 with a frozen encoder (``no_mem_embed`` added, high-res
features, optional feature cache) and a trained mask decoder; the prompt encoder is unused.

Training: BCE + 0.25 dice on mask token 0 at the decoder's low resolution (256 for SAM2 at 1024)
against the eroded, letterboxed target; AdamW 1e-4 / 1e-4 over decoder + adapter head + LoRA, with
gradient accumulation, clipping 1.0 and warm-up + cosine to a floor per optimiser update (set in
the recipes: ``accumulate_grad_batches``, ``gradient_clip_val``, ``litseg.schedules.WarmupCosine``).

Evaluation: gIoU (mean per-sample IoU, empty-vs-empty = 1) and cIoU (Sum I / Sum U) at the original
ground-truth resolution, logits > 0 (``GIoUCIoU``, exact under DDP), overall and per split and per
concept (per-sample rows gathered from every rank). ``mask_selection`` picks token 0 (as trained),
the argmax-IoU of the three multimask tokens (upstream eval.py / demo.py) or SAM's dynamic
stability; ``eval_geometry`` is the training / demo letterbox or upstream eval.py's stretch to a
square.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lit_modules.base import LitSegModule
from litseg.converseg.convert import load_decoder, save_decoder
from litseg.distributed import gather_rows
from litseg.imaging import normalize
from litseg.io import write_png, write_table
from litseg.metrics.masks import GIoUCIoU
from litseg.nets.converseg import Sam2Segmenter, converseg_loss, logits_to_original
from litseg.nets.converseg_vlm import ConverSegPrompter
from litseg.nets.sam import build_sam2

GREEN = (0, 255, 0)
RED = (255, 0, 0)


class ConverSeg(LitSegModule):
    """Free-text segmentation: Qwen2.5-VL (LoRA) -> prompt adapter -> SAM2 mask decoder.

    Args:
        qwen: local Hugging Face folder of Qwen2.5-VL (3B / 7B Instruct, or the tiny test model of
            ``python -m litseg.converseg.tiny_qwen``). Never downloaded; no remote code.
        qwen_dtype: Qwen's parameter dtype (``bfloat16`` as upstream; ``float32`` on CPU).
        qwen_min_pixels, qwen_max_pixels: the image resolution Qwen sees (null = the processor's defaults,
            what the released model was trained with).
        sam2_config: a ``sam2`` package config (``configs/sam2/sam2_hiera_l.yaml`` for the released model).
        sam2_checkpoint: its weights file; null = random (tests).
        sam2_overrides: Hydra overrides of the config (tiny test models).
        lora_r, lora_alpha, lora_dropout: PEFT LoRA on the seven projection suffixes (16 / 32 / 0.05).
        artefacts: a folder written by a previous run (``lora_plm_adapter/``, ``sam2_decoder.pt``) to start from.
        mask_selection: ``token0`` | ``multimask_argmax`` | ``dynamic_stability`` at evaluation (training
            always supervises token 0).
        eval_geometry: ``letterbox`` (training / demo.py) or ``stretch`` (upstream eval.py: the image
            resized to the square without padding, logits straight back to H x W).
        feature_cache: keep each image's SAM2 features (CPU) for the run: the encoder is frozen and there is
            no augmentation.
        num_panels: validation samples drawn as image | GT | prediction panels (W&B images; evaluate.py PNGs).
        lr, weight_decay, kwargs: :class:`lit_modules.base.LitSegModule` (AdamW 1e-4 / 1e-4 upstream).
    """

    evaluation_args: ClassVar[tuple[str, ...]] = ("mask_selection", "eval_geometry", "feature_cache", "num_panels")

    def __init__(
        self,
        qwen: str,
        qwen_dtype: Literal["bfloat16", "float32"] = "bfloat16",
        qwen_min_pixels: int | None = None,
        qwen_max_pixels: int | None = None,
        sam2_config: str = "configs/sam2/sam2_hiera_l.yaml",
        sam2_checkpoint: str | None = None,
        sam2_overrides: list[str] | None = None,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        artefacts: str | None = None,
        mask_selection: Literal["token0", "multimask_argmax", "dynamic_stability"] = "token0",
        eval_geometry: Literal["letterbox", "stretch"] = "letterbox",
        feature_cache: bool = True,
        num_panels: int = 6,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, **kwargs)
        self.save_hyperparameters()
        dtype = torch.bfloat16 if qwen_dtype == "bfloat16" else torch.float32
        # SAM2 first: a missing checkpoint stops before the (slow) Qwen load.
        sam2 = build_sam2(sam2_config, sam2_checkpoint, list(sam2_overrides or []), apply_postprocessing=False)
        self.segmenter = Sam2Segmenter(sam2, cache_features=feature_cache)
        self.prompter = ConverSegPrompter.from_pretrained(qwen, dtype=dtype, device="cpu", min_pixels=qwen_min_pixels,
                                                          max_pixels=qwen_max_pixels,
                                                          out_dim=self.segmenter.prompt_dim)
        self.prompter.apply_lora(r=lora_r, alpha=lora_alpha, dropout=lora_dropout)
        if artefacts is not None:
            self.load_artefacts(artefacts)
        self.mask_selection = mask_selection
        self.eval_geometry = eval_geometry
        self.num_panels = num_panels
        self.metrics = torch.nn.ModuleDict({stage: GIoUCIoU() for stage in ("val", "test")})
        self.sample_rows: list[dict[str, Any]] = []
        self.panels: list[tuple[str, np.ndarray]] = []
        self.empty_prompts = 0

    # ------------------------------------------------------------------ artefacts
    def save_artefacts(self, folder: str | Path) -> Path:
        """What upstream users load: the PEFT adapter folder (+ the adapter head), the SAM2 decoder weights."""
        folder = Path(folder)
        self.prompter.save_adapter(folder / "lora_plm_adapter")
        save_decoder(self.segmenter, folder / "sam2_decoder.pt")
        return folder

    def load_artefacts(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.prompter.load_adapter(folder / "lora_plm_adapter")
        load_decoder(self.segmenter, folder / "sam2_decoder.pt")

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            self.save_artefacts(root / "artefacts")

    # ------------------------------------------------------------------ forward
    def _inputs(self, batch: dict[str, Any], geometry: str) -> torch.Tensor:
        if geometry == "letterbox":
            return batch["image_1024"].to(self.device)
        # upstream eval.py: SAM2's transform resizes the original image to the square, no padding
        size = self.segmenter.image_size
        images = [F.interpolate(normalize(img.cpu().numpy())[None], (size, size), mode="bilinear",
                                align_corners=False, antialias=True)[0] for img in batch["image"]]
        return torch.stack(images).to(self.device)

    def low_res_logits(self, batch: dict[str, Any], mask_selection: str = "token0",
                       geometry: str = "letterbox") -> torch.Tensor:
        ids = [f"{geometry}:{i}" for i in batch["id"]]
        features = self.segmenter.encode_cached(ids, self._inputs(batch, geometry))
        images = [img.cpu().numpy() for img in batch["image"]]
        prompts = self.prompter(images, list(batch["prompt"]))
        # Evaluation decodes each sample with its own tokens only (upstream eval.py runs batch 1), so a
        # result does not depend on which samples share its batch; training keeps the padded batch as upstream.
        logits, _ = self.segmenter.predict(features, prompts["sparse"].float(), prompts["sparse_mask"],
                                           prompts["dense"].float(), mask_selection=mask_selection,
                                           per_sample=not self.training)
        return logits

    # ------------------------------------------------------------------ training
    def param_groups(self) -> list[dict[str, Any]]:
        # one group, weight decay on everything that trains (upstream AdamW over all parameters)
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.low_res_logits(batch, "token0", "letterbox")
        target = batch["target_256"].to(self.device)
        losses = converseg_loss(logits, target)
        n = len(batch["id"])
        with torch.no_grad():
            pred, gt = logits > 0, target > 0.5
            inter = (pred & gt).flatten(1).sum(1).float()
            union = (pred | gt).flatten(1).sum(1).float().clamp_min(1)  # upstream train/iou: empty/empty = 0
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log("train/bce", losses["bce"].detach(), batch_size=n)
        self.log("train/dice", 0.25 * losses["dice"].detach(), batch_size=n)  # upstream logs the weighted term
        self.log("train/iou", (inter / union).mean(), batch_size=n)
        return losses["loss"]

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        logits = self.low_res_logits(batch, self.mask_selection, self.eval_geometry)
        maps = logits_to_original(logits.float().cpu(), batch["letterbox"], self.eval_geometry)
        gts = [g.cpu() for g in batch["gt"]]
        self.metrics[stage].update(maps, gts)
        for i, (m, g) in enumerate(zip(maps, gts, strict=True)):
            p = m > 0
            inter, union = int((p & g).sum()), int((p | g).sum())
            self.sample_rows.append({"id": str(batch["id"][i]), "split": batch["split"][i] or stage,
                                     "concept": batch["concept"][i] or "", "prompt": batch["prompt"][i],
                                     "intersection": inter, "union": union,
                                     "iou": 1.0 if union == 0 else inter / (union + 1e-10)})
            if len(self.panels) < self.num_panels and self.global_rank == 0:
                self.panels.append((str(batch["id"][i]), panel(batch["image"][i].cpu().numpy(), g.numpy(), p.numpy())))

    def _start(self) -> None:
        self.sample_rows, self.panels = [], []

    def on_validation_epoch_start(self) -> None:
        self._start()

    def on_test_epoch_start(self) -> None:
        self._start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _end(self, stage: str) -> list[dict[str, Any]]:
        scores = self.metrics[stage].compute()
        self.metrics[stage].reset()
        self.log(f"{stage}/gIoU", scores["gIoU"].float(), sync_dist=False)
        self.log(f"{stage}/cIoU", scores["cIoU"].float(), sync_dist=False)
        rows = sorted(gather_rows(self.sample_rows), key=lambda r: (r["split"], r["id"]))
        self.sample_rows = rows
        table = group_scores(rows)
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger" and self.panels:
                import wandb

                logger.experiment.log({f"{stage}/panels": [wandb.Image(p, caption=k) for k, p in self.panels]})
        return table

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_epoch_end(self) -> None:
        self.evaluation_rows = self._end("test")

    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """``results.csv`` / ``.md`` (gIoU / cIoU overall, per split, per concept), ``per_sample.csv`` and
        the first ``num_panels`` image | GT | prediction panels."""
        if not self.evaluation_rows:
            raise RuntimeError("ConverSeg: no evaluation results; run the test loop first")
        output_dir = Path(output_dir)
        write_table(self.evaluation_rows, output_dir / "results.csv", output_dir / "results.md")
        write_table(self.sample_rows, output_dir / "per_sample.csv")
        images = self.write_pictures(output_dir / "panels", self.panels, "panel")
        self.log_report("converseg", self.evaluation_rows, images)
        return self.evaluation_rows

    # ------------------------------------------------------------------ predictions (evaluate.py --save_predictions)
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        logits = self.low_res_logits(batch, self.mask_selection, self.eval_geometry)
        maps = logits_to_original(logits.float().cpu(), batch["letterbox"], self.eval_geometry)
        return [{"id": str(batch["id"][i]), "prompt": batch["prompt"][i], "image": batch["image"][i].cpu().numpy(),
                 "gt": batch["gt"][i].cpu().numpy(), "pred": (maps[i] > 0).numpy()} for i in range(len(maps))]

    def write_predictions(self, outputs: list[list[dict[str, Any]]], folder: Path, split: str = "test") -> int:
        """Upstream eval.py's files per sample: ``<id>_pred.png``, ``_gt.png`` (0 / 255), ``_orig.png``,
        ``_panel.png`` (image | GT | prediction) and ``_prompt.txt``."""
        folder = Path(folder)
        count = 0
        for batch in outputs:
            for s in batch:
                stem = safe_stem(s["id"])
                write_png(folder / f"{stem}_pred.png", s["pred"].astype(np.uint8) * 255)
                write_png(folder / f"{stem}_gt.png", s["gt"].astype(np.uint8) * 255)
                write_png(folder / f"{stem}_orig.png", s["image"])
                write_png(folder / f"{stem}_panel.png", panel(s["image"], s["gt"], s["pred"]))
                (folder / f"{stem}_prompt.txt").write_text(s["prompt"] + "\n")
                count += 1
        return count


def safe_stem(sample_id: str) -> str:
    """A sample id as a file name (path separators and spaces replaced)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id) or "sample"


def group_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gIoU / cIoU (percent) overall, per split and per (split, concept) from per-sample rows."""
    def score(name: str, subset: list[dict[str, Any]]) -> dict[str, Any]:
        inter = sum(r["intersection"] for r in subset)
        union = sum(r["union"] for r in subset)
        return {"group": name, "samples": len(subset), "gIoU": 100 * float(np.mean([r["iou"] for r in subset])),
                "cIoU": 100 * inter / (union + 1e-10)}

    if not rows:
        return [{"group": "all", "samples": 0, "gIoU": math.nan, "cIoU": math.nan}]
    out = [score("all", rows)]
    splits = sorted({r["split"] for r in rows})
    if len(splits) > 1:
        out += [score(f"split={s}", [r for r in rows if r["split"] == s]) for s in splits]
    for s in splits:
        concepts = sorted({r["concept"] for r in rows if r["split"] == s and r["concept"]})
        out += [score(f"split={s} concept={c}", [r for r in rows if r["split"] == s and r["concept"] == c])
                for c in concepts]
    return out


def panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.65) -> np.ndarray:
    """Three tiles side by side as upstream's validation panels: image | GT (green) | prediction (red)."""
    def tint(mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
        out = image.astype(np.float32).copy()
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(colour, np.float32)
        return out.round().astype(np.uint8)

    return np.concatenate([image, tint(gt.astype(bool), GREEN), tint(pred.astype(bool), RED)], axis=1)
