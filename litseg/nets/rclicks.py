"""RClicks clickability model (Antonov et al., "RClicks: Realistic Click Simulation for
Benchmarking Interactive Segmentation", NeurIPS 2024).

The network predicts where real users click on an object: given an image, the target
instance mask and the current error region, it outputs a non-negative "clickability"
map (per-sample min-max normalised, no sigmoid) that becomes a click distribution once
it is divided by its sum.

Upstream uses SegNeXt-B (an MSCAN-B backbone with a LightHamHead decoder) built through
mmcv / mmsegmentation. Here the backbone is any CNN from ``timm`` that exposes multi-scale
features (``resnet18`` by default, small enough for CPU tests; ``convnext_tiny`` or
``resnet50`` for full-scale training), and the decoder is a light FPN-style head with
the LightHamHead's data flow minus its Hamburger (NMF) block: every stage is resized to
1/4 resolution, concatenated and squeezed by 1x1 convolutions to one channel. That keeps
the suite free of mmcv and lets the backbone be swapped from the config.

Click conditioning follows RITM's "Conv1S" as RClicks does: the two channels
``[target_mask, error_mask]`` go through conv1x1 (2->16), ReLU, conv3x3/2 (16->16), ReLU,
conv3x3/2 (16->C_stem) and a learnable scale (init 0.05, applied as ``x * |s|``) and are
*added* to the backbone's stem output at 1/4 resolution (``fusion="stem"``). The
alternative ``fusion="early"`` concatenates them to the RGB input instead.
"""

from __future__ import annotations

import os
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureListNet
from torch import nn

from litseg.checkpoint import load_checkpoint, load_weights
from litseg.io import DataError

MINMAX_EPS = 1e-9


class ScaleLayer(nn.Module):
    """Multiply by the absolute value of one learnable scalar (RITM's ``ScaleLayer``).

    Starting at 0.05 keeps the freshly initialised click branch from swamping the
    (possibly pretrained) stem features.
    """

    def __init__(self, init_value: float = 0.05) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs()


