"""A tiny random Qwen2.5-VL + processor saved as an ordinary Hugging Face folder (no download).

For tests and the CPU demo (``python -m litseg.converseg.tiny_qwen runs/tiny_qwen`` prints the folder).
Recipe: a small
byte-level BPE trained with ``tokenizers`` wrapped as ``Qwen2Tokenizer`` (transformers 5 has no
``Qwen2TokenizerFast``), ``Qwen2VLImageProcessor`` + ``Qwen2VLVideoProcessor``, Qwen2-VL's chat
template, combined in ``Qwen2_5_VLProcessor``; the model is ``Qwen2_5_VLForConditionalGeneration``
with a 64-wide, 2-layer text model and a depth-2 vision tower. Traps handled below: ``bos`` inside
the small vocab, ``mrope_section`` summing to head_dim / 2, ``fullatt_block_indexes`` < depth,
vision ``out_hidden_size`` == text hidden size.

:func:`tiny_qwen_folder` builds once under ``root`` (a marker file is written last, so a half
written folder is rebuilt) and is seeded: the same weights and vocabulary on every build.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TEXT_HIDDEN = 64
# Qwen2-VL's own template (system turn inserted when the first message is not a system message),
# ConverSeg spec §1.2: `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n...`.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The Qwen special tokens, in Qwen's order (<|endoftext|> = pad, <|im_end|> = eos).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
CORPUS = [
    "You are a helpful assistant.", "system", "user", "assistant",
    "segment the dog that is about to jump", "the red car on the left", "something you could sit on",
    "segment", "objects that are unsafe to touch", "which surface would be slippery when wet?",
    "the person holding an umbrella", "a shadow cast by the tree", "all fruit that is not ripe yet",
]
_MARKER = ".tiny_qwen_complete"


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)  # deterministic for a fixed corpus
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # eos = <|im_end|>, pad = unk = <|endoftext|> as in Qwen; the rest are extra special tokens.
    extra = [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]
    return Qwen2Tokenizer(vocab=state["vocab"], merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          unk_token="<|endoftext|>", extra_special_tokens=extra)


def build_tiny_qwen(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL model + processor to ``folder`` (overwrites)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    tok = _build_tokenizer()
    tok.padding_side = "right"  # ConverSeg pads right: the last <|im_end|> closes the user turn
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tok)
    # Small images -> few visual tokens (ConverSeg spec §1.2 item 4: expose min/max pixels).
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    chat_template=CHAT_TEMPLATE)

    heads = 4
    head_dim = TEXT_HIDDEN // heads  # 16 -> mrope_section must sum to 8
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab, "hidden_size": TEXT_HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": heads, "num_key_value_heads": 2, "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": TEXT_HIDDEN,
            "fullatt_block_indexes": [1], "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    assert head_dim // 2 == sum(config.text_config.rope_parameters["mrope_section"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / _MARKER).write_text("ok\n")
    return folder


def tiny_qwen_folder(root: str | Path, seed: int = 0) -> Path:
    """The tiny Qwen folder under ``root``, built on first use (cached across calls by its marker file)."""
    folder = Path(root) / f"tiny_qwen2_5_vl_seed{seed}"
    if not (folder / _MARKER).is_file():
        build_tiny_qwen(folder, seed=seed)
    return folder


if __name__ == "__main__":
    import sys

    print(tiny_qwen_folder(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_qwen"))
