"""The one SAM / SAM2 builder (litseg/nets/sam.py): tiny builders, safe (fine-tuned) state-dict loading."""

from __future__ import annotations

import pytest
import torch

from litseg.io import DataError
from litseg.nets.sam import (
    TINY_SAM2_CONFIG,
    build_sam,
    build_sam2,
    load_sam_state_dict,
    tiny_sam,
    tiny_sam2,
    tiny_sam2_overrides,
)

# sam2 scripts some helpers with the deprecated torch.jit.script (upstream, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_sam_is_seeded_and_checks_its_sizes():
    assert same_weights(tiny_sam(), tiny_sam())
    assert not same_weights(tiny_sam(), tiny_sam(seed=1))
    assert not tiny_sam().training
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_sam(img_size=60)
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny_sam(prompt_dim=12)


@pytest.mark.parametrize("layout", ["plain", "lightning", "nested_prefix"])
def test_fine_tuned_sam_state_dict_loads(tmp_path, layout):
    tuned = tiny_sam(seed=3)
    sd = tuned.state_dict()
    if layout == "plain":
        ckpt = sd
    elif layout == "lightning":  # a LightningModule holding the SAM as ``self.sam``
        ckpt = {"state_dict": {f"sam.{k}": v for k, v in sd.items()} | {"head.weight": torch.zeros(1)}, "epoch": 2}
    else:
        ckpt = {"state_dict": {f"model.sam.{k}": v for k, v in sd.items()}}
    path = tmp_path / "tuned.ckpt"
    torch.save(ckpt, path)
    model = tiny_sam(seed=0)
    load_sam_state_dict(model, path)
    assert same_weights(model, tuned)


def test_sam_state_dict_mismatches_are_data_errors(tmp_path):
    wrong_shape = tmp_path / "bigger.pth"
    torch.save(tiny_sam(prompt_dim=16).state_dict(), wrong_shape)
    with pytest.raises(DataError, match=f"{wrong_shape}: weights do not match the model"):
        load_sam_state_dict(tiny_sam(), wrong_shape)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in tiny_sam().state_dict().items() if not k.startswith("mask_decoder.")}, partial)
    with pytest.raises(DataError, match="missing"):
        load_sam_state_dict(tiny_sam(), partial)
    load_sam_state_dict(tiny_sam(), partial, strict=False)  # a partial fine-tune is allowed when asked for
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"x": object()}}, pickled)
    with pytest.raises(DataError, match="weights_only=True"):
        load_sam_state_dict(tiny_sam(), pickled)


def test_build_sam_checks_before_building(tmp_path):
    with pytest.raises(ValueError, match="unknown SAM model_type 'vit_s'; known: vit_b, vit_l, vit_h"):
        build_sam("vit_s")
    missing = tmp_path / "sam_vit_b.pth"
    with pytest.raises(DataError, match=f"{missing}: checkpoint not found"):
        build_sam("vit_b", missing)


def test_tiny_sam2_and_build_sam2(tmp_path):
    model = tiny_sam2(image_size=64)
    assert int(model.image_size) == 64 and not model.training
    assert same_weights(model, tiny_sam2(image_size=64))
    path = tmp_path / "tuned_sam2.ckpt"  # a fine-tuned SAM2 as a Lightning attribute ``net``
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()}}, path)
    torch.manual_seed(5)
    loaded = build_sam2(TINY_SAM2_CONFIG, path, tiny_sam2_overrides(64))
    assert same_weights(loaded, model)
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_sam2_overrides(100)
    with pytest.raises(ValueError, match=r"unknown SAM2 config 'configs/nope.yaml'; known: .*sam2.1_hiera_t.yaml"):
        build_sam2("configs/nope.yaml")
    with pytest.raises(DataError, match="checkpoint not found"):
        build_sam2(TINY_SAM2_CONFIG, tmp_path / "nowhere.pt")
