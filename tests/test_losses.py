"""litseg/losses.py against hand-computed values and torch / torchvision references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from litseg.imaging import IGNORE_INDEX
from litseg.losses import dice_loss, kl_loss, partial_cross_entropy, sigmoid_focal_loss


def test_dice_by_hand():
    # logits 0 -> p = 0.5 everywhere; target has 2 of 4 pixels: (2 * 1 + 1) / (2 + 2 + 1) = 3/5
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert dice_loss(logits, target).item() == pytest.approx(1 - 3 / 5)
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 2 / 4)
    # a confident perfect prediction: loss ~ 0; per-sample reduction keeps the batch axis
    perfect = (target * 2 - 1) * 50
    both = dice_loss(torch.cat([perfect, logits]), torch.cat([target, target]), reduction="none")
    assert both.shape == (2,)
    assert both[0].item() == pytest.approx(0.0, abs=1e-6) and both[1].item() == pytest.approx(0.4)
    assert dice_loss(torch.cat([perfect, logits]), torch.cat([target, target]), reduction="sum").item() == (
        pytest.approx(0.4))
    with pytest.raises(ValueError, match="differ"):
        dice_loss(logits, target[..., :1])


def test_focal_by_hand_and_against_torchvision():
    # one positive pixel at logit 0: p_t = 0.5, CE = ln 2, (1 - p_t)^2 = 1/4, alpha 0.25
    one = sigmoid_focal_loss(torch.zeros(1), torch.ones(1), reduction="sum")
    assert one.item() == pytest.approx(0.25 * math.log(2) / 4)
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 7, 5) * 3
    target = (torch.rand(3, 1, 7, 5) > 0.6).float()
    for alpha, gamma in [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5), (0.8, 3.0)]:
        for reduction in ("none", "mean", "sum"):
            ours = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction=reduction)
            ref = tv_focal(logits, target, alpha=alpha, gamma=gamma, reduction=reduction)
            torch.testing.assert_close(ours, ref)
    # gamma 0 without alpha weighting is plain BCE
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, alpha=-1, gamma=0.0),
                               F.binary_cross_entropy_with_logits(logits, target))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, target, reduction="avg")


def test_partial_cross_entropy_by_hand_and_against_torch():
    ln = math.log
    logits = torch.zeros(1, 2, 1, 4)  # uniform over 2 classes: CE = ln 2 on every pixel
    logits[0, 1, 0, 0] = math.log(3.0)  # pixel 0: p(class 1) = 3/4
    target = torch.tensor([[[1, 0, 0, IGNORE_INDEX]]])
    plain = (ln(4 / 3) + 2 * ln(2)) / 3  # pixel 0: class 1 at p = 3/4; pixels 1, 2: class 0 at p = 1/2
    assert partial_cross_entropy(logits, target).item() == pytest.approx(plain)
    # class balanced: class 1 -> ln(4/3), class 0 -> ln 2, mean of the two
    assert partial_cross_entropy(logits, target, class_balanced=True).item() == pytest.approx((ln(4 / 3) + ln(2)) / 2)
    torch.manual_seed(1)
    big = torch.randn(2, 3, 6, 6)
    labels = torch.randint(0, 3, (2, 6, 6))
    labels[:, :2] = IGNORE_INDEX
    want = F.cross_entropy(big, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(partial_cross_entropy(big, labels), want)
    # nothing labelled: zero, and backward still works
    leaf = big.clone().requires_grad_()
    zero = partial_cross_entropy(leaf, torch.full((2, 6, 6), IGNORE_INDEX), class_balanced=True)
    zero.backward()
    assert zero.item() == 0.0 and torch.all(leaf.grad == 0)


def test_kl_loss_by_hand_and_against_torch():
    # target mass on one of two pixels, prediction uniform: KL = ln 2 for that sample
    pred = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert kl_loss(pred, target).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    torch.manual_seed(2)
    p, q = torch.rand(4, 1, 5, 5) + 0.1, torch.rand(4, 1, 5, 5) + 0.1
    pn, qn = p.flatten(1) / p.flatten(1).sum(1, keepdim=True), q.flatten(1) / q.flatten(1).sum(1, keepdim=True)
    ref = F.kl_div(pn.log(), qn, reduction="batchmean")  # KL(q || p), batch mean
    assert kl_loss(p, q).item() == pytest.approx(ref.item(), rel=1e-5)
