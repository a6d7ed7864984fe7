"""EfficientNet-UNet with an image-level classifier and class activation maps (CAM).

The network of the weakly-supervised segmentation (WSSS) study: a
``segmentation_models_pytorch.Unet`` with an EfficientNet encoder for the dense
(partial-)cross-entropy supervision kinds, plus a classification head on the encoder's
deepest feature map (global average pooling -> dropout -> linear, one logit per
foreground class) for image-level tags. Segmentation from tags uses CAM (Zhou et al.,
"Learning Deep Features for Discriminative Localization", CVPR 2016): for class ``c``,
``relu(sum_k w_ck F_k)`` with the head's linear weights ``w`` and the deepest features
``F``, upsampled to the input and scaled to [0, 1] per (sample, class).

Encoder names are smp's: ``efficientnet-b0`` .. ``-b7`` (the default, b0: 6.3 M parameters)
and ``timm-efficientnet-b0`` .. both build offline with ``encoder_weights=None``.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

CAM_EPS = 1e-5


class EffUNet(nn.Module):
    """UNet (smp) + tag classifier over the deepest encoder features.

    Args:
        num_classes: segmentation classes including background (2 binary, 3 species, 38 breed).
            The classifier has ``num_classes - 1`` outputs: foreground classes only,
            for multi-label tags.
        encoder_name: an smp EfficientNet encoder name.
        encoder_weights: ``"imagenet"`` in real use; ``None`` offline / in tests.
        dropout: dropout before the classifier's linear layer.
        encoder_bn_momentum: momentum of the encoder's BatchNorm running statistics (PyTorch
            convention: the weight of the new batch). smp's EfficientNet encoders keep
            TensorFlow's decay 0.99, i.e. momentum 0.01: after ``n`` steps the running
            statistics have moved only ``1 - 0.99**n`` of the way from their initial values
            (55 % after 80 steps), so a short run from scratch is evaluated with statistics that
            do not describe its features (eval-mode predictions collapse to one class while
            batch-statistics predictions are fine). 0.1 (PyTorch's default) tracks them within a
            few dozen steps; ``None`` keeps the encoder's own value.

    Inputs must have height and width divisible by 32 (five stride-2 stages).
    """

    def __init__(self, num_classes: int, encoder_name: str = "efficientnet-b0",
                 encoder_weights: str | None = None, dropout: float = 0.2,
                 encoder_bn_momentum: float | None = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
        self.num_classes = num_classes
        self.unet = smp.Unet(encoder_name=encoder_name, encoder_weights=encoder_weights, classes=num_classes)
        # smp's EfficientNet encoder keeps the classifier-era head (_conv_head, _bn1) that its
        # forward never runs; frozen, DDP does not wait for gradients that never come.
        for name in ("_conv_head", "_bn1"):
            if hasattr(self.unet.encoder, name):
                getattr(self.unet.encoder, name).requires_grad_(False)
        if encoder_bn_momentum is not None:
            if not 0.0 < encoder_bn_momentum <= 1.0:
                raise ValueError(f"encoder_bn_momentum must be in (0, 1], got {encoder_bn_momentum}")
            for module in self.unet.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = encoder_bn_momentum
        deepest_channels = self.unet.encoder.out_channels[-1]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(deepest_channels, num_classes - 1)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"EffUNet needs B x C x H x W input with H and W divisible by 32, got {tuple(x.shape)}")

    def cam_from_features(self, deepest: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """CAM ``[B, num_classes - 1, *size]`` in [0, 1] from the deepest features ``[B, C, h, w]``.

        Bias-free (as in CAM: the bias shifts every location equally), ReLU at feature
        resolution, bilinear upsampling, then division by the per-(sample, class) maximum
        (+ eps, so an all-zero map stays zero). Differentiable; detach it for pseudo-masks.
        """
        cam = F.relu(torch.einsum("bkhw,ck->bchw", deepest, self.classifier.weight))
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        peak = cam.flatten(2).amax(dim=2)[:, :, None, None]
        return cam / (peak + CAM_EPS)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``[B, num_classes - 1, H, W]`` of an image batch."""
        self._check_input(x)
        return self.cam_from_features(self.unet.encoder(x)[-1], tuple(x.shape[-2:]))

    def forward(self, x: torch.Tensor, return_cam: bool = False) -> dict[str, torch.Tensor]:
        """One encoder pass for everything.

        Returns ``logits [B, num_classes, H, W]``, ``class_logits [B, num_classes - 1]`` and,
        with ``return_cam``, ``cam [B, num_classes - 1, H, W]``.
        """
        self._check_input(x)
        features = self.unet.encoder(x)
        logits = self.unet.segmentation_head(self.unet.decoder(features))
        deepest = features[-1]
        class_logits = self.classifier(self.dropout(deepest.mean(dim=(2, 3))))
        out = {"logits": logits, "class_logits": class_logits}
        if return_cam:
            out["cam"] = self.cam_from_features(deepest, tuple(x.shape[-2:]))
        return out
