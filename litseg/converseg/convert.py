"""The released ConverSeg-Net checkpoints -> this suite's layout, and the trained SAM2 mask decoder on disk.

Released files (converseg.md §3.5, item 17), both ``torch.save`` dicts:

* ``ConverSeg-Net_sam2_90000.torch`` = ``{"model": SAM2Base.state_dict()}`` (hiera-L SAM 2.0, encoder included);
* ``ConverSeg-Net_plm_90000.torch`` = ``{"plm": LanguageAdapter.state_dict()}``: the PEFT-wrapped Qwen under
  ``backbone.`` (``backbone.base_model.model.<module>.base_layer.weight``, ``...lora_A.default.weight``,
  ``...lora_B.default.weight`` and every other frozen Qwen weight) and the adapter head ``to_sparse.*``,
  ``to_dense.0.*``, ``to_dense.2.*``, ``txt_norm.*``, ``scale``, ``temp``.

:func:`convert_released_checkpoint` maps them to ``{"sam2_decoder", "prompt_adapter", "lora"}``:

=================================================== ===========================================================
released key                                        converted
=================================================== ===========================================================
``model/sam_mask_decoder.<k>``                      ``sam2_decoder/<k>`` (``Sam2Segmenter.mask_decoder``)
``model/<other SAM2Base module>.<k>``               dropped: frozen, identical to the base SAM2 checkpoint
``plm/to_sparse.*, to_dense.{0,2}.*, txt_norm.*,``  ``prompt_adapter/<same name>`` (no rename)
``plm/scale, plm/temp``
``plm/backbone.<p>.lora_{A,B}.default.weight``      ``lora/<p>.lora_{A,B}.weight``: PEFT's
                                                    ``adapter_model.safetensors`` layout (adapter name removed),
                                                    for ``peft.set_peft_model_state_dict``
``plm/backbone.<other>``                            dropped: the frozen Qwen2.5-VL base weights (public model)
=================================================== ===========================================================

Files are read with :func:`litseg.checkpoint.load_checkpoint` (``weights_only=True``; upstream's fork needed
``weights_only=False`` only because of torch's default, §7). Unknown or missing keys raise
:class:`~litseg.io.DataError` naming the file and the first keys.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from litseg.checkpoint import load_checkpoint, load_weights
from litseg.io import DataError
from litseg.nets.converseg import Sam2Segmenter

__all__ = [
    "ADAPTER_KEYS", "DECODER_FORMAT", "SAM2_MODULES", "convert_released_checkpoint", "load_decoder", "save_decoder",
]

PathLike = str | os.PathLike[str]
StateDict = dict[str, torch.Tensor]
DECODER_FORMAT = "litseg.converseg.sam2_decoder/1"
# language_adapter.py L115-133 (converseg.md §1.4): LayerNorm, Linear, 2-layer SiLU MLP, two learnable scalars.
ADAPTER_KEYS = (
    "txt_norm.weight", "txt_norm.bias", "to_sparse.weight", "to_sparse.bias", "to_dense.0.weight", "to_dense.0.bias",
    "to_dense.2.weight", "to_dense.2.bias", "scale", "temp",
)
# Top-level children / parameters of sam2.modeling.sam2_base.SAM2Base (SAM 2.0 and 2.1 configs).
SAM2_MODULES = (
    "image_encoder", "mask_downsample", "maskmem_tpos_enc", "memory_attention", "memory_encoder", "no_mem_embed",
    "no_mem_pos_enc", "no_obj_embed_spatial", "no_obj_ptr", "obj_ptr_proj", "obj_ptr_tpos_proj", "sam_mask_decoder",
    "sam_prompt_encoder",
)
# Keys every SAM2 mask decoder has (mask_decoder.py): a file without them is not a SAM2 state dict.
_DECODER_CORE = ("iou_token.weight", "mask_tokens.weight", "output_upscaling.0.weight")
_LORA = re.compile(r"^backbone\.(?P<path>.+)\.(?P<ab>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")


def _first(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _tensors(path: PathLike, sd: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping):
        raise DataError(path, f"{what!r} is a {type(sd).__name__}, not a state dict")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(path, f"{what!r} has non-tensor entries: {_first(bad)}")
    return dict(sd)


def _convert_sam2(path: PathLike, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unknown = [k for k in sd if k.split(".", 1)[0] not in SAM2_MODULES]
    if unknown:
        raise DataError(path, f"unknown keys in the SAM2 state dict 'model': {_first(unknown)}")
    prefix = "sam_mask_decoder."
    decoder = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    missing = [prefix + k for k in _DECODER_CORE if k not in decoder]
    if missing:
        raise DataError(path, f"missing SAM2 mask-decoder keys: {_first(missing)}")
    return decoder


def _convert_plm(path: PathLike, sd: StateDict) -> tuple[StateDict, StateDict]:
    missing = [k for k in ADAPTER_KEYS if k not in sd]
    if missing:
        raise DataError(path, f"missing adapter-head keys in 'plm': {_first(missing)}")
    unknown = [k for k in sd if k not in ADAPTER_KEYS and not k.startswith("backbone.")]
    if unknown:
        raise DataError(path, f"unknown keys in 'plm': {_first(unknown)}")
    adapter = {k: sd[k] for k in ADAPTER_KEYS}
    lora: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _LORA.match(key)
        if match:  # PEFT save_pretrained layout: the adapter name ("default") is not part of the key
            name = f"{match['path']}.{match['ab']}.weight"
            if name in lora:
                raise DataError(path, f"more than one LoRA adapter in 'plm' ({key})")
            lora[name] = value
    if not lora:
        raise DataError(path, "no LoRA weights (backbone.*.lora_A.<adapter>.weight) in 'plm'")
    stems = {ab: {k.rsplit(f".{ab}.", 1)[0] for k in lora if f".{ab}." in k} for ab in ("lora_A", "lora_B")}
    unpaired = stems["lora_A"] ^ stems["lora_B"]
    if unpaired:
        raise DataError(path, f"LoRA weights without their A / B partner: {_first(unpaired)}")
    return adapter, lora


def convert_released_checkpoint(path: PathLike, plm_path: PathLike | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Released ConverSeg-Net file(s) -> ``{"sam2_decoder": ..., "prompt_adapter": ..., "lora": ...}``.

    ``path`` (and ``plm_path``) may be either released file: the ``{"model"}`` SAM2 one fills ``sam2_decoder``,
    the ``{"plm"}`` one ``prompt_adapter`` and ``lora``; parts no given file holds stay empty dicts. See the
    module docstring for the key mapping.
    """
    out: dict[str, dict[str, torch.Tensor]] = {"sam2_decoder": {}, "prompt_adapter": {}, "lora": {}}
    for file in (path,) if plm_path is None else (path, plm_path):
        ckpt = load_checkpoint(file)
        parts = [k for k in ("model", "plm") if k in ckpt]
        if not parts:
            raise DataError(file, f"not a released ConverSeg-Net checkpoint: no 'model' / 'plm' entry "
                                  f"(top-level keys: {_first(map(str, ckpt))})")
        if "model" in ckpt:
            out["sam2_decoder"] = _convert_sam2(file, _tensors(file, ckpt["model"], "model"))
        if "plm" in ckpt:
            out["prompt_adapter"], out["lora"] = _convert_plm(file, _tensors(file, ckpt["plm"], "plm"))
    return out


def save_decoder(segmenter: Sam2Segmenter, path: PathLike) -> None:
    """Write the trained SAM2 mask decoder (``{"format", "image_size", "sam2_decoder"}``); the frozen encoder is
    not saved (unlike upstream's whole-SAM2 ``{"model"}`` files)."""
    state = {k: v.detach().cpu() for k, v in segmenter.mask_decoder.state_dict().items()}
    torch.save({"format": DECODER_FORMAT, "image_size": segmenter.image_size, "sam2_decoder": state}, path)


def load_decoder(segmenter: Sam2Segmenter, path: PathLike) -> None:
    """Load mask-decoder weights, strictly: a :func:`save_decoder` file, a :func:`convert_released_checkpoint`
    result saved with ``torch.save``, or an upstream / released whole-SAM2 ``{"model"}`` file."""
    ckpt = load_checkpoint(path)
    if "sam2_decoder" in ckpt:
        if ckpt.get("image_size", segmenter.image_size) != segmenter.image_size:
            raise DataError(path, f"decoder saved for image_size {ckpt['image_size']}, the model has "
                                  f"{segmenter.image_size}")
        load_weights(segmenter.mask_decoder, path, key="sam2_decoder", checkpoint=ckpt)
    elif "model" in ckpt:
        load_weights(segmenter.mask_decoder, path, key="model", prefix="sam_mask_decoder.", checkpoint=ckpt)
    else:
        raise DataError(path, f"no 'sam2_decoder' or 'model' entry (top-level keys: {_first(map(str, ckpt))})")
