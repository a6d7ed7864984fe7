"""SimpleClick (Liu et al., ICCV 2023) and CFR-ICL (Sun et al., AAAI 2024): a plain ViT that reads
the image *and* the clicks, a simple feature pyramid and a light segmentation head.

Rebuilt from the published architecture (``uncbiag/SimpleClick``:
``isegm/model/is_plainvit_model.py::PlainVitModel``, ``modeling/models_vit.py``,
``modeling/swin_transformer.py::SwinTransfomerSegHead``) with **the same parameter names**, so an
official ``cocolvis_vit_{base,large,huge}.pth`` (or a CFR-ICL file, same class, other weights)
loads with ``strict=True``:

* ``patch_embed_coords``: a second patch embedding (conv ``patch x patch``, stride ``patch``) of the
  3 click channels ``[prev_mask, positive disks, negative disks]`` (2 without the prev mask); its
  tokens are *added* to the image patch tokens (``backbone.patch_embed``) before the position
  embedding. So the ViT encodes image and clicks together: **every click re-runs the whole ViT**
  (there is no image embedding to cache, unlike SAM).
* ``backbone``: MAE-style ViT (``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  LayerNorm eps 1e-6, ``cls_token`` / ``pos_embed`` with a cls slot, and the unused classifier
  ``fc_norm`` / ``head`` kept for the key layout). ``forward_backbone`` splits the token grid into
  non-overlapping 224-pixel windows (``patchify``) for most blocks and runs global attention in
  every ``depth // 4``-th block (every 6th for depth 12), like the release.
* ``neck``: SimpleFPN, four scales 1/4, 1/8, 1/16, 1/32 from the single 1/16 ViT map.
* ``head``: the "SwinTransfomerSegHead" (a SegFormer-style all-MLP head): 1x1 conv + ReLU per scale
  (mmcv ``ConvModule`` layout ``convs.i.conv``), resize to 1/4, concat, ``fusion_conv``, optional
  ``up_conv1`` / ``up_conv2`` (``upsample`` x2 / x4), dropout, ``conv_seg``. Logits are resized to
  the input size with ``align_corners=True`` (``ISModel.forward``).

The checkpoint container is isegm's ``{'config': {'class': ..., 'params': {name: {'type', 'value',
'specified'}}}, 'state_dict': ...}``; :func:`build_simpleclick` rebuilds the network from the stored
``params`` (``backbone_params``, ``neck_params``, ``head_params``, ``with_prev_mask``, ``use_disks``,
``norm_radius``, ...). The official files also pickle the training loss object
(``head_params['loss_decode'] = CrossEntropyLoss()``), which ``weights_only=True`` refuses; see
:func:`load_simpleclick_checkpoint` for how that is handled without running pickled code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from litseg.checkpoint import load_checkpoint, load_weights
from litseg.io import DataError

__all__ = [
    "PLAINVIT_CLASSES", "PlainVitModel", "SimpleFPN", "SimpleClickHead", "VisionTransformer", "build_simpleclick",
    "click_disk_maps", "interpolate_pos_embed", "load_simpleclick_checkpoint", "official_config",
    "read_config_params",
]

PathLike = str | os.PathLike[str]

# isegm class paths of the plain-ViT click models (SimpleClick release, CFR-ICL, the RClicks copy).
PLAINVIT_CLASSES = ("isegm.model.is_plainvit_model.PlainVitModel",)
# Only globals under these packages may be replaced by inert placeholders when an official file is
# read (they are training-time objects in the config, never weights).
_STUB_PACKAGES = ("isegm", "mmcv", "mmseg", "easydict")
WINDOW_PIXELS = 224  # the MAE pre-training size; windows of this many pixels per side


# ----------------------------------------------------------------------------- ViT backbone


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, as upstream
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv, flattened to tokens (``proj`` as upstream)."""

    def __init__(self, img_size: Sequence[int], patch_size: Sequence[int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """The release's MAE ViT (``models_vit.VisionTransformer``), parameter names included."""

    def __init__(self, img_size: Sequence[int] = (224, 224), patch_size: Sequence[int] = (16, 16), in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, cls_feature_dim: int | None = None,
                 **unused: Any) -> None:
        super().__init__()
        if depth % 4:
            raise ValueError(f"SimpleClick's ViT needs a depth divisible by 4, got {depth}")
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        # Classifier of the MAE checkpoint: unused by the click model, kept for the key layout.
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        num_features = embed_dim
        if cls_feature_dim:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(embed_dim, cls_feature_dim))
            self.pre_logits.add_module("act", nn.Tanh())
            num_features = cls_feature_dim
        self.head = nn.Linear(num_features, num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    # --- windows of WINDOW_PIXELS (224 px: 14 x 14 tokens at patch 16, 16 x 16 at patch 14)
    def _windows(self) -> tuple[int, int]:
        gh, gw = self.patch_embed.grid_size
        ph, pw = self.patch_embed.patch_size
        # Upstream divides by zero below one window; a grid smaller than a window is one window.
        return max(1, gh // (WINDOW_PIXELS // ph)), max(1, gw // (WINDOW_PIXELS // pw))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B * wh * ww, N / (wh * ww), C)``, one row per window."""
        b, n, c = x.shape
        gh, gw = self.patch_embed.grid_size
        wh, ww = self._windows()
        x = x.view(b, wh, gh // wh, ww, gw // ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b * wh * ww, n // (wh * ww), c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        bw, n, c = x.shape
        gh, gw = self.patch_embed.grid_size
        wh, ww = self._windows()
        b = bw // (wh * ww)
        x = x.view(b, wh, ww, gh // wh, gw // ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, wh * ww * n, c)

    def forward_backbone(self, x: torch.Tensor, additional_features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)
        if additional_features is not None:
            x = x + additional_features
        x = x + self.pos_embed[:, 1:]
        depth = len(self.blocks)
        per_group = 6 if depth == 12 else depth // 4  # block i (1-based) is global iff i % per_group == 0
        windowed = False
        for i, block in enumerate(self.blocks, start=1):
            if i % per_group:
                if not windowed:
                    x, windowed = self.patchify(x), True
            elif windowed:
                x, windowed = self.unpatchify(x), False
            x = block(x)
        return self.unpatchify(x) if windowed else x


def interpolate_pos_embed(backbone: VisionTransformer, input_size: Sequence[int]) -> None:
    """Resize the position embedding to ``input_size`` pixels (bicubic, as
    ``pos_embed.interpolate_pos_embed_inference``) and set the token grid to match."""
    ph, pw = backbone.patch_embed.patch_size
    new_grid = (int(input_size[0]) // ph, int(input_size[1]) // pw)
    old_grid = backbone.patch_embed.grid_size
    if new_grid == old_grid:
        return
    if min(new_grid) < 1:
        raise ValueError(f"input size {tuple(input_size)} is smaller than one {ph}x{pw} patch")
    pos = backbone.pos_embed.data
    extra = pos.shape[1] - old_grid[0] * old_grid[1]
    tokens = pos[:, extra:].reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    backbone.pos_embed = nn.Parameter(torch.cat([pos[:, :extra], tokens], dim=1), requires_grad=False)
    backbone.patch_embed.grid_size = new_grid
    backbone.patch_embed.img_size = (new_grid[0] * ph, new_grid[1] * pw)
    backbone.patch_embed.num_patches = new_grid[0] * new_grid[1]


# ----------------------------------------------------------------------------- neck and head


class SimpleFPN(nn.Module):
    """Four scales (1/4, 1/8, 1/16, 1/32 of the input) from the 1/16 ViT map."""

    def __init__(self, in_dim: int = 768, out_dims: Sequence[int] = (128, 256, 512, 1024)) -> None:
        super().__init__()
        d4 = max(out_dims[0] * 2, in_dim // 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, d4, 2, stride=2), nn.GroupNorm(1, d4), nn.GELU(),
            nn.ConvTranspose2d(d4, d4 // 2, 2, stride=2), nn.GroupNorm(1, d4 // 2),
            nn.Conv2d(d4 // 2, out_dims[0], 1), nn.GroupNorm(1, out_dims[0]), nn.GELU())
        d8 = max(out_dims[1], in_dim // 2)
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, d8, 2, stride=2), nn.GroupNorm(1, d8),
            nn.Conv2d(d8, out_dims[1], 1), nn.GroupNorm(1, out_dims[1]), nn.GELU())
        self.down_16 = nn.Sequential(nn.Conv2d(in_dim, out_dims[2], 1), nn.GroupNorm(1, out_dims[2]), nn.GELU())
        d32 = max(out_dims[3], in_dim * 2)
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, d32, 2, stride=2), nn.GroupNorm(1, d32),
            nn.Conv2d(d32, out_dims[3], 1), nn.GroupNorm(1, out_dims[3]), nn.GELU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]


class _ConvAct(nn.Module):
    """mmcv ``ConvModule`` without a norm (``norm_cfg=None``): ``conv`` (with bias) then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.GroupNorm(1, cout),
                         nn.Conv2d(cout, cout, 1), nn.GroupNorm(1, cout), nn.GELU())


class SimpleClickHead(nn.Module):
    """``SwinTransfomerSegHead`` (mmseg ``BaseDecodeHead`` subclass) with its key layout."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int = 1,
                 in_index: Sequence[int] = (0, 1, 2, 3), upsample: str = "x1", interpolate_mode: str = "bilinear",
                 align_corners: bool = False, dropout_ratio: float = 0.1, norm_cfg: Any = None,
                 act_cfg: Any = None, **unused: Any) -> None:
        super().__init__()
        if norm_cfg is not None:
            raise ValueError(f"head norm_cfg={norm_cfg!r} is not supported (the releases use None)")
        if act_cfg not in (None, {"type": "ReLU"}):
            raise ValueError(f"head act_cfg={act_cfg!r} is not supported (the releases use ReLU)")
        if upsample not in ("x1", "x2", "x4"):
            raise ValueError(f"head upsample must be x1 / x2 / x4, got {upsample!r}")
        if len(in_channels) != len(in_index):
            raise ValueError("head in_channels and in_index differ in length")
        self.in_index = list(in_index)
        self.upsample = upsample
        self.interpolate_mode = interpolate_mode
        self.align_corners = align_corners
        out = {"x1": channels, "x2": channels * 2, "x4": channels * 4}[upsample]
        self.convs = nn.ModuleList([_ConvAct(c, out) for c in in_channels])
        self.fusion_conv = _ConvAct(out * len(in_channels), out)
        self.up_conv1 = _up_block(out, out // 2)
        self.up_conv2 = _up_block(out // 2, out // 4)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        feats = [inputs[i] for i in self.in_index]
        size = feats[0].shape[2:]
        outs = [F.interpolate(conv(x), size=size, mode=self.interpolate_mode, align_corners=self.align_corners)
                for conv, x in zip(self.convs, feats)]
        out = self.fusion_conv(torch.cat(outs, dim=1))
        if self.upsample == "x2":
            out = self.up_conv1(out)
        elif self.upsample == "x4":
            out = self.up_conv2(self.up_conv1(out))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv_seg(out)


# ----------------------------------------------------------------------------- the click model


def click_disk_maps(points: torch.Tensor, height: int, width: int, radius: float) -> torch.Tensor:
    """isegm ``DistMaps(use_disks=True)``: ``points`` is ``(B, 2P, 3)`` (row, col, index) with the
    P positive slots first, ``-1`` padding; returns ``(B, 2, H, W)`` float disks of ``radius`` px
    (pixel ``(r, c)`` is on when ``(r - y)^2 + (c - x)^2 <= radius^2``)."""
    b, n2, _ = points.shape
    pts = points[..., :2].float().view(b, 2, n2 // 2, 2)
    rows = torch.arange(height, device=points.device, dtype=torch.float32).view(1, 1, 1, height, 1)
    cols = torch.arange(width, device=points.device, dtype=torch.float32).view(1, 1, 1, 1, width)
    d2 = (rows - pts[..., 0, None, None]) ** 2 + (cols - pts[..., 1, None, None]) ** 2
    valid = (pts.max(dim=-1).values >= 0)[..., None, None]
    d2 = torch.where(valid, d2, torch.full_like(d2, 1e6))
    return (d2.min(dim=2).values <= radius**2).float()


class PlainVitModel(nn.Module):
    """isegm ``PlainVitModel`` at inference: ``forward(image, prev_mask, points) -> logits``."""

    def __init__(self, backbone_params: Mapping[str, Any], neck_params: Mapping[str, Any] | None = None,
                 head_params: Mapping[str, Any] | None = None, with_prev_mask: bool = False,
                 use_disks: bool = False, norm_radius: float = 5,
                 norm_mean_std: Sequence[Sequence[float]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))) -> None:
        super().__init__()
        if not use_disks:
            raise ValueError("only disk click maps (use_disks=True) are supported, as in every SimpleClick release")
        self.with_prev_mask = bool(with_prev_mask)
        self.norm_radius = float(norm_radius)
        self.register_buffer("mean", torch.tensor(norm_mean_std[0], dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(norm_mean_std[1], dtype=torch.float32).view(1, 3, 1, 1), False)
        bp = dict(backbone_params)
        self.patch_embed_coords = PatchEmbed(bp["img_size"], bp["patch_size"], 3 if self.with_prev_mask else 2,
                                             bp["embed_dim"])
        self.backbone = VisionTransformer(**bp)
        self.neck = SimpleFPN(**dict(neck_params or {}))
        self.head = SimpleClickHead(**dict(head_params or {}))

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backbone.patch_embed.img_size

    def forward(self, image: torch.Tensor, prev_mask: torch.Tensor | None, points: torch.Tensor) -> torch.Tensor:
        """``image`` ``(B, 3, H, W)`` RGB in [0, 1] at :attr:`input_size`; ``prev_mask`` ``(B, 1, H, W)``
        probabilities (ignored without ``with_prev_mask``); ``points`` as :func:`click_disk_maps`."""
        h, w = image.shape[2:]
        if (h, w) != tuple(self.input_size):
            raise ValueError(f"SimpleClick input must be {self.input_size}, got {(h, w)} (see interpolate_pos_embed)")
        coords = click_disk_maps(points, h, w, self.norm_radius)
        if self.with_prev_mask:
            if prev_mask is None:
                prev_mask = torch.zeros_like(image[:, :1])
            coords = torch.cat([prev_mask, coords], dim=1)
        x = (image - self.mean) / self.std
        tokens = self.backbone.forward_backbone(x, self.patch_embed_coords(coords))
        b, _, c = tokens.shape
        gh, gw = self.backbone.patch_embed.grid_size
        feats = self.neck(tokens.transpose(1, 2).reshape(b, c, gh, gw))
        logits = self.head(feats)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- checkpoints


def official_config(backbone_params: Mapping[str, Any], neck_params: Mapping[str, Any] | None = None,
                    head_params: Mapping[str, Any] | None = None, with_prev_mask: bool = True,
                    use_disks: bool = True, norm_radius: int = 5,
                    cls: str = PLAINVIT_CLASSES[0]) -> dict[str, Any]:
    """The ``config`` entry isegm's ``@serialize`` writes for a ``PlainVitModel`` (tests, conversions)."""
    specified = {"backbone_params": dict(backbone_params), "neck_params": dict(neck_params or {}),
                 "head_params": dict(head_params or {}), "with_prev_mask": with_prev_mask, "use_disks": use_disks,
                 "norm_radius": norm_radius}
    defaults = {"random_split": False, "with_aux_output": False, "cpu_dist_maps": False, "use_rgb_conv": False,
                "use_leaky_relu": False, "norm_mean_std": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}
    params = {k: {"type": "builtin", "value": v, "specified": True} for k, v in specified.items()}
    params.update({k: {"type": "builtin", "value": v, "specified": False} for k, v in defaults.items()})
    return {"class": cls, "params": params}


def read_config_params(ckpt: Mapping[str, Any], path: PathLike) -> dict[str, Any]:
    """The model parameters of an isegm checkpoint; a wrong family stops with :class:`DataError`."""
    config = ckpt.get("config")
    if not isinstance(config, Mapping) or "class" not in config or not isinstance(config.get("params"), Mapping):
        raise DataError(path, "not an isegm (SimpleClick / CFR-ICL) checkpoint: no 'config' with 'class' and "
                              f"'params' (top-level keys {sorted(map(str, ckpt))[:8]})")
    cls = str(config["class"])
    if cls not in PLAINVIT_CLASSES:
        raise DataError(path, f"checkpoint of model class {cls!r}, not a SimpleClick / CFR-ICL plain-ViT model "
                              f"({', '.join(PLAINVIT_CLASSES)})")
    params = {}
    for name, entry in config["params"].items():
        params[name] = entry.get("value") if isinstance(entry, Mapping) else entry
    if not isinstance(params.get("backbone_params"), Mapping):
        raise DataError(path, "isegm config has no 'backbone_params' dict")
    return params


def _inert_stub(qualname: str) -> type:
    """A placeholder class for a pickled training-time object: stores state, runs nothing."""

    def _new(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    def _init(self, *args: Any, **kwargs: Any) -> None:
        pass

    def _setstate(self, state: Any) -> None:
        self.__dict__["_pickled_state"] = state

    return type(qualname.rsplit(".", 1)[-1], (), {"__new__": _new, "__init__": _init, "__setstate__": _setstate,
                                                 "__module__": "litseg.nets.simpleclick._stubs",
                                                 "__doc__": f"inert placeholder for {qualname}"})


def load_simpleclick_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read an isegm checkpoint with ``weights_only=True``.

    The official SimpleClick / CFR-ICL files pickle training objects in their ``config`` (the head's
    ``loss_decode=CrossEntropyLoss()`` instance, an ``isegm`` class), which the safe unpickler
    rejects. We then list the file's non-allowlisted globals without unpickling
    (``torch.serialization.get_unsafe_globals_in_checkpoint``); if every one lives under the
    upstream training packages (``isegm``, ``mmcv``, ``mmseg``, ``easydict``), each is mapped to an
    inert placeholder class for a second ``weights_only=True`` load: nothing from the file is
    executed or imported, and the placeholders are never used to build the model. Any other global
    stops with a :class:`DataError` naming the file and the globals.
    """
    try:
        return load_checkpoint(path)
    except DataError as first:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path))
        except Exception:  # not a zip checkpoint, unreadable, ...
            raise first from None
        if not unsafe:
            raise
        foreign = [g for g in unsafe if g.split(".", 1)[0] not in _STUB_PACKAGES]
        if foreign:
            raise DataError(path, f"refusing to unpickle globals outside the isegm config objects: {foreign[:5]}") \
                from first
        stubs = [(_inert_stub(name), name) for name in unsafe]
        with torch.serialization.safe_globals(stubs):
            return load_checkpoint(path)


def build_simpleclick(checkpoint: PathLike, device: str | torch.device = "cpu") -> PlainVitModel:
    """A :class:`PlainVitModel` rebuilt from an isegm checkpoint's stored config, weights loaded strictly."""
    ckpt = load_simpleclick_checkpoint(checkpoint)
    params = read_config_params(ckpt, checkpoint)
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise DataError(checkpoint, "isegm checkpoint has no 'state_dict'")
    kwargs = {k: params[k] for k in ("with_prev_mask", "use_disks", "norm_radius", "norm_mean_std") if k in params}
    try:
        model = PlainVitModel(params["backbone_params"], params.get("neck_params"), params.get("head_params"),
                              **kwargs)
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(checkpoint, f"cannot build the plain-ViT model from its stored config: {err}") from err
    load_weights(model, checkpoint, key="state_dict", strict=True, checkpoint=ckpt)
    return model.to(torch.device(device)).eval()
