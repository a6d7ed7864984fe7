"""ConverSeg's vision-language half: Qwen2.5-VL as a multimodal prompt encoder for SAM2.

Spec: /work/shared/specs/converseg.md §1.1-1.4, §1.7, §2 (upstream ``models/language_adapter.py``
of AadSah/ConverSeg, "LanguageAdapter"). One user turn (image, then prompt) goes through Qwen's chat
template; the last hidden layer (after the final RMSNorm) is LayerNorm-ed; every plain-text position
becomes one sparse SAM2 prompt token (Linear D->256 x scale) and the hidden state at the last
``<|im_end|>`` becomes the dense prompt (Linear-SiLU-Linear D->256 x clamp(temp, 0.01)) that replaces
SAM2's ``no_mask_embed``. The SAM2 side (letterboxing, decoder call, loss) lives elsewhere.

* :func:`load_qwen`: model + processor from a local folder (``local_files_only``, no remote code);
* :func:`encode_chat`, :func:`sparse_positions`, :func:`last_im_end_position`: the tokenisation
  and the positions the adapter reads;
* :class:`PromptAdapter`: the trainable head (upstream key names ``txt_norm``, ``to_sparse``,
  ``to_dense.0/.2``, ``scale``, ``temp`` are kept so a converter for the released ``plm`` state dict
  stays a prefix rename);
* :class:`ConverSegPrompter`: frozen Qwen + optional LoRA (peft) + the head, with adapter save / load.

transformers / peft are imported lazily (they are slow to import and only this method needs them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from litseg.io import DataError

if TYPE_CHECKING:
    from transformers import BatchFeature

__all__ = [
    "DEFAULT_PROMPT", "HEAD_WEIGHTS_NAME", "LORA_TARGET_MODULES", "MAX_TXT_LEN", "PROMPT_DIM", "ConverSegPrompter",
    "PromptAdapter", "blacklisted_token_ids", "encode_chat", "last_im_end_position", "load_qwen", "sparse_positions",
]

PROMPT_DIM = 256  # SAM2 mask decoder transformer_dim (spec §1.4 "C = 256")
MAX_TXT_LEN = 256  # prompt truncated to <= 256 tokens (spec §1.2 step 1)
DEFAULT_PROMPT = "segment"  # empty prompt -> "segment" (spec §3.2 step 5)
IM_END = "<|im_end|>"
# ConverSeg: language_adapter.py L78-107 "auto" targets resolved for Qwen2.5-VL (spec §2): LLM attention + MLP
# and, by suffix match, the vision tower's MLPs; not vision qkv/proj, the merger, embeddings or lm_head.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Added-vocab tokens whose lowercase text contains one of these are not "plain text" (spec §1.3).
_VISION_WORDS = ("image", "vision", "<img", "picture", "video")
HEAD_WEIGHTS_NAME = "prompt_adapter.safetensors"
_LORA_CONFIG_NAME = "adapter_config.json"


# --------------------------------------------------------------------------------------------- loading


def _require_folder(folder: str | os.PathLike[str], what: str, marker: str) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise DataError(path, f"{what} folder does not exist")
    if not (path / marker).is_file():
        raise DataError(path, f"{what} folder has no {marker}")
    return path


def load_qwen(folder: str | os.PathLike[str], dtype: torch.dtype = torch.bfloat16,
              device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """``(Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)`` from a local Hugging Face folder.

    ConverSeg: language_adapter.py (spec §1.1) loads ``Qwen2_5_VLForConditionalGeneration`` in bf16.
    Nothing downloads (``local_files_only``) and no remote code runs; a missing folder is a
    :class:`DataError` naming it, raised before transformers is asked.
    """
    path = _require_folder(folder, "Qwen2.5-VL model", "config.json")
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor = Qwen2_5_VLProcessor.from_pretrained(path, local_files_only=True)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), processor


# ----------------------------------------------------------------------------------------- tokenisation


def _truncate_prompt(tokenizer: Any, prompt: str, max_txt_len: int) -> str:
    # ConverSeg: language_adapter.py L237-282 (spec §1.2 step 1): tokenize without special tokens, cut, decode.
    prompt = prompt.strip() or DEFAULT_PROMPT
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_txt_len:
        return prompt
    return tokenizer.decode(ids[:max_txt_len])


def _to_pil(image: np.ndarray):
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"images must be uint8 HxWx3 arrays, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def encode_chat(processor: Any, images: Sequence[np.ndarray], prompts: Sequence[str], *,
                max_txt_len: int = MAX_TXT_LEN, min_pixels: int | None = None,
                max_pixels: int | None = None) -> BatchFeature:
    """One user turn per sample (image, then prompt) through the processor's chat template.

    ConverSeg: language_adapter.py L237-282 (spec §1.2): ``add_generation_prompt=False`` and Qwen's
    default system turn kept, so each row reads ``<|im_start|>system\\nYou are a helpful assistant.
    <|im_end|>\\n<|im_start|>user\\n<|vision_start|><|image_pad|>xK<|vision_end|>{prompt}<|im_end|>\\n``.
    Padding is on the right (pad = ``<|endoftext|>``). ``min_pixels`` / ``max_pixels`` are the Qwen
    resolution knob (spec §1.2 item 4); ``None`` keeps the processor defaults, which is what upstream
    effectively ran with. Images are passed as PIL (offline_building_blocks.md: not paths).
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        raise ValueError("encode_chat needs at least one sample")
    tokenizer = processor.tokenizer
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": _to_pil(image)},
                                      {"type": "text", "text": _truncate_prompt(tokenizer, prompt, max_txt_len)}]}]
        for image, prompt in zip(images, prompts)
    ]
    # transformers 5: processor options go through processor_kwargs (offline_building_blocks.md).
    processor_kwargs: dict[str, Any] = {"padding": True, "padding_side": "right", "truncation": False}
    if min_pixels is not None or max_pixels is not None:
        defaults = processor.image_processor.size
        processor_kwargs["size"] = {"shortest_edge": min_pixels or defaults["shortest_edge"],
                                    "longest_edge": max_pixels or defaults["longest_edge"]}
    return processor.apply_chat_template(conversations, add_generation_prompt=False, tokenize=True, return_dict=True,
                                         return_tensors="pt", processor_kwargs=processor_kwargs)


