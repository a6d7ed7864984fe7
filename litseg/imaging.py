"""Image normalisation constants and conversions shared by datamodules and callbacks."""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def normalize(image_uint8: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``3 x H x W`` float tensor, ImageNet-normalised."""
    t = torch.from_numpy(np.ascontiguousarray(image_uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize` for one image: ``3 x H x W`` -> ``H x W x 3`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    rgb = (image.detach().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).cpu().numpy()


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Blend a label map over an RGB image (class 0 and ignore left unpainted)."""
    palette = label_palette()
    out = image.astype(np.float32).copy()
    paint = (labels > 0) & (labels != ignore_index)
    colours = palette[labels.astype(np.int64) % len(palette)]
    out[paint] = (1 - alpha) * out[paint] + alpha * colours[paint]
    out[labels == ignore_index] = 0.5 * out[labels == ignore_index] + 0.5 * 255
    return out.round().astype(np.uint8)


def label_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour palette (``n x 3`` float), a fixed colour per class id."""
    pal = np.zeros((n, 3), dtype=np.float32)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal
