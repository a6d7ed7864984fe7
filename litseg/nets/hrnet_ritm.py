"""RITM's HRNet + OCR interactive-segmentation network (Sofiiuk et al., "Reviving Iterative Training
with Mask Guidance for Interactive Segmentation", 2021), rebuilt so the official checkpoints load.

Written for this suite from the published architecture (``SamsungLabs/ritm_interactive_segmentation``,
``isegm/model/{is_model,is_hrnet_model,ops}.py`` and ``isegm/model/modeling/{hrnet_ocr,ocr}.py``).
Module and parameter names follow the official ones, so ``load_state_dict(strict=True)`` of an
official ``state_dict`` works: ``feature_extractor.*`` (HRNetV2 + OCR), ``maps_transform.*`` (click
maps -> stem features) or ``rgb_conv.*`` (the early-fusion variant).

Checkpoint container (``isegm/utils/serialization.py``; the trainer saves ``{'state_dict': ...,
'config': net._config}``)::

    {'config': {'class': 'isegm.model.is_hrnet_model.HRNetModel',
                'params': {name: {'type': 'builtin' | 'class', 'value': ..., 'specified': bool}}},
     'state_dict': {name: tensor}}

Every value in it is a plain ``dict`` / ``list`` / ``tuple`` / ``str`` / number / bool (a class is
stored by its dotted name, e.g. ``norm_layer``), so ``torch.load(weights_only=True)`` reads it.

Input pipeline (``ISModel.forward``), one forward per click:

* the image in [0, 1] is ImageNet-normalised (``norm_mean_std``);
* the clicks become two maps (positive, negative) at image resolution: with ``use_disks`` a disk
  of radius ``norm_radius`` (5 for the ITER-M models) around each click, otherwise
  ``tanh(2 * dist / norm_radius)``; with ``with_prev_mask`` the previous probability map is put in
  front as a third channel -> ``[prev_mask, pos, neg]``;
* ``maps_transform`` (1x1 conv -> 16, (Leaky)ReLU, 3x3/2 conv -> 64, ``ScaleLayer`` |s|) gives
  64 channels at 1/2 resolution that are **added** to the HRNet stem after ``conv1/bn1/relu``;
* HRNetV2 (4 stages, width 18 / 32 / 48, ``small`` = HRNet-18s: 2 blocks per branch and fewer
  modules), the four branches upsampled and concatenated at 1/4, then OCR (``ocr_width``);
* ``instances`` logits (1/4) are upsampled bilinearly (align_corners=True) to the input size.

So RITM encodes the image *together with* the clicks: the whole backbone runs at every click.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from litseg.io import DataError

RITM_HRNET_CLASS = "isegm.model.is_hrnet_model.HRNetModel"
BATCHNORM_CLASS = "torch.nn.modules.batchnorm.BatchNorm2d"
IMAGENET_MEAN_STD = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# Constructor defaults of HRNetModel + ISModel (upstream signature order, upstream defaults).
HRNET_MODEL_DEFAULTS: dict[str, Any] = {
    "width": 48,
    "ocr_width": 256,
    "small": False,
    "backbone_lr_mult": 0.1,
    "norm_layer": BATCHNORM_CLASS,
    "use_rgb_conv": True,
    "with_aux_output": False,
    "norm_radius": 260,
    "use_disks": False,
    "cpu_dist_maps": False,
    "clicks_groups": None,
    "with_prev_mask": False,
    "use_leaky_relu": False,
    "binary_prev_mask": False,
    "conv_extend": False,
    "norm_mean_std": IMAGENET_MEAN_STD,
}

# The published ITER-M configurations (models/iter_mask/hrnet*_cocolvis_itermask_3p.py).
ITERMASK_COMMON = dict(with_aux_output=True, use_leaky_relu=True, use_rgb_conv=False, use_disks=True,
                       norm_radius=5, with_prev_mask=True)
RITM_PRESETS: dict[str, dict[str, Any]] = {
    "hrnet18s_itermask": dict(width=18, ocr_width=48, small=True, **ITERMASK_COMMON),
    "hrnet18_itermask": dict(width=18, ocr_width=64, **ITERMASK_COMMON),
    "hrnet32_itermask": dict(width=32, ocr_width=128, **ITERMASK_COMMON),
}


# ----------------------------------------------------------------------------- click maps

def click_maps(points: torch.Tensor, rows: int, cols: int, norm_radius: float, use_disks: bool) -> torch.Tensor:
    """Positive / negative click maps, ``B x 2 x rows x cols`` (upstream ``DistMaps``, torch path).

    ``points`` is ``B x 2N x 3``: N positive then N negative clicks as ``(row, col, index)``;
    padding entries are ``(-1, -1, -1)`` (a point whose row and col are both negative is ignored).
    ``use_disks``: 1 inside a disk of radius ``norm_radius`` (squared distance <= r^2), else 0.
    Otherwise ``tanh(2 * min_dist / norm_radius)`` (0 at a click, 1 far away or with no click).
    """
    batch, n2, _ = points.shape
    n = n2 // 2
    pts = points.reshape(-1, 3)[:, :2].to(torch.float32)
    invalid = pts.max(dim=1).values < 0
    grid_r = torch.arange(rows, dtype=torch.float32, device=points.device).view(1, rows, 1)
    grid_c = torch.arange(cols, dtype=torch.float32, device=points.device).view(1, 1, cols)
    dr = grid_r - pts[:, 0].view(-1, 1, 1)
    dc = grid_c - pts[:, 1].view(-1, 1, 1)
    if not use_disks:
        dr = dr / norm_radius
        dc = dc / norm_radius
    dist2 = dr * dr + dc * dc
    dist2[invalid] = 1e6
    dist2 = dist2.view(batch, 2, n, rows, cols).min(dim=2).values
    if use_disks:
        return (dist2 <= norm_radius**2).float()
    return torch.tanh(2 * dist2.sqrt())


class ScaleLayer(nn.Module):
    """``x * |scale * lr_mult|`` (parameter ``scale``, shape ``(1,)``)."""

    def __init__(self, init_value: float = 1.0, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.lr_mult = lr_mult
        self.scale = nn.Parameter(torch.full((1,), init_value / lr_mult, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.abs(self.scale * self.lr_mult)


# ----------------------------------------------------------------------------- HRNet blocks

def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlockV1b(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BottleneckV1b(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _make_blocks(block: type[nn.Module], inplanes: int, planes: int, count: int) -> nn.Sequential:
    out = planes * block.expansion
    downsample = None
    if inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, bias=False), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, 1, downsample)]
    layers += [block(out, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks plus the all-to-all fusion (``branches``, ``fuse_layers``)."""

    def __init__(self, channels: list[int], num_blocks: int, align_corners: bool = True) -> None:
        super().__init__()
        self.num_branches = len(channels)
        self.align_corners = align_corners
        self.branches = nn.ModuleList(_make_blocks(BasicBlockV1b, c, c, num_blocks) for c in channels)
        self.fuse_layers = None
        if self.num_branches > 1:
            fuse = []
            for i in range(self.num_branches):
                row: list[nn.Module | None] = []
                for j in range(self.num_branches):
                    if j > i:  # lower resolution -> 1x1 conv, upsampled in forward
                        row.append(nn.Sequential(nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                                 nn.BatchNorm2d(channels[i])))
                    elif j == i:
                        row.append(None)
                    else:  # higher resolution -> (i - j) stride-2 3x3 convs
                        steps = [_conv_bn(channels[j], channels[j], 3, stride=2) for _ in range(i - j - 1)]
                        steps.append(_conv_bn(channels[j], channels[i], 3, stride=2, relu=False))
                        row.append(nn.Sequential(*steps))
                fuse.append(nn.ModuleList(row))
            self.fuse_layers = nn.ModuleList(fuse)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + F.interpolate(row[j](xs[j]), size=xs[i].shape[-2:], mode="bilinear",
                                          align_corners=self.align_corners)
                else:
                    y = y + row[j](xs[j])
            out.append(self.relu(y))
        return out