def blacklisted_token_ids(tokenizer: Any) -> list[int]:
    """Ids that are never "plain text": all special ids + added tokens naming images / vision / video.

    ConverSeg: language_adapter.py L286-353 (spec §1.3). For Qwen this drops ``<|im_start|>``,
    ``<|im_end|>``, ``<|endoftext|>``, the vision start/end/pad tokens and box/quad/object-ref tokens.
    """
    ids = set(tokenizer.all_special_ids)
    for token, index in tokenizer.get_added_vocab().items():
        if any(word in token.lower() for word in _VISION_WORDS):
            ids.add(index)
    return sorted(ids)


def _im_end_id(tokenizer: Any) -> int:
    index = tokenizer.convert_tokens_to_ids(IM_END)
    if index is None or (index == tokenizer.unk_token_id and tokenizer.unk_token != IM_END):
        raise ValueError(f"the tokenizer has no {IM_END} token")
    return int(index)


def last_im_end_position(input_ids: torch.Tensor, tokenizer: Any,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` index of the last ``<|im_end|>`` per row (the token closing the user turn).

    ConverSeg: language_adapter.py L286-353 (spec §1.3) uses ``tok.eos_token_id``, which is ``<|im_end|>``
    for Qwen2.5-VL-Instruct; it is looked up by name here. Fallback for a row without one: the last
    non-pad position (``attention.sum() - 1``).
    """
    hits = input_ids == _im_end_id(tokenizer)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last = torch.where(hits, positions, torch.full_like(positions, -1)).amax(dim=1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    fallback = attention_mask.long().sum(dim=1) - 1
    return torch.where(last >= 0, last, fallback)


def sparse_positions(input_ids: torch.Tensor, tokenizer: Any, attention_mask: torch.Tensor | None = None, *,
                     prompt_only: bool = False) -> torch.Tensor:
    """``[B, T]`` bool mask of the plain-text positions that become sparse SAM2 prompt tokens.

    ConverSeg: language_adapter.py L286-353 (spec §1.3, "must get right" item 4): attention on, id not
    blacklisted (:func:`blacklisted_token_ids`), and not the last ``<|im_end|>``. This deliberately
    **includes the chat-template words** ("system", "\\n", "You are a helpful assistant.", "user",
    "\\n" and the "\\n" after the closing ``<|im_end|>``), about 12 tokens besides the prompt's own.
    ``prompt_only=True`` (not upstream) keeps only the user text: the tokens after the last
    ``<|vision_end|>`` and before the last ``<|im_end|>``.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    blacklist = torch.tensor(blacklisted_token_ids(tokenizer), device=input_ids.device, dtype=input_ids.dtype)
    mask = attention_mask.bool() & ~torch.isin(input_ids, blacklist)
    eos = last_im_end_position(input_ids, tokenizer, attention_mask)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    mask &= positions != eos[:, None]
    if prompt_only:
        vision_end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
        hits = input_ids == vision_end
        start = torch.where(hits, positions, torch.full_like(positions, -1)).amax(dim=1)
        mask &= (positions > start[:, None]) & (positions < eos[:, None])
    return mask


# ---------------------------------------------------------------------------------------------- head


class PromptAdapter(nn.Module):
    """The "plm" head: last Qwen hidden layer -> SAM2 sparse tokens and the dense (no-mask) embedding.

    ConverSeg: language_adapter.py L115-133 (modules) and L342-353 (forward), spec §1.4::

        h      = LayerNorm(hidden)                                   # on every position
        sparse = Linear(D->C)(first N plain-text rows of h, zero-padded) * scale
        dense  = (Linear(D->C) -> SiLU -> Linear(C->C))(h[eos]) * clamp(temp, min=0.01)

    ``scale`` and ``temp`` are learnable scalars (init 1); Xavier-uniform weights, zero biases. A zero
    padded slot goes through the Linear and becomes ``bias * scale`` like upstream (``zero_padding=True``
    zeroes it instead); ``sparse_mask`` marks the real slots either way, and SAM2's decoder has no key
    padding mask, so padding participates in attention unless the caller uses batch 1 (spec §1.4).
    ``n_sparse_tokens=0`` keeps N = the batch maximum; N > 0 keeps the first N per row (padded to N).
    ``dense`` is ``[B, C]``; the SAM2 side broadcasts it to ``[B, C, 64, 64]``.
    """

    def __init__(self, hidden_size: int, out_dim: int = PROMPT_DIM, n_sparse_tokens: int = 0,
                 min_temp: float = 0.01, zero_padding: bool = False) -> None:
        super().__init__()
        if n_sparse_tokens < 0:
            raise ValueError(f"n_sparse_tokens must be >= 0, got {n_sparse_tokens}")
        self.n_sparse_tokens = n_sparse_tokens
        self.min_temp = min_temp
        self.zero_padding = zero_padding
        self.txt_norm = nn.LayerNorm(hidden_size)
        self.to_sparse = nn.Linear(hidden_size, out_dim)
        self.to_dense = nn.Sequential(nn.Linear(hidden_size, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.temp = nn.Parameter(torch.tensor(1.0))
        for linear in (self.to_sparse, self.to_dense[0], self.to_dense[2]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def temperature(self) -> torch.Tensor:
        return self.temp.clamp(min=self.min_temp)

    def forward(self, hidden: torch.Tensor, text_mask: torch.Tensor, eos_pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """``hidden`` [B,T,D], ``text_mask`` [B,T] bool, ``eos_pos`` [B] ->
        ``sparse`` [B,N,C], ``sparse_mask`` [B,N] bool, ``dense`` [B,C]."""
        weight = self.txt_norm.weight
        h = self.txt_norm(hidden.to(device=weight.device, dtype=weight.dtype))  # cast to the head's dtype first
        text_mask = text_mask.to(h.device).bool()
        batch, length, _ = h.shape
        counts = text_mask.sum(dim=1)
        n = self.n_sparse_tokens or max(int(counts.max().item()) if batch else 0, 1)
        # Stable sort puts the text positions first, in their original order.
        order = torch.sort((~text_mask).to(torch.int8), dim=1, stable=True).indices
        if n > length:
            order = torch.cat([order, order.new_zeros(batch, n - length)], dim=1)
        index = order[:, :n]
        slot_valid = torch.arange(n, device=h.device)[None, :] < counts[:, None]
        gathered = torch.gather(h, 1, index[..., None].expand(-1, -1, h.shape[-1]))
        gathered = gathered * slot_valid[..., None].to(h.dtype)  # missing slots are zero vectors (after LN)
        sparse = self.to_sparse(gathered) * self.scale
        if self.zero_padding:
            sparse = sparse * slot_valid[..., None].to(sparse.dtype)
        eos_state = h[torch.arange(batch, device=h.device), eos_pos.to(h.device).long()]
        dense = self.to_dense(eos_state) * self.temperature()
        return {"sparse": sparse, "sparse_mask": slot_valid, "dense": dense}


# -------------------------------------------------------------------------------------------- prompter


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class ConverSegPrompter(nn.Module):
    """Qwen2.5-VL (frozen, optionally LoRA-tuned) + :class:`PromptAdapter`: images + prompts -> SAM2 prompts.

    ConverSeg: language_adapter.py (spec §1.3-1.4, §1.7, §2). The Qwen base weights are frozen at
    construction; :meth:`apply_lora` adds the trainable LoRA matrices; the head is always trainable.
    The forward calls the inner ``Qwen2_5_VLModel`` (LoRA layers are injected in place, so they act
    there too) with ``output_hidden_states=True`` and takes ``hidden_states[-1]`` (= the output of
    the final RMSNorm): the lm_head logits upstream computes and discards are skipped (spec §2).
    """

    def __init__(self, model: nn.Module, processor: Any, *, n_sparse_tokens: int = 0, out_dim: int = PROMPT_DIM,
                 max_txt_len: int = MAX_TXT_LEN, min_pixels: int | None = None, max_pixels: int | None = None,
                 zero_padding: bool = False) -> None:
        super().__init__()
        self.backbone = model
        self.processor = processor
        self.max_txt_len = max_txt_len
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        for param in self.backbone.parameters():  # ConverSeg: language_adapter.py L78-107, base frozen first
            param.requires_grad_(False)
        # D_t from config.text_config.hidden_size (spec §1.1, language_adapter.py L109-113).
        hidden_size = int(model.config.text_config.hidden_size)
        reference = next(model.parameters())
        self.adapter = PromptAdapter(hidden_size, out_dim, n_sparse_tokens=n_sparse_tokens,
                                     zero_padding=zero_padding).to(device=reference.device, dtype=reference.dtype)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", **kwargs: Any) -> ConverSegPrompter:
        model, processor = load_qwen(folder, dtype=dtype, device=device)
        return cls(model, processor, **kwargs)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def qwen_model(self) -> nn.Module:
        """The inner ``Qwen2_5_VLModel`` (vision tower + language model, no lm_head), LoRA layers included."""
        base = self.backbone.get_base_model() if _is_peft(self.backbone) else self.backbone
        return base.model

    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target_modules: Sequence[str] = LORA_TARGET_MODULES) -> None:
        """Wrap the backbone with peft LoRA (spec §2): bias none, FEATURE_EXTRACTION, suffix-matched targets,
        so the LLM attention + MLP projections and the vision tower's MLPs get adapters."""
        from peft import LoraConfig, TaskType, get_peft_model

        if _is_peft(self.backbone):
            raise RuntimeError("LoRA is already applied")
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                            task_type=TaskType.FEATURE_EXTRACTION, target_modules=list(target_modules))
        self.backbone = get_peft_model(self.backbone, config)

    def encode(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> BatchFeature:
        return encode_chat(self.processor, images, prompts, max_txt_len=self.max_txt_len,
                           min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def hidden_states(self, inputs: BatchFeature) -> torch.Tensor:
        """``[B, T, D]`` last hidden layer (after the final RMSNorm) for encoded inputs (spec §1.3)."""
        device = next(self.backbone.parameters()).device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}
        dtype = next(self.backbone.parameters()).dtype
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        # last_hidden_state is hidden_states[-1] (after the final RMSNorm) without recording every layer;
        # transformers 5 records hidden_states through hooks that a spawned (DDP) copy does not keep.
        out = self.qwen_model()(**inputs, use_cache=False, return_dict=True)
        return out.last_hidden_state

    def forward(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``sparse`` [B,N,256], ``sparse_mask`` [B,N] bool, ``dense`` [B,256] (see :class:`PromptAdapter`)."""
        inputs = self.encode(images, prompts)
        hidden = self.hidden_states(inputs)
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        text_mask = sparse_positions(ids, self.tokenizer, attention)
        eos = last_im_end_position(ids, self.tokenizer, attention)
        return self.adapter(hidden, text_mask, eos)

    # ------------------------------------------------------------------------------------ save / load

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save_adapter(self, folder: str | os.PathLike[str]) -> Path:
        """LoRA via peft ``save_pretrained`` (adapter_config.json + adapter_model.safetensors, spec §2) and the
        head's tensors as ``prompt_adapter.safetensors`` (weights only, nothing pickled)."""
        from safetensors.torch import save_file

        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        if _is_peft(self.backbone):
            self.backbone.save_pretrained(str(path))
        state = {k: v.detach().contiguous().cpu() for k, v in self.adapter.state_dict().items()}
        save_file(state, str(path / HEAD_WEIGHTS_NAME))
        return path

    def load_adapter(self, folder: str | os.PathLike[str]) -> None:
        """Load what :meth:`save_adapter` wrote (safetensors only). The LoRA weights overwrite the current
        adapter (applying LoRA from the folder's config first when the backbone has none), like upstream's
        ``load_lora`` (spec §2); the head loads strictly."""
        from safetensors.torch import load_file

        path = _require_folder(folder, "ConverSeg adapter", HEAD_WEIGHTS_NAME)
        if (path / _LORA_CONFIG_NAME).is_file():
            self._load_lora(path)
        elif _is_peft(self.backbone):
            raise DataError(path, f"has no {_LORA_CONFIG_NAME} but the prompter has LoRA layers")
        state = load_file(str(path / HEAD_WEIGHTS_NAME), device=str(self.adapter.temp.device))
        try:
            self.adapter.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise DataError(path / HEAD_WEIGHTS_NAME, f"does not match the prompt adapter: {error}") from error

    def _load_lora(self, path: Path) -> None:
        from peft import PeftModel, load_peft_weights, set_peft_model_state_dict

        if not _is_peft(self.backbone):
            self.backbone = PeftModel.from_pretrained(self.backbone, str(path), is_trainable=True)
            return
        weights = load_peft_weights(str(path), device=str(next(self.backbone.parameters()).device))
        result = set_peft_model_state_dict(self.backbone, weights, adapter_name="default")
        lora_missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or lora_missing:
            raise DataError(path, f"LoRA weights do not match the model (unexpected {result.unexpected_keys[:3]}, "
                                  f"missing {lora_missing[:3]})")
