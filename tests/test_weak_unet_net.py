"""EffUNet: UNet + tag classifier + class activation maps (WSSS study)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litseg.nets.weak_unet import CAM_EPS, EffUNet


@pytest.fixture(scope="module")
def binary_net() -> EffUNet:
    torch.manual_seed(0)
    return EffUNet(num_classes=2).eval()


@pytest.fixture(scope="module")
def image_batch() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("num_classes", "label_set"), [(3, "species"), (38, "breed")])
def test_output_shapes(num_classes, label_set, image_batch):
    torch.manual_seed(0)
    net = EffUNet(num_classes=num_classes).eval()
    assert net.classifier.out_features == num_classes - 1, label_set
    with torch.no_grad():
        out = net(image_batch, return_cam=True)
    assert set(out) == {"logits", "class_logits", "cam"}
    assert out["logits"].shape == (2, num_classes, 64, 64)
    assert out["class_logits"].shape == (2, num_classes - 1)
    assert out["cam"].shape == (2, num_classes - 1, 64, 64)
    assert out["cam"].min() >= 0 and out["cam"].max() <= 1
    assert "cam" not in net(image_batch)


def test_cam_by_hand():
    net = EffUNet(num_classes=4)
    net.classifier = nn.Linear(2, 3)  # a 2-channel "encoder" so the numbers fit on a line
    with torch.no_grad():
        net.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]]))
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]]])  # [1, 2, 2, 2]
    cam = net.cam_from_features(features, (2, 2))
    # class 0: 1*F0 - 1*F1 = [[-3, -1], [1, 3]] -> relu -> / 3
    torch.testing.assert_close(cam[0, 0], torch.tensor([[0.0, 0.0], [1.0, 3.0]]) / (3.0 + CAM_EPS))
    # class 1: 0.5*(F0 + F1) = 2.5 everywhere -> 2.5 / (2.5 + eps)
    torch.testing.assert_close(cam[0, 1], torch.full((2, 2), 2.5 / (2.5 + CAM_EPS)))
    # class 2: -F0 < 0 everywhere -> all zero (eps keeps it finite)
    torch.testing.assert_close(cam[0, 2], torch.zeros(2, 2))
    # A 1x1 map upsampled bilinearly to 4x4 is constant.
    flat = net.cam_from_features(torch.tensor([[[[2.0]], [[1.0]]]]), (4, 4))
    torch.testing.assert_close(flat[0, 0], torch.full((4, 4), 1.0 / (1.0 + CAM_EPS)))


def test_cam_and_class_logits_match_the_features(binary_net, image_batch):
    with torch.no_grad():
        out = binary_net(image_batch, return_cam=True)
        deepest = binary_net.unet.encoder(image_batch)[-1]  # [2, 320, 2, 2] at stride 32
        assert deepest.shape == (2, 320, 2, 2)
        weight, bias = binary_net.classifier.weight, binary_net.classifier.bias
        # class_logits = linear(global average pool(F)) (dropout is off in eval mode)
        pooled = deepest.sum(dim=(2, 3)) / 4
        torch.testing.assert_close(out["class_logits"], pooled @ weight.T + bias)
        # CAM = relu(sum_k w_ck F_k) at 2x2, upsampled to 64x64, over its max
        low = torch.clamp((deepest.permute(0, 2, 3, 1) @ weight.T).permute(0, 3, 1, 2), min=0)
        up = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
        expected = up / (up.amax(dim=(2, 3), keepdim=True) + CAM_EPS)
        torch.testing.assert_close(out["cam"], expected)
        torch.testing.assert_close(binary_net.cam(image_batch), expected)
        # logits are the plain smp Unet's
        torch.testing.assert_close(out["logits"], binary_net.unet(image_batch))


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = EffUNet(num_classes=2, dropout=0.9)
    net.train()
    small = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = net(small)["class_logits"], net(small)["class_logits"]
    assert not torch.equal(first, second)


def test_tag_loss_trains_the_encoder_not_the_segmentation_head():
    torch.manual_seed(0)
    net = EffUNet(num_classes=2)
    out = net(torch.randn(2, 3, 32, 32), return_cam=True)
    out["class_logits"].sum().backward()
    first_conv = next(p for p in net.unet.encoder.parameters() if p.ndim == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.unet.segmentation_head.parameters())


def test_bad_arguments(binary_net):
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        EffUNet(num_classes=1)
    with pytest.raises(ValueError, match="divisible by 32"):
        binary_net(torch.zeros(1, 3, 48, 64))


def test_encoder_batchnorm_momentum():
    def momenta(net):
        return {m.momentum for m in net.unet.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    def decoder_momenta(net):
        return {m.momentum for m in net.unet.decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

    # smp's EfficientNet keeps TensorFlow's decay 0.99 (momentum 0.01): too slow for a short run.
    (smp_momentum,) = momenta(EffUNet(num_classes=2, encoder_bn_momentum=None))
    assert smp_momentum == pytest.approx(0.01)
    net = EffUNet(num_classes=2)
    assert momenta(net) == {0.1}
    assert decoder_momenta(net) == {0.1}  # smp's decoder already uses PyTorch's default
    # After one training-mode pass the running mean has moved by `momentum` towards the batch mean.
    bn = next(m for m in net.unet.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    seen = {}
    bn.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0].detach()))
    before = bn.running_mean.clone()
    net.train()
    net(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    batch_mean = seen["x"].mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.9 * before + 0.1 * batch_mean)
    with pytest.raises(ValueError, match="encoder_bn_momentum"):
        EffUNet(num_classes=2, encoder_bn_momentum=0.0)