class SpatialGatherModule(nn.Module):
    """OCR: soft object regions (``probs``) -> per-class context vectors ``B x C x K x 1``. No parameters."""

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        b, k = probs.shape[:2]
        probs = F.softmax(probs.view(b, k, -1), dim=2)
        context = torch.matmul(probs, feats.view(b, feats.shape[1], -1).permute(0, 2, 1))
        return context.permute(0, 2, 1).unsqueeze(3)


def _conv1x1_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # Upstream wraps norm + ReLU in their own Sequential: keys ``.0`` conv, ``.1.0`` BN.
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True))]


class ObjectAttentionBlock2D(nn.Module):
    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(*_conv1x1_bn_relu(in_channels, key_channels),
                                     *_conv1x1_bn_relu(key_channels, key_channels))
        self.f_object = nn.Sequential(*_conv1x1_bn_relu(in_channels, key_channels),
                                      *_conv1x1_bn_relu(key_channels, key_channels))
        self.f_down = nn.Sequential(*_conv1x1_bn_relu(in_channels, key_channels))
        self.f_up = nn.Sequential(*_conv1x1_bn_relu(key_channels, in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.f_pixel(x).view(b, self.key_channels, -1).permute(0, 2, 1)
        key = self.f_object(proxy).view(b, self.key_channels, -1)
        value = self.f_down(proxy).view(b, self.key_channels, -1).permute(0, 2, 1)
        attn = F.softmax(torch.matmul(query, key) * self.key_channels**-0.5, dim=-1)
        context = torch.matmul(attn, value).permute(0, 2, 1).contiguous().view(b, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCRModule(nn.Module):
    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = ObjectAttentionBlock2D(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(*_conv1x1_bn_relu(2 * in_channels, out_channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


class HighResolutionNet(nn.Module):
    """HRNetV2-W``width`` (+ OCR head when ``ocr_width > 0``), RITM variant with a stem hook.

    ``small=True`` is RITM's HRNet-18s: 2 blocks per branch (4 otherwise), stages of 1 / 3 / 2
    modules (1 / 4 / 3 otherwise). ``forward(x, additional_features)`` adds the click features
    after ``conv1 -> bn1 -> relu`` and returns ``[logits, aux_logits]`` at 1/4 resolution.
    """

    def __init__(self, width: int, num_classes: int = 1, ocr_width: int = 256, small: bool = False,
                 align_corners: bool = True) -> None:
        super().__init__()
        self.ocr_width = ocr_width
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        nb = 2 if small else 4
        self.layer1 = _make_blocks(BottleneckV1b, 64, 64, nb)
        prev = [64 * BottleneckV1b.expansion]
        modules_per_stage = (1, 3, 2) if small else (1, 4, 3)
        for stage, n_modules in zip((2, 3, 4), modules_per_stage):
            channels = [width * 2**i for i in range(stage)]
            setattr(self, f"transition{stage - 1}", self._transition(prev, channels))
            setattr(self, f"stage{stage}", nn.Sequential(*[HighResolutionModule(channels, nb, align_corners)
                                                           for _ in range(n_modules)]))
            prev = channels
        last = sum(prev)
        if ocr_width > 0:
            mid = 2 * ocr_width
            self.conv3x3_ocr = nn.Sequential(nn.Conv2d(last, mid, 3, padding=1), nn.BatchNorm2d(mid),
                                             nn.ReLU(inplace=True))
            self.ocr_gather_head = SpatialGatherModule()
            self.ocr_distri_head = SpatialOCRModule(mid, ocr_width, mid, dropout=0.05)
            self.cls_head = nn.Conv2d(mid, num_classes, 1)
            self.aux_head = nn.Sequential(nn.Conv2d(last, last, 1), nn.BatchNorm2d(last), nn.ReLU(inplace=True),
                                          nn.Conv2d(last, num_classes, 1))
        else:
            self.cls_head = nn.Sequential(nn.Conv2d(last, last, 3, padding=1), nn.BatchNorm2d(last),
                                          nn.ReLU(inplace=True), nn.Conv2d(last, num_classes, 1))

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(None if prev[i] == c else _conv_bn(prev[i], c, 3))
            else:  # a new, lower-resolution branch from the last existing one
                steps = [_conv_bn(prev[-1], prev[-1], 3, stride=2) for _ in range(i - len(prev))]
                steps.append(_conv_bn(prev[-1], c, 3, stride=2))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, t in enumerate(transition):
            src = ys[i] if i < len(ys) else ys[-1]
            out.append(src if t is None else t(src))
        return out

    def features(self, x: torch.Tensor, additional_features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if additional_features is not None:
            x = x + additional_features
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for stage in (2, 3, 4):
            ys = getattr(self, f"stage{stage}")(self._apply_transition(getattr(self, f"transition{stage - 1}"), ys))
        size = ys[0].shape[-2:]
        ups = [F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners) for y in ys[1:]]
        return torch.cat([ys[0], *ups], 1)

    def forward(self, x: torch.Tensor, additional_features: torch.Tensor | None = None) -> list[torch.Tensor | None]:
        feats = self.features(x, additional_features)
        if self.ocr_width > 0:
            aux = self.aux_head(feats)
            feats = self.conv3x3_ocr(feats)
            feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
            return [self.cls_head(feats), aux]
        return [self.cls_head(feats), None]


# ----------------------------------------------------------------------------- the IS model

class RITMHRNetModel(nn.Module):
    """RITM's ``HRNetModel`` (``ISModel`` input pipeline + HRNet/OCR), official parameter names.

    ``forward(image, points)``: ``image`` is ``B x (3 [+1]) x H x W`` in [0, 1] (RGB, then the
    previous probability map when ``with_prev_mask``); ``points`` ``B x 2N x 3`` as in
    :func:`click_maps`. Returns ``{'instances': logits B x 1 x H x W, 'instances_aux': ...}``.
    """

    def __init__(self, width: int = 48, ocr_width: int = 256, small: bool = False, use_rgb_conv: bool = True,
                 with_aux_output: bool = False, norm_radius: float = 260, use_disks: bool = False,
                 with_prev_mask: bool = False, use_leaky_relu: bool = False, binary_prev_mask: bool = False,
                 conv_extend: bool = False, norm_mean_std=IMAGENET_MEAN_STD, cpu_dist_maps: bool = False,
                 backbone_lr_mult: float = 0.1) -> None:
        super().__init__()
        self.config = dict(width=width, ocr_width=ocr_width, small=small, use_rgb_conv=use_rgb_conv,
                           with_aux_output=with_aux_output, norm_radius=norm_radius, use_disks=use_disks,
                           with_prev_mask=with_prev_mask, use_leaky_relu=use_leaky_relu,
                           binary_prev_mask=binary_prev_mask, conv_extend=conv_extend,
                           norm_mean_std=norm_mean_std, cpu_dist_maps=cpu_dist_maps,
                           backbone_lr_mult=backbone_lr_mult)
        self.with_aux_output = with_aux_output
        self.with_prev_mask = with_prev_mask
        self.binary_prev_mask = binary_prev_mask
        self.norm_radius = float(norm_radius)
        self.use_disks = use_disks
        mean, std = norm_mean_std
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        coord_ch = 2 + int(with_prev_mask)
        act = (lambda: nn.LeakyReLU(negative_slope=0.2)) if use_leaky_relu else (lambda: nn.ReLU(inplace=True))
        self.rgb_conv: nn.Module | None = None
        self.maps_transform: nn.Module | None = None
        if use_rgb_conv:
            self.rgb_conv = nn.Sequential(nn.Conv2d(3 + coord_ch, 6 + coord_ch, 1), nn.BatchNorm2d(6 + coord_ch),
                                          act(), nn.Conv2d(6 + coord_ch, 3, 1))
        elif conv_extend:
            self.maps_transform = nn.Conv2d(coord_ch, 64, 3, stride=2, padding=1)
        else:
            self.maps_transform = nn.Sequential(nn.Conv2d(coord_ch, 16, 1), act(),
                                                nn.Conv2d(16, 64, 3, stride=2, padding=1),
                                                ScaleLayer(init_value=0.05, lr_mult=1))
        self.feature_extractor = HighResolutionNet(width=width, num_classes=1, ocr_width=ocr_width, small=small)

    def coord_features(self, image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``[prev_mask, pos, neg]`` (or ``[pos, neg]``) at image resolution, before ``maps_transform``."""
        maps = click_maps(points, image.shape[2], image.shape[3], self.norm_radius, self.use_disks)
        if self.with_prev_mask:
            prev = image[:, 3:4]
            if self.binary_prev_mask:
                prev = (prev > 0.5).float()
            maps = torch.cat((prev, maps), dim=1)
        return maps

    def forward(self, image: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
        coords = self.coord_features(image, points)
        rgb = (image[:, :3] - self._mean) / self._std
        if self.rgb_conv is not None:
            out, aux = self.feature_extractor(self.rgb_conv(torch.cat((rgb, coords), dim=1)))
        else:
            out, aux = self.feature_extractor(rgb, self.maps_transform(coords))
        size = image.shape[2:]
        outputs = {"instances": F.interpolate(out, size=size, mode="bilinear", align_corners=True)}
        if self.with_aux_output and aux is not None:
            outputs["instances_aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=True)
        return outputs


# ----------------------------------------------------------------------------- official container

def ritm_config(**params: Any) -> dict[str, Any]:
    """An official-style ``config`` entry for ``HRNetModel(**params)`` (as ``@serialize`` writes it)."""
    unknown = sorted(set(params) - set(HRNET_MODEL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown HRNetModel parameters {unknown}")
    entries = {}
    for name, default in HRNET_MODEL_DEFAULTS.items():
        value = params.get(name, default)
        entries[name] = {"type": "class" if name == "norm_layer" else "builtin", "value": value,
                         "specified": name in params}
    return {"class": RITM_HRNET_CLASS, "params": entries}


def ritm_model_kwargs(config: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Constructor arguments for :class:`RITMHRNetModel` from a checkpoint's stored ``config``.

    Refuses (``DataError`` naming ``path``) another model class, a non-BatchNorm ``norm_layer``,
    ``clicks_groups`` (a training-time option not used by the released models) and unknown names.
    """
    if not isinstance(config, Mapping) or "class" not in config or not isinstance(config.get("params"), Mapping):
        raise DataError(path, "not an RITM checkpoint: its 'config' lacks the 'class' / 'params' entries "
                              "that isegm.utils.serialization writes")
    cls = config["class"]
    if cls != RITM_HRNET_CLASS:
        raise DataError(path, f"model class {cls!r} is not supported; only {RITM_HRNET_CLASS} "
                              "(RITM HRNet-18 / 18s / 32 / 48 + OCR) is implemented")
    kwargs: dict[str, Any] = {}
    for name, entry in config["params"].items():
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if name not in HRNET_MODEL_DEFAULTS:
            raise DataError(path, f"unknown HRNetModel parameter {name!r} = {value!r} in the stored config")
        if name == "norm_layer":
            if value != BATCHNORM_CLASS:
                raise DataError(path, f"norm_layer {value!r} is not supported (only {BATCHNORM_CLASS})")
            continue
        if name == "clicks_groups":
            if value is not None:
                raise DataError(path, f"clicks_groups={value!r} is not supported")
            continue
        if name == "norm_mean_std":
            value = (list(value[0]), list(value[1]))
        kwargs[name] = value
    return kwargs


def build_ritm_model(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> RITMHRNetModel:
    """Rebuild the network from an official checkpoint dict (``config`` + ``state_dict``), weights loaded.

    Missing or unexpected weights stop with a ``DataError`` naming ``path`` and the first keys
    (a BatchNorm ``num_batches_tracked`` counter missing from an old file is tolerated).
    """
    if isinstance(checkpoint, Mapping) and "config" not in checkpoint:
        keys = list(checkpoint)[:5]
        raise DataError(path, "not an RITM checkpoint: no 'config' entry (expected {'config': {'class': "
                              f"'{RITM_HRNET_CLASS}', 'params': ...}}, 'state_dict': ...}}); its first keys are {keys}")
    sd = checkpoint.get("state_dict")
    if not isinstance(sd, Mapping):
        raise DataError(path, "not an RITM checkpoint: no 'state_dict' entry")
    model = RITMHRNetModel(**ritm_model_kwargs(checkpoint["config"], path))
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise DataError(path, f"weights do not match RITM HRNetModel(width={model.config['width']}, "
                              f"ocr_width={model.config['ocr_width']}, small={model.config['small']}): "
                              f"{len(missing)} missing, first {missing[:5]}; "
                              f"{len(unexpected)} unexpected, first {unexpected[:5]}")
    bad_shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in sd and sd[k].shape != v.shape]
    if bad_shapes:
        raise DataError(path, f"weight shapes do not match the stored config: {bad_shapes[:3]}")
    model.load_state_dict(sd, strict=False)
    return model


def ritm_checkpoint(model: RITMHRNetModel) -> dict[str, Any]:
    """The official container for ``model``: ``{'config': ..., 'state_dict': ...}`` (``torch.save`` it)."""
    return {"config": ritm_config(**model.config), "state_dict": model.state_dict()}