class ClickMapEncoder(nn.Sequential):
    """The two click channels -> ``out_channels`` features at 1/4 resolution (note 1.2)."""

    def __init__(self, out_channels: int, in_channels: int = 2, hidden: int = 16, scale_init: float = 0.05) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, kernel_size=3, stride=2, padding=1),
            ScaleLayer(scale_init),
        )


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MultiScaleHead(nn.Module):
    """FPN-style decoder: project every stage, resize to the finest (1/4), concat, 1x1 convs -> 1 channel."""

    def __init__(self, in_channels: list[int], channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.project = nn.ModuleList(_conv_bn_relu(c, channels) for c in in_channels)
        self.fuse = _conv_bn_relu(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        resized = []
        for project, feature in zip(self.project, features, strict=True):
            x = project(feature)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            resized.append(x)
        return self.classify(self.dropout(self.fuse(torch.cat(resized, dim=1))))


def minmax_normalize(x: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Per-sample min-max normalisation of a ``B x ...`` tensor to [0, 1] (``batch_normalize_map``)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(shape)
    hi = flat.max(dim=1).values.view(shape)
    return (x - lo) / (hi - lo + eps)


def _feature_extractor(model: nn.Module, out_indices: list[int], name: str) -> FeatureListNet:
    """Wrap a full timm model as a module-by-module feature extractor.

    timm models differ in whether their stages sit directly on the model (ResNet's
    ``layer1``) or inside a Sequential (ConvNeXt's ``stages.0``); try both layouts.
    Wrapping a full model (rather than ``features_only=True``) lets local weights be
    loaded into it first through :mod:`litseg.checkpoint`.
    """
    for flatten in (False, True):
        try:
            return FeatureListNet(model, out_indices=out_indices, flatten_sequential=flatten)
        except AssertionError:
            continue
    raise ValueError(f"backbone {name!r} cannot be split into sequential stages (use a CNN such as resnet18)")


class ClickabilityNet(nn.Module):
    """Image + ``[target_mask, error_mask]`` -> clickability map in [0, 1] at input resolution.

    Args:
        backbone: a ``timm`` CNN name with multi-scale features (``resnet18``, ``resnet50``,
            ``convnext_tiny``, ``efficientnet_b0``, ...).
        pretrained: load timm's ImageNet weights (they must already be in the local timm /
            Hugging Face cache: nothing is downloaded here). Upstream *intended* an
            ImageNet-pretrained MSCAN-B (note 1.9), so use ``pretrained`` or
            ``backbone_weights`` for full-scale training.
        fusion: ``stem`` adds the encoded click maps to the stem output at 1/4 resolution
            (RClicks / RITM Conv1S); ``early`` concatenates them to the RGB input.
        decoder_channels: width of the decoder.
        backbone_weights: optional local weights file for the whole timm model (classifier
            included), loaded through :mod:`litseg.checkpoint`.
        dropout: decoder dropout (LightHamHead uses 0.1).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        fusion: Literal["stem", "early"] = "stem",
        decoder_channels: int = 128,
        backbone_weights: str | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if fusion not in ("stem", "early"):
            raise ValueError(f"fusion must be 'stem' or 'early', got {fusion!r}")
        self.fusion = fusion
        self.in_channels = 3 if fusion == "stem" else 5
        model = timm.create_model(backbone, pretrained=pretrained, in_chans=self.in_channels)
        if backbone_weights:
            load_weights(model, backbone_weights)
        reductions = [info["reduction"] for info in model.feature_info]
        # Stages at 1/4 and coarser (at most four); a 1/2 feature (ResNet's act1) is not decoded.
        out_indices = [i for i, r in enumerate(reductions) if r >= 4][:4]
        if not out_indices or reductions[out_indices[0]] != 4:
            raise ValueError(f"backbone {backbone!r} has no stride-4 feature (reductions {reductions})")
        self.backbone = _feature_extractor(model, out_indices, backbone)
        self.stem_end, stem_channels = self._find_stem_end()
        self.click_encoder = ClickMapEncoder(stem_channels) if fusion == "stem" else None
        self.head = MultiScaleHead(self.backbone.feature_info.channels(), decoder_channels, dropout)

    @torch.no_grad()
    def _find_stem_end(self) -> tuple[str, int]:
        """Name and width of the module that ends the backbone's stem at 1/4 resolution.

        That is the module just before the first 1/4-resolution stage when its output is
        already at 1/4 (ResNet: the max-pool after conv1-bn-act; ConvNeXt: the norm after
        the patchify conv, like MSCAN's stem), else that stage itself (EfficientNet, whose
        stem stops at 1/2). RITM's Conv1S adds the click features there.
        """
        probe = torch.zeros(1, self.in_channels, 64, 64)
        was_training = self.backbone.training
        self.backbone.eval()  # the probe must not update BatchNorm statistics
        x, previous = probe, None
        try:
            for name, module in self.backbone.items():
                x = module(x)
                at_quarter = x.dim() == 4 and x.shape[-1] == probe.shape[-1] // 4
                if at_quarter and name in self.backbone.return_layers:
                    return previous if previous is not None else (name, int(x.shape[1]))
                previous = (name, int(x.shape[1])) if at_quarter else None
        finally:
            self.backbone.train(was_training)
        raise ValueError("could not locate the stride-4 stem output of the backbone")

    def forward(self, image: torch.Tensor, click_maps: torch.Tensor) -> torch.Tensor:
        """``image`` B x 3 x H x W (ImageNet-normalised) and ``click_maps`` B x 2 x H x W
        (``[target_mask, error_mask]``) -> B x 1 x H x W clickability in [0, 1]."""
        if image.shape[-2:] != click_maps.shape[-2:] or image.shape[1] != 3 or click_maps.shape[1] != 2:
            raise ValueError(f"expected image B x 3 x H x W and click maps B x 2 x H x W, got "
                             f"{tuple(image.shape)} and {tuple(click_maps.shape)}")
        x = image if self.click_encoder is not None else torch.cat([image, click_maps], dim=1)
        features: list[torch.Tensor] = []
        for name, module in self.backbone.items():
            x = module(x)
            if self.click_encoder is not None and name == self.stem_end:
                clicks = self.click_encoder(click_maps)
                if clicks.shape[-2:] != x.shape[-2:]:  # odd input sizes round differently in the two paths
                    clicks = F.interpolate(clicks, size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = x + clicks
            if name in self.backbone.return_layers:
                features.append(x)
        logits = self.head(features)
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return minmax_normalize(logits)


NET_ARGUMENTS = ("backbone", "fusion", "decoder_channels", "dropout")


def load_clickability_net(path: str | os.PathLike[str], key: str = "state_dict",
                          prefix: str = "net.") -> ClickabilityNet:
    """Rebuild a trained :class:`ClickabilityNet` from a Lightning checkpoint of
    ``lit_modules.rclicks.ClickabilityModel`` (architecture from its saved
    hyper-parameters, weights under ``net.``), in eval mode on the CPU."""
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "backbone" not in hparams:
        raise DataError(path, "no clickability-model hyper-parameters (expected a ClickabilityModel checkpoint)")
    net = ClickabilityNet(**{k: hparams[k] for k in NET_ARGUMENTS if k in hparams}, pretrained=False)
    load_weights(net, path, key=key, prefix=prefix)  # strict: a mismatch raises naming the file
    return net.eval()
