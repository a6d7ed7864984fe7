"""SemSeg heads: the DML embedding and its prototype loss, the known classifier, the modulated mask
head, the mask loss and the two-branch open-set post-processing, against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from litseg.nets.semseg_heads import (
    UNKNOWN_LABEL,
    EmbeddingHead,
    KnownClassifier,
    ModulatedMaskHead,
    PostprocessConfig,
    dml_loss,
    mask_loss,
    open_set_postprocess,
)


# ---------------------------------------------------------------------------------------------- DML
def test_embedding_head_normalises_e_and_decodes_the_unnormalised_code():
    torch.manual_seed(0)
    head = EmbeddingHead(num_known=3, in_dim=10, emb_dim=4)
    with torch.no_grad():  # make the encoder output clearly non-unit so the two paths differ
        head.encoder.weight.normal_(std=1.0)
        head.encoder.bias.fill_(0.5)
    f = torch.randn(5, 10)
    e, r = head(f)
    z = f @ head.encoder.weight.t() + head.encoder.bias
    assert e.shape == (5, 4) and r.shape == (5, 10)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(e, z / z.norm(dim=1, keepdim=True))
    torch.testing.assert_close(r, z @ head.decoder.weight.t() + head.decoder.bias)
    assert not torch.allclose(r, head.decoder(e))  # the decoder does not see the normalised e


def test_embedding_head_init():
    torch.manual_seed(0)
    head = EmbeddingHead(num_known=20)
    assert head.prototypes.shape == (20, 256) and head.prototypes.requires_grad
    for layer in (head.encoder, head.decoder):
        assert layer.bias.abs().max() == 0
        assert abs(layer.weight.std().item() - 0.01) < 5e-4
    assert abs(head.prototypes.std().item() - 1.0) < 0.1
    clf = KnownClassifier(num_known=20)
    assert clf(torch.zeros(3, 1024)).shape == (3, 21)
    assert clf.cls_score.bias.abs().max() == 0 and abs(clf.cls_score.weight.std().item() - 0.01) < 1e-3


def test_distances_and_nearest_use_normalised_prototypes():
    head = EmbeddingHead(num_known=3, in_dim=4, emb_dim=2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [4.0, 3.0]]))  # units (1,0), (0,1), (.8,.6)
    e = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    d = head.distances(e)
    torch.testing.assert_close(d, torch.tensor([[0.0, 1.0, 0.2], [0.4, 0.2, 0.04]]))
    dmin, cls = head.nearest(e)
    torch.testing.assert_close(dmin, torch.tensor([0.0, 0.04]))
    assert cls.tolist() == [0, 2]


# Hand-made case for dml_loss. Prototypes normalise to P0 = (1, 0), P1 = (0, 1), P2 = (0.8, 0.6).
#   prototype distances: d(P0,P1) = 1, d(P0,P2) = 0.2, d(P1,P2) = 0.4
#   separation: min others per prototype = 0.2, 0.4, 0.2 -> hinges (1.0 - .) = 0.8 + 0.6 + 0.8 = 2.2
# RoI 0, e = (1, 0), label 0: d = (0, 1, 0.2): intra max(0 - .05, 0) = 0; inter min(1, .2) = .2 -> .95 - .2 = .75
# RoI 1, e = (.6, .8), label 1: d = (.4, .2, .04): intra .2 - .05 = .15; inter min(.4, .04) = .04 -> .91
# RoI 2, e = (0, -1), label -1: excluded (would add intra max(2 - .05, 0) = 1.95 if it counted)
# sum = 0 + .75 + .15 + .91 + 2.2 = 4.01
PROTOS = torch.tensor([[2.0, 0.0], [0.0, 3.0], [4.0, 3.0]])
EMB = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
LABELS = torch.tensor([0, 1, -1])


def test_dml_loss_hand_computed_with_excluded_roi_and_normaliser():
    e = EMB.clone().requires_grad_(True)
    loss = dml_loss(e, PROTOS, LABELS, num_rois=4)
    torch.testing.assert_close(loss, torch.tensor(4.01 / 4))
    torch.testing.assert_close(dml_loss(EMB, PROTOS, LABELS, num_rois=8), torch.tensor(4.01 / 8))
    torch.testing.assert_close(dml_loss(EMB, PROTOS, LABELS, num_rois=torch.tensor(8)), torch.tensor(4.01 / 8))
    loss.backward()
    assert e.grad[2].abs().max() == 0  # the excluded RoI gets no gradient
    assert e.grad[1].abs().max() > 0
    # Excluded RoIs only: the separation term alone remains.
    torch.testing.assert_close(dml_loss(EMB, PROTOS, torch.full((3,), -1), num_rois=4), torch.tensor(2.2 / 4))
    # Custom margins: alpha = 0.1, beta = 0.9 -> intra .1, inter (.9-.2)+(.9-.04) = 1.56, sep the same 2.2.
    torch.testing.assert_close(dml_loss(EMB, PROTOS, LABELS, 1, alpha=0.1, beta=0.9), torch.tensor(0.1 + 1.56 + 2.2))


def test_dml_loss_single_known_class_has_only_the_intra_term():
    protos = torch.tensor([[0.0, 5.0]])
    e = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    loss = dml_loss(e, protos, torch.tensor([0, 0]), num_rois=2)
    torch.testing.assert_close(loss, torch.tensor(((0.2 - 0.05) + (1.0 - 0.05)) / 2))
    assert torch.isfinite(loss)


def test_dml_loss_trains_prototypes_through_the_graph():
    protos = PROTOS.clone().requires_grad_(True)
    dml_loss(EMB, protos, LABELS, num_rois=4).backward()
    assert protos.grad is not None and protos.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- mask
def tiny_mask_head(**kw) -> ModulatedMaskHead:
    return ModulatedMaskHead(in_channels=4, conv_dim=8, num_conv=2, mask_emb_dim=5, emb_dim=6, **kw)


def test_modulated_mask_head_is_a_per_instance_dynamic_1x1_conv():
    torch.manual_seed(0)
    head = tiny_mask_head()
    x = torch.randn(3, 4, 14, 14)
    e = F.normalize(torch.randn(3, 6), dim=1).requires_grad_(True)
    logits = head(x, e)
    assert logits.shape == (3, 1, 28, 28)
    feats = head.tower(x)
    assert feats.shape == (3, 5, 28, 28)
    kernels = head.kernel_mlp(e)
    manual = torch.cat([F.conv2d(feats[i: i + 1], kernels[i].view(1, 5, 1, 1)) for i in range(3)])
    torch.testing.assert_close(logits, manual)
    # Each instance uses its own kernel: swapping embeddings swaps nothing else.
    swapped = head(x, e.flip(0))
    assert not torch.allclose(swapped, logits)
    # The embedding is not detached: the mask loss reaches e.
    mask_loss(logits, (torch.rand(3, 28, 28) > 0.5).float()).backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


def test_modulated_mask_head_structure_and_init():
    head = ModulatedMaskHead()
    convs = [m for m in head.tower if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 6 and isinstance(convs[4], torch.nn.ConvTranspose2d)
    assert convs[-1].out_channels == 128 and not isinstance(head.tower[-1], torch.nn.ReLU)
    assert all(c.bias.abs().max() == 0 for c in convs)
    fan_out = 256 * 9
    assert abs(convs[0].weight.std().item() - (2.0 / fan_out) ** 0.5) < 2e-3
    lin = [m for m in head.kernel_mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(256, 256), (256, 128)]
    assert all(m.bias.abs().max() == 0 and abs(m.weight.std().item() - 0.01) < 1e-3 for m in lin)


def test_class_agnostic_mask_head_ignores_e():
    torch.manual_seed(0)
    head = tiny_mask_head(class_agnostic=True)
    assert head.kernel_mlp is None
    x = torch.randn(2, 4, 14, 14)
    out = head(x, None)
    assert out.shape == (2, 1, 28, 28)
    torch.testing.assert_close(head(x, torch.randn(2, 6)), out)
    torch.testing.assert_close(out, head.predictor(head.tower(x)))


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_mask_head_with_no_rois(class_agnostic):
    head = tiny_mask_head(class_agnostic=class_agnostic)
    out = head(torch.zeros(0, 4, 14, 14), torch.zeros(0, 6))
    assert out.shape == (0, 1, 28, 28)
    loss = mask_loss(out, torch.zeros(0, 28, 28))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_mask_loss_is_mean_bce():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 28, 28)
    targets = (torch.rand(3, 28, 28) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits.squeeze(1), targets, reduction="mean")
    torch.testing.assert_close(mask_loss(logits, targets), expected)
    # by hand on one pixel value: logit 0 -> log 2 whatever the target
    torch.testing.assert_close(mask_loss(torch.zeros(1, 1, 2, 2), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])),
                               torch.log(torch.tensor(2.0)))


# ---------------------------------------------------------------------------------------------- inference
# Rows (K = 3 known classes):
#   0 unknown (dmin just above .085), objectness .9                       -> unknown, score .9
#   1 known (dmin just below), probs (.6, .3, .02), objectness .8        -> known c0 .6 and c1 .3 (twice)
#   2 known, overlaps row 1, probs (.5, .01, .4), objectness .7          -> c0 suppressed by row 1, c2 .4 kept
#   3 objectness .04 (gate .05), would be unknown and known                -> dropped
#   4 unknown, overlaps row 0, objectness .6                              -> suppressed (class-agnostic NMS)
#   5 unknown, far away, objectness .3                                    -> unknown, score .3
#   6 known, all known probs <= .05 (background wins), objectness .5      -> dropped
BOXES = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],
    [50.0, 50.0, 60.0, 60.0],
    [51.0, 50.0, 61.0, 60.0],
    [200.0, 200.0, 220.0, 220.0],
    [1.0, 0.0, 11.0, 10.0],
    [100.0, 100.0, 120.0, 120.0],
    [300.0, 300.0, 320.0, 320.0],
])
OBJ = torch.tensor([0.9, 0.8, 0.7, 0.04, 0.6, 0.3, 0.5])
DMIN = torch.tensor([0.0851, 0.0849, 0.01, 0.5, 0.5, 0.2, 0.02])
PROBS = torch.tensor([
    [0.9, 0.0, 0.0],
    [0.6, 0.3, 0.02],
    [0.5, 0.01, 0.4],
    [0.9, 0.9, 0.9],
    [0.9, 0.0, 0.0],
    [0.9, 0.0, 0.0],
    [0.03, 0.03, 0.04],
])


def test_open_set_postprocess_branches():
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig())
    # unknown first (by objectness), then known (by softmax prob, not p * objectness)
    assert out["index"].tolist() == [0, 5, 1, 2, 1]
    assert out["labels"].tolist() == [UNKNOWN_LABEL, UNKNOWN_LABEL, 0, 2, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.3, 0.6, 0.4, 0.3]))
    torch.testing.assert_close(out["boxes"], BOXES[out["index"]])
    assert out["labels"].dtype == torch.int64 and out["index"].dtype == torch.int64


def test_open_set_postprocess_unknown_threshold_decides_the_branch():
    cfg = PostprocessConfig(unknown_threshold=0.0848)  # now row 1 is unknown too
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, cfg)
    assert out["index"].tolist() == [0, 1, 5, 2, 2]
    assert out["labels"].tolist() == [-1, -1, -1, 0, 2]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.8, 0.3, 0.5, 0.4]))


def test_open_set_postprocess_topk_caps_and_max_proposals():
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig(unknown_topk=1, known_topk=2))
    assert out["index"].tolist() == [0, 1, 2]
    assert out["labels"].tolist() == [-1, 0, 2]
    # Only the 2 rows of highest objectness (0 and 1) survive the proposal cap.
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig(max_proposals=2))
    assert out["index"].tolist() == [0, 1, 1]
    assert out["labels"].tolist() == [-1, 0, 1]


def test_open_set_postprocess_objectness_gate_and_known_threshold():
    # Raise the gate above .65: rows 4, 5, 6 go; the unknown NMS victim (row 4) is gone anyway.
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig(objectness_threshold=0.65))
    assert out["index"].tolist() == [0, 1, 2, 1]
    # Known score threshold .35: row 1's class-1 pair (.3) drops out.
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig(known_score_threshold=0.35))
    assert out["index"].tolist() == [0, 5, 1, 2]
    assert out["labels"].tolist() == [-1, -1, 0, 2]
    # NMS off (threshold 1.0): the overlapping rows all survive.
    out = open_set_postprocess(BOXES, OBJ, DMIN, PROBS, PostprocessConfig(known_nms=1.0, unknown_nms=1.0))
    assert out["index"].tolist() == [0, 4, 5, 1, 2, 2, 1]
    assert out["labels"].tolist() == [-1, -1, -1, 0, 0, 2, 1]


@pytest.mark.parametrize("rows", [0, 1])
def test_open_set_postprocess_empty(rows):
    # rows = 0: no proposals at all; rows = 1: one proposal below the objectness gate.
    out = open_set_postprocess(torch.zeros(rows, 4), torch.full((rows,), 0.01), torch.zeros(rows),
                               torch.full((rows, 3), 0.9))
    assert out["boxes"].shape == (0, 4)
    assert out["scores"].shape == (0,) and out["labels"].shape == (0,) and out["index"].shape == (0,)
    assert out["labels"].dtype == torch.int64 and out["index"].dtype == torch.int64
