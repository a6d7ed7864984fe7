"""ConverSeg's Qwen2.5-VL prompt encoder (litseg.nets.converseg_vlm) on a tiny random Qwen built offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litseg.converseg import tiny_qwen
from litseg.converseg.tiny_qwen import TEXT_HIDDEN, tiny_qwen_folder
from litseg.io import DataError
from litseg.nets import converseg_vlm as cv
from litseg.nets.converseg_vlm import (
    LORA_TARGET_MODULES,
    ConverSegPrompter,
    PromptAdapter,
    encode_chat,
    last_im_end_position,
    load_qwen,
    sparse_positions,
)

SYSTEM_TEXT = "system\nYou are a helpful assistant."
PROMPTS = ["the red car", "segment the dog that is about to jump"]
# peft 0.21 still calls the deprecated transformers 5 name; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory) -> Path:
    return tiny_qwen_folder(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="module")
def processor(qwen_folder):
    return load_qwen(qwen_folder, dtype=torch.float32)[1]


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)]


def _prompter(folder: Path, lora: bool = False) -> ConverSegPrompter:
    prompter = ConverSegPrompter.from_pretrained(folder, dtype=torch.float32)
    if lora:
        prompter.apply_lora()
    return prompter.eval()


def _expected_ids(tok, prompt: str, n_image_tokens: int) -> tuple[list[int], list[int]]:
    """The chat of spec §1.2 built piece by piece; returns (ids, indexes of the prompt's own tokens)."""
    def special(token: str) -> list[int]:
        return [tok.convert_tokens_to_ids(token)]

    def text(piece: str) -> list[int]:
        return tok(piece, add_special_tokens=False)["input_ids"]

    head = (special("<|im_start|>") + text(SYSTEM_TEXT) + special("<|im_end|>") + text("\n")
            + special("<|im_start|>") + text("user\n") + special("<|vision_start|>")
            + special("<|image_pad|>") * n_image_tokens + special("<|vision_end|>"))
    body = text(prompt)
    ids = head + body + special("<|im_end|>") + text("\n")
    return ids, list(range(len(head), len(head) + len(body)))


# ------------------------------------------------------------------------------------------- builder


def test_tiny_qwen_folder_is_cached_and_seeded(qwen_folder, tmp_path):
    assert tiny_qwen_folder(qwen_folder.parent) == qwen_folder  # second call reuses the folder
    stamp = (qwen_folder / "model.safetensors").stat().st_mtime_ns
    tiny_qwen_folder(qwen_folder.parent)
    assert (qwen_folder / "model.safetensors").stat().st_mtime_ns == stamp
    again = tiny_qwen.build_tiny_qwen(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (qwen_folder / name).read_bytes()


# -------------------------------------------------------------------------------------- tokenisation


def test_chat_tokens_sparse_positions_and_im_end_match_a_hand_built_chat(processor, images):
    tok = processor.tokenizer
    inputs = encode_chat(processor, images, PROMPTS)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    merge = processor.image_processor.merge_size ** 2
    mask = sparse_positions(ids, tok, attention)
    prompt_mask = sparse_positions(ids, tok, attention, prompt_only=True)
    eos = last_im_end_position(ids, tok, attention)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    specials = set(cv.blacklisted_token_ids(tok))
    for row, prompt in enumerate(PROMPTS):
        n_image = int(inputs["image_grid_thw"][row].prod()) // merge
        expected, prompt_index = _expected_ids(tok, prompt, n_image)
        length = len(expected)
        # Right padding with <|endoftext|> (spec §1.3), add_generation_prompt=False: the row ends "<|im_end|>\n".
        assert ids[row, :length].tolist() == expected
        assert set(ids[row, length:].tolist()) <= {pad}
        assert attention[row].tolist() == [1] * length + [0] * (ids.shape[1] - length)
        assert int(eos[row]) == length - 2
        # Spec §1.3: every non-special, non-vision position, template words included, minus the closing EOS.
        plain = [i for i, t in enumerate(expected) if t not in specials]
        assert torch.nonzero(mask[row]).flatten().tolist() == plain
        assert len(plain) == len(prompt_index) + 12  # ~12 template tokens (spec §1.3)
        assert tok.decode([expected[i] for i in plain]) == f"{SYSTEM_TEXT}\nuser\n{prompt}\n"
        assert torch.nonzero(prompt_mask[row]).flatten().tolist() == prompt_index
        assert tok.decode(ids[row][prompt_mask[row]].tolist()) == prompt


def test_im_end_falls_back_to_last_real_token():
    class Tok:
        unk_token_id, unk_token = 0, "<unk>"

        def convert_tokens_to_ids(self, token):
            return 9

    ids = torch.tensor([[1, 9, 2, 9, 3, 0], [1, 2, 3, 4, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    assert last_im_end_position(ids, Tok(), attention).tolist() == [3, 3]


def test_empty_prompt_becomes_segment_and_long_prompts_are_truncated(processor, images):
    tok = processor.tokenizer
    inputs = encode_chat(processor, images, ["  ", "the red car " * 40], max_txt_len=5)
    prompt_mask = sparse_positions(inputs["input_ids"], tok, inputs["attention_mask"], prompt_only=True)
    assert tok.decode(inputs["input_ids"][0][prompt_mask[0]].tolist()) == "segment"
    assert int(prompt_mask[1].sum()) == 5
    with pytest.raises(ValueError, match="uint8"):
        encode_chat(processor, [images[0].astype(np.float32)], ["x"])


def test_resolution_knob_changes_the_visual_token_count(processor, images):
    default = encode_chat(processor, images[:1], ["x"])["image_grid_thw"]
    small = encode_chat(processor, images[:1], ["x"], min_pixels=28 * 28, max_pixels=28 * 28 * 2)["image_grid_thw"]
    assert int(small.prod()) < int(default.prod())


# ----------------------------------------------------------------------------------------------- head


def _reference_head(head: PromptAdapter, hidden, text_mask, eos):
    h = F.layer_norm(hidden, (hidden.shape[-1],), head.txt_norm.weight, head.txt_norm.bias)
    rows = [h[b][text_mask[b]] for b in range(hidden.shape[0])]
    dense = head.to_dense(h[torch.arange(hidden.shape[0]), eos]) * head.temp.clamp(min=0.01)
    return rows, dense


def test_prompt_adapter_shapes_order_padding_and_layernorm():
    torch.manual_seed(0)
    head = PromptAdapter(16, out_dim=8)
    assert head.scale.item() == 1.0 and head.temp.item() == 1.0
    assert all(m.bias.abs().sum().item() == 0 for m in (head.to_sparse, head.to_dense[0], head.to_dense[2]))
    with torch.no_grad():  # a non-identity LayerNorm so "applied" is visible
        head.txt_norm.weight.uniform_(0.5, 2.0)
        head.txt_norm.bias.uniform_(-1.0, 1.0)
        head.to_sparse.bias.uniform_(-1.0, 1.0)
        head.scale.fill_(1.7)
    hidden = torch.randn(2, 7, 16) * 5 + 3
    text_mask = torch.tensor([[0, 1, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    eos = torch.tensor([5, 3])
    out = head(hidden, text_mask, eos)
    assert out["sparse"].shape == (2, 3, 8) and out["sparse_mask"].shape == (2, 3) and out["dense"].shape == (2, 8)
    assert out["sparse_mask"].tolist() == [[True, True, True], [True, False, False]]
    rows, dense = _reference_head(head, hidden, text_mask, eos)
    torch.testing.assert_close(out["sparse"][0], head.to_sparse(rows[0]) * 1.7)
    torch.testing.assert_close(out["sparse"][1, :1], head.to_sparse(rows[1]) * 1.7)
    # Upstream pads with zero vectors *before* the Linear: padded slots are bias * scale (spec §1.4).
    torch.testing.assert_close(out["sparse"][1, 1:], (head.to_sparse.bias * 1.7).expand(2, 8))
    torch.testing.assert_close(out["dense"], dense)
    # LayerNorm on every position: an affine change of the hidden states changes nothing.
    again = head(hidden * 4.0 - 2.0, text_mask, eos)
    torch.testing.assert_close(again["sparse"], out["sparse"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again["dense"], out["dense"], rtol=1e-4, atol=1e-4)
    # Opt-in zero padding and a fixed N.
    head.zero_padding, head.n_sparse_tokens = True, 4
    fixed = head(hidden, text_mask, eos)
    assert fixed["sparse"].shape == (2, 4, 8)
    assert fixed["sparse"][1, 1:].abs().sum().item() == 0.0
    torch.testing.assert_close(fixed["sparse"][0, :3], out["sparse"][0])


def test_prompt_adapter_temperature_is_clamped_below_at_001():
    torch.manual_seed(0)
    head = PromptAdapter(16, out_dim=8)
    hidden, text_mask, eos = torch.randn(1, 4, 16), torch.ones(1, 4, dtype=torch.bool), torch.tensor([3])
    raw = head.to_dense(head.txt_norm(hidden)[:, 3])
    for temp, factor in ((2.5, 2.5), (0.01, 0.01), (-3.0, 0.01), (0.001, 0.01)):
        with torch.no_grad():
            head.temp.fill_(temp)
        torch.testing.assert_close(head(hidden, text_mask, eos)["dense"], raw * factor)
    head.zero_grad()
    head(hidden, text_mask, eos)["dense"].sum().backward()
    assert float(head.temp.grad) == 0.0  # clamped: no gradient through temp (torch.clamp semantics)


# ----------------------------------------------------------------------------------------- prompter


def test_hidden_states_are_the_full_models_last_layer(qwen_folder, images):
    prompter = _prompter(qwen_folder)
    inputs = prompter.encode(images, PROMPTS)
    with torch.no_grad():
        full = prompter.backbone(**inputs, output_hidden_states=True, use_cache=False).hidden_states[-1]
        ours = prompter.hidden_states(inputs)
    torch.testing.assert_close(ours, full)
    out = prompter(images, PROMPTS)
    n = int(sparse_positions(inputs["input_ids"], prompter.tokenizer, inputs["attention_mask"]).sum(1).max())
    assert out["sparse"].shape == (2, n, 256) and out["dense"].shape == (2, 256)
    assert out["sparse_mask"].sum(1).tolist() == [len(prompter.tokenizer(p, add_special_tokens=False)["input_ids"]) + 12
                                             for p in PROMPTS]


def test_lora_trains_only_lora_and_head_on_the_seven_suffixes(qwen_folder, images):
    prompter = _prompter(qwen_folder)
    base = prompter.backbone
    assert not any(p.requires_grad for p in base.parameters())
    expected_lora = 0
    targets: dict[str, torch.nn.Linear] = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES:
            targets[name] = module
            expected_lora += 16 * (module.in_features + module.out_features)
    head_params = sum(p.numel() for p in prompter.adapter.parameters())
    assert head_params == 64 + 64 + (64 * 256 + 256) + (64 * 256 + 256) + (256 * 256 + 256) + 2
    prompter.apply_lora()
    named = dict(prompter.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert all(".lora_A." in n or ".lora_B." in n or n.startswith("adapter.") for n in trainable)
    assert sum(named[n].numel() for n in trainable) == expected_lora + head_params
    lora_modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n}
    assert lora_modules == set(LORA_TARGET_MODULES)
    # Spec §2: the LLM projections and the vision tower MLPs; not vision attention, merger or lm_head.
    assert any(".visual.blocks." in n and ".mlp.gate_proj." in n for n in trainable)
    assert any(".language_model.layers." in n and ".self_attn.q_proj." in n for n in trainable)
    assert not any(re.search(r"\.(qkv|proj|merger|lm_head)\.", n) for n in trainable)
    assert sum(1 for n in trainable if ".lora_A." in n) == len(targets)
    config = prompter.backbone.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (16, 32, 0.05, "none")
    assert str(config.task_type).endswith("FEATURE_EXTRACTION")
    prompter.train()
    out = prompter(images, PROMPTS)
    (out["sparse"].sum() + out["dense"].sum()).backward()
    assert all(p.grad is None for n, p in named.items() if n not in trainable)
    assert any(float(named[n].grad.abs().sum()) > 0 for n in trainable if ".lora_B." in n)
    assert float(prompter.adapter.txt_norm.weight.grad.abs().sum()) > 0


def test_save_and_load_adapter_round_trip(qwen_folder, images, tmp_path):
    torch.manual_seed(1)
    trained = _prompter(qwen_folder, lora=True)
    with torch.no_grad():  # move away from the init (lora_B = 0) so the round trip is meaningful
        for name, param in trained.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    folder = trained.save_adapter(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", cv.HEAD_WEIGHTS_NAME} <= {
        p.name for p in folder.iterdir()}
    with torch.no_grad():
        reference = trained(images, PROMPTS)
        untouched = _prompter(qwen_folder)(images, PROMPTS)
    assert not torch.allclose(untouched["dense"], reference["dense"])
    for fresh in (_prompter(qwen_folder), _prompter(qwen_folder, lora=True)):  # LoRA from file / overwrite
        fresh.load_adapter(folder)
        fresh.eval()
        with torch.no_grad():
            out = fresh(images, PROMPTS)
        for key in reference:
            assert torch.equal(out[key], reference[key]), key
    head_only = _prompter(qwen_folder)
    head_folder = head_only.save_adapter(tmp_path / "head_only")
    assert not (head_folder / "adapter_config.json").exists()
    with pytest.raises(DataError, match="has no adapter_config.json"):
        _prompter(qwen_folder, lora=True).load_adapter(head_folder)


def test_missing_folders_raise_data_error_naming_them(tmp_path, qwen_folder):
    missing = tmp_path / "no_such_qwen"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_qwen(missing)
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_qwen(tmp_path)  # exists but holds no config.json
    with pytest.raises(DataError, match=re.escape(str(missing))):
        ConverSegPrompter.from_pretrained(missing)
    prompter = _prompter(qwen_folder)
    with pytest.raises(DataError, match=re.escape(str(missing))):
        prompter.load_adapter(missing)


def test_no_remote_code_and_no_pickle_loading():
    for path in (Path(cv.__file__), Path(tiny_qwen.__file__)):
        source = path.read_text()
        assert "trust_remote_code" not in source, path
        assert "torch.load(" not in source and "import pickle" not in source, path
    assert "local_files_only=True" in Path(cv.__file__).read_text()
    assert TEXT_HIDDEN == 64
