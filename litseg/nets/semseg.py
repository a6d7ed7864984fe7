"""SemSeg's detector (open-set instance segmentation, RA-L 2024) on torchvision detection parts.

Spec: ``/work/shared/specs/semseg.md`` sections 1.1-1.3, 1.7, 1.8 and 8. SemSeg = Openset R-CNN's
classification-free detector + a class-semantics-modulated mask head. This module holds the parts
that torchvision's Mask R-CNN does not have and that replace its ``rpn`` and ``roi_heads`` wholesale
(replacing only ``rpn.head`` / the predictors would keep the objectness BCE, the RPN NMS and
``fastrcnn_loss``):

* :class:`OLNRPN`: the OLN "classification-free" RPN (one square anchor per location, channel-L2-
  normalised head, FCOS-style ltrb deltas with an IoU loss, sigmoid centerness with an L1 loss, top-k
  per level by centerness and **no NMS**) (SemSeg: ``semseg/modeling/proposal_generator/oln_rpn.py``,
  ``semseg/modeling/find_top_proposals.py``).
* :class:`OpenSetRoIHeads`: class-agnostic box + IoU head, the embedding / prototype head, the known
  classifier and the modulated mask head, with their losses and the two-branch open-set inference
  (SemSeg: ``semseg/modeling/roi_heads/os_roi_heads.py``, ``os_fast_rcnn.py``; the heads themselves
  live in :mod:`litseg.nets.semseg_heads`).
* :class:`SemSegNet`: ``GeneralizedRCNNTransform`` + ResNet-FPN backbone + the two above.

Kept from torchvision: ``resnet_fpn_backbone`` (p2..p6 = '0'..'3', 'pool'), ``GeneralizedRCNNTransform``
(resize / normalise / pad to 32, box rescaling and mask pasting in ``postprocess``), ``AnchorGenerator``,
``Matcher``, ``BalancedPositiveNegativeSampler``, ``BoxCoder`` (10, 10, 5, 5), ``TwoMLPHead``, ``roi_align``.

Documented deviations from the detectron2 original (spec "must get right" item 16):

* Backbone: torchvision ResNet (stride in the 3x3 conv, RGB, ImageNet mean/std) instead of the MSRA caffe
  ``R-50.pkl`` (stride in 1x1, BGR, std 1); same FrozenBN, same freezing (stem + res2).
* RoI pooling: a thin pooler calling ``torchvision.ops.roi_align(aligned=True, sampling_ratio=0)`` per level
  with detectron2's level assignment and fixed 1/stride scales (== ROIAlignV2), *not* torchvision's
  ``MultiScaleRoIAlign`` (``aligned=False``, ``sampling_ratio=2``).
* Mask targets: the full-image binary GT masks are cropped and resized to 28x28 on the proposal box by
  ``roi_align(aligned=True)`` and thresholded at 0.5 (detectron2's ``BitMasks.crop_and_resize``); the
  upstream COCO loader rasterises the *polygons* inside the box instead (tiny difference at the borders).
* Mask probabilities are pasted by torchvision's ``paste_masks_in_image`` (via ``transform.postprocess``)
  and returned as probabilities; thresholding at 0.5 is the caller's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou, clip_boxes_to_image, roi_align

from litseg.checkpoint import extract_state_dict, load_checkpoint, load_weights
from litseg.io import DataError
from litseg.nets.semseg_heads import (
    EmbeddingHead,
    KnownClassifier,
    ModulatedMaskHead,
    PostprocessConfig,
    dml_loss,
    mask_loss,
    open_set_postprocess,
)

__all__ = ["OLNRPN", "OLNRPNHead", "OpenSetRoIHeads", "SemSegNet", "build_backbone", "centerness_targets",
           "fast_rcnn_losses", "ltrb_decode", "ltrb_encode", "multiscale_roi_align", "paired_iou",
           "select_top_proposals"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# FPN levels p2..p6 as named by torchvision's BackboneWithFPN (LastLevelMaxPool adds 'pool').
RPN_LEVELS = ("0", "1", "2", "3", "pool")
ROI_LEVELS = ("0", "1", "2", "3")  # the RoI poolers use p2..p5 only
ROI_STRIDES = (4, 8, 16, 32)
# OLN anchors: one square anchor per location, 32..512 on p2..p6 (SemSeg configs: ANCHOR_GENERATOR).
ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ANCHOR_RATIOS = ((1.0,),) * 5
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------- boxes
def ltrb_encode(anchors: Tensor, boxes: Tensor) -> Tensor:
    """FCOS-style linear deltas (l, t, r, b): anchor centre to box sides, divided by anchor w / h.

    detectron2 ``Box2BoxTransformLinear(normalize_by_size=True)``, used by SemSeg's OLN RPN.
    """
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    cx = 0.5 * (anchors[:, 0] + anchors[:, 2])
    cy = 0.5 * (anchors[:, 1] + anchors[:, 3])
    return torch.stack(((cx - boxes[:, 0]) / w, (cy - boxes[:, 1]) / h,
                        (boxes[:, 2] - cx) / w, (boxes[:, 3] - cy) / h), dim=1)


def ltrb_decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`ltrb_encode`; ReLU on the deltas first (distances are non-negative)."""
    d = F.relu(deltas)
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    cx = 0.5 * (anchors[:, 0] + anchors[:, 2])
    cy = 0.5 * (anchors[:, 1] + anchors[:, 3])
    return torch.stack((cx - d[:, 0] * w, cy - d[:, 1] * h, cx + d[:, 2] * w, cy + d[:, 3] * h), dim=1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise IoU of two N x 4 xyxy box sets (row i with row i)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=_EPS)


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """OLN centerness of each anchor centre w.r.t. its matched GT box (row i with row i).

    ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` with (l, t, r, b) the distances from the anchor centre
    to the GT sides; 0 when the centre is not strictly inside the GT (SemSeg: ``oln_rpn.py``).
    """
    cx = 0.5 * (anchors[:, 0] + anchors[:, 2])
    cy = 0.5 * (anchors[:, 1] + anchors[:, 3])
    left, top = cx - gt_boxes[:, 0], cy - gt_boxes[:, 1]
    right, bottom = gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy
    inside = torch.stack((left, top, right, bottom), dim=1).min(dim=1).values > 0
    lr = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=_EPS)
    tb = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=_EPS)
    ctr = torch.sqrt((lr * tb).clamp(min=0))
    return torch.where(inside, ctr, torch.zeros_like(ctr))


# ---------------------------------------------------------------------------------------------- backbone
def build_backbone(backbone_name: str = "resnet50", backbone_weights: str | os.PathLike[str] | None = None,
                   trainable_layers: int = 3) -> BackboneWithFPN:
    """ResNet-FPN (p2..p6, 256 ch) with FrozenBN; ImageNet weights only from a local file.

    ``trainable_layers=3`` freezes stem + layer1 (== detectron2 FREEZE_AT=2). ``backbone_weights`` is a
    torchvision-style ResNet state dict (``fc.*`` is ignored), loaded with ``weights_only=True`` into the
    ResNet body; FPN construction does not touch the body's weights, so loading after the wrap is the same
    as loading before it. Nothing is ever downloaded; a missing or mismatching file raises DataError.
    """
    backbone = resnet_fpn_backbone(backbone_name=backbone_name, weights=None, trainable_layers=trainable_layers)
    if backbone_weights is not None:
        sd = extract_state_dict(load_checkpoint(backbone_weights))
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        if not sd:
            raise DataError(backbone_weights, "no ResNet weights found")
        # FrozenBatchNorm2d drops num_batches_tracked itself; everything else must match the body.
        load_weights(backbone.body, backbone_weights, checkpoint=sd)
    return backbone


# ---------------------------------------------------------------------------------------------- RPN
class OLNRPNHead(nn.Module):
    """Shared OLN head: 3x3 conv + ReLU -> L2-normalise over channels -> 1x1 ltrb deltas / 1x1 centerness."""

    def __init__(self, in_channels: int = 256) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 1)
        self.centerness = nn.Conv2d(in_channels, 1, 1)
        for layer in (self.conv, self.bbox_pred, self.centerness):  # SemSeg: N(0, 0.01), bias 0
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: deltas N x (H*W) x 4 and centerness logits N x (H*W), in AnchorGenerator's order."""
        deltas, ctr = [], []
        for x in feats:
            t = F.normalize(F.relu(self.conv(x)), dim=1)
            n = x.shape[0]
            deltas.append(self.bbox_pred(t).permute(0, 2, 3, 1).reshape(n, -1, 4))
            ctr.append(self.centerness(t).reshape(n, -1))
        return deltas, ctr


def select_top_proposals(anchors: Sequence[Tensor], deltas: Sequence[Tensor], ctr_logits: Sequence[Tensor],
                         image_size: tuple[int, int], topk: int) -> tuple[Tensor, Tensor]:
    """One image's proposals: per level the top-k anchors by sigmoid centerness, decoded, clipped, non-empty.

    No NMS and no post-NMS top-k (commented out upstream; SemSeg: ``find_top_proposals.py``). Returns the
    boxes (P x 4) and their centerness scores (P), detached.
    """
    all_boxes, all_scores = [], []
    for a, d, c in zip(anchors, deltas, ctr_logits):
        scores = torch.sigmoid(c.detach())
        k = min(topk, scores.numel())
        scores, idx = scores.topk(k)
        boxes = clip_boxes_to_image(ltrb_decode(d.detach()[idx], a[idx]), image_size)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
    return torch.cat(all_boxes), torch.cat(all_scores)


class OLNRPN(nn.Module):
    """OLN classification-free RPN (spec 1.2). forward -> (proposals, centerness scores, losses).

    Losses (normaliser 256 x N images, constant): ``loss_rpn_loc`` = sum over sampled box positives of
    1 - IoU(decoded, GT), x 10; ``loss_rpn_ctr`` = sum over sampled centerness anchors of
    |sigmoid(ctr) - target|, x 1.
    """

    def __init__(self, in_channels: int = 256, pre_topk_train: int = 2000, pre_topk_test: int = 1000,
                 batch_size_per_image: int = 256, loc_weight: float = 10.0, ctr_weight: float = 1.0) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(ANCHOR_SIZES, ANCHOR_RATIOS)
        self.head = OLNRPNHead(in_channels)
        # Two matchings of one IoU matrix (oln_rpn.py): box regression [0.3, 0.7], centerness [0.1, 0.3].
        self.box_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
        self.ctr_matcher = Matcher(0.3, 0.1, allow_low_quality_matches=True)
        self.box_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, 0.5)
        # Positive fraction 1.0: negatives only fill up when there are fewer than 256 positives.
        self.ctr_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, 1.0)
        self.batch_size_per_image = batch_size_per_image
        self.pre_topk_train = pre_topk_train
        self.pre_topk_test = pre_topk_test
        self.loc_weight = loc_weight
        self.ctr_weight = ctr_weight

    @staticmethod
    def _sampler_labels(matches: Tensor) -> Tensor:
        # Matcher: >= 0 matched, -1 below low (negative), -2 between (ignore) -> sampler 1 / 0 / -1.
        labels = torch.zeros_like(matches)
        labels[matches >= 0] = 1
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
        return labels

    def losses(self, anchors: Sequence[Tensor], deltas: Sequence[Tensor], ctr_logits: Sequence[Tensor],
               gt_boxes: Sequence[Tensor]) -> dict[str, Tensor]:
        """Per image: anchors A x 4, deltas A x 4, centerness logits A, GT boxes G x 4 (G may be 0)."""
        box_labels, ctr_labels, matched = [], [], []
        for a, g in zip(anchors, gt_boxes):
            if g.numel() == 0:  # no GT: every anchor is a negative (zero box loss, centerness target 0)
                box_labels.append(torch.zeros(a.shape[0], dtype=torch.int64, device=a.device))
                ctr_labels.append(torch.zeros(a.shape[0], dtype=torch.int64, device=a.device))
                matched.append(torch.zeros_like(a))
                continue
            iou = box_iou(g, a)
            box_m = self.box_matcher(iou)
            ctr_m = self.ctr_matcher(iou)
            box_labels.append(self._sampler_labels(box_m))
            ctr_labels.append(self._sampler_labels(ctr_m))
            # Both matchers pick the arg-max GT for any matched anchor, so one matched box per anchor.
            matched.append(g[iou.argmax(dim=0)])
        box_pos, _ = self.box_sampler(box_labels)
        ctr_pos, ctr_neg = self.ctr_sampler(ctr_labels)

        loc_sum = deltas[0].new_zeros(())
        ctr_sum = deltas[0].new_zeros(())
        for i, a in enumerate(anchors):
            pos = box_pos[i].bool()
            decoded = ltrb_decode(deltas[i][pos], a[pos])
            loc_sum = loc_sum + (1.0 - paired_iou(decoded, matched[i][pos])).sum()
            sampled = (ctr_pos[i] | ctr_neg[i]).bool()
            target = centerness_targets(a, matched[i]) * ctr_pos[i].to(a.dtype)
            ctr_sum = ctr_sum + (torch.sigmoid(ctr_logits[i][sampled]) - target[sampled]).abs().sum()
        norm = float(self.batch_size_per_image * len(anchors))
        return {"loss_rpn_loc": loc_sum / norm * self.loc_weight, "loss_rpn_ctr": ctr_sum / norm * self.ctr_weight}

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        feats = [features[k] for k in RPN_LEVELS]
        deltas, ctr = self.head(feats)
        anchors = self.anchor_generator(images, feats)  # per image, levels concatenated
        per_level = [d.shape[1] for d in deltas]
        topk = self.pre_topk_train if self.training else self.pre_topk_test
        proposals, scores = [], []
        for i, a in enumerate(anchors):
            boxes, s = select_top_proposals(a.split(per_level), [d[i] for d in deltas], [c[i] for c in ctr],
                                            images.image_sizes[i], topk)
            proposals.append(boxes)
            scores.append(s)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training")
            all_deltas = torch.cat(deltas, dim=1)
            all_ctr = torch.cat(ctr, dim=1)
            losses = self.losses(anchors, list(all_deltas), list(all_ctr), [t["boxes"] for t in targets])
        return proposals, scores, losses


# ---------------------------------------------------------------------------------------------- RoI heads
def multiscale_roi_align(features: Sequence[Tensor], boxes: Sequence[Tensor], output_size: int,
                         strides: Sequence[int] = ROI_STRIDES, canonical_size: float = 224.0,
                         canonical_level: int = 4) -> Tensor:
    """detectron2 ROIAlignV2 over p2..p5: ``roi_align(aligned=True, sampling_ratio=0)`` at 1/stride.

    Level of a box = floor(canonical_level + log2(sqrt(area) / canonical_size)), clamped to the levels
    (detectron2 ``assign_boxes_to_levels``). Returns R x C x S x S in the order of ``boxes`` concatenated.
    """
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
    min_level = int(math.log2(strides[0]))
    sizes = torch.sqrt(((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=0))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_size + 1e-8))
    levels = levels.clamp(min=min_level, max=min_level + len(strides) - 1).to(torch.int64) - min_level
    feat0 = features[0]
    out = feat0.new_zeros((rois.shape[0], feat0.shape[1], output_size, output_size))
    for lvl, (feat, stride) in enumerate(zip(features, strides)):
        idx = torch.nonzero(levels == lvl).flatten()
        if idx.numel() == 0:
            continue
        pooled = roi_align(feat, rois[idx], (output_size, output_size), spatial_scale=1.0 / stride,
                           sampling_ratio=0, aligned=True)
        out[idx] = pooled.to(out.dtype)  # autocast may pool in another dtype
    return out


def fast_rcnn_losses(proposals: Tensor, matched_gt: Tensor, is_fg: Tensor, pred_deltas: Tensor,
                     iou_logits: Tensor, box_coder: BoxCoder, reg_weight: float = 2.0,
                     iou_weight: float = 1.0) -> dict[str, Tensor]:
    """OLN box-head losses over R sampled RoIs (SemSeg: ``box_regression_w_iou.py``, ``os_fast_rcnn.py``).

    ``loss_box_reg`` = sum_fg L1(pred deltas, BoxCoder(10,10,5,5) GT deltas) / R x 2;
    ``loss_iou`` = sum_fg |sigmoid(iou) - IoU(proposal, matched GT)| / R x 1 (the *input* proposal's IoU).
    R counts all sampled RoIs (fg and bg).
    """
    num_rois = max(proposals.shape[0], 1)
    fg = is_fg.bool()
    target = box_coder.encode_single(matched_gt[fg], proposals[fg])
    reg = (pred_deltas[fg] - target).abs().sum()
    iou_t = paired_iou(proposals[fg], matched_gt[fg])
    iou = (torch.sigmoid(iou_logits.reshape(-1)[fg]) - iou_t).abs().sum()
    return {"loss_box_reg": reg / num_rois * reg_weight, "loss_iou": iou / num_rois * iou_weight}


class OpenSetRoIHeads(nn.Module):
    """Class-agnostic OLN box head + embedding / classifier / modulated mask heads (spec 1.3-1.7).

    Training returns the five RoI losses; inference returns per image ``boxes``, ``scores``, ``labels``
    (-1 unknown, else the known index) and ``masks`` (D x 1 x 28 x 28 probabilities, pooled on the
    refined boxes, kernels from the embedding of the proposal that produced each detection).
    """

    def __init__(self, num_known: int, in_channels: int = 256, representation_size: int = 1024, emb_dim: int = 256,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, fg_iou_thresh: float = 0.5,
                 bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                 box_reg_weight: float = 2.0, iou_weight: float = 1.0, dml_weight: float = 2.0,
                 cls_weight: float = 1.0, dml_alpha: float = 0.05, dml_beta: float = 0.95,
                 class_agnostic_mask: bool = False, mask_conv_dim: int = 256, mask_num_conv: int = 4,
                 mask_emb_dim: int = 128, postprocess: PostprocessConfig | None = None) -> None:
        super().__init__()
        self.num_known = num_known
        self.box_head = TwoMLPHead(in_channels * 7 * 7, representation_size)
        for fc in (self.box_head.fc6, self.box_head.fc7):  # detectron2 c2_xavier_fill on the box-head FCs
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        self.bbox_pred = nn.Linear(representation_size, 4)  # class-agnostic (CLS_AGNOSTIC_BBOX_REG)
        self.iou_pred = nn.Linear(representation_size, 1)
        for layer, std in ((self.bbox_pred, 0.001), (self.iou_pred, 0.01)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        self.embedding = EmbeddingHead(num_known, representation_size, emb_dim)
        self.classifier = KnownClassifier(num_known, representation_size)
        self.mask_head = ModulatedMaskHead(in_channels, mask_conv_dim, mask_num_conv, mask_emb_dim, emb_dim,
                                           class_agnostic=class_agnostic_mask)
        self.box_coder = BoxCoder(bbox_reg_weights)
        # IoU >= 0.5 fg, < 0.5 bg, no low-quality matches (detectron2 ROI_HEADS defaults).
        self.proposal_matcher = Matcher(fg_iou_thresh, fg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_reg_weight = box_reg_weight
        self.iou_weight = iou_weight
        self.dml_weight = dml_weight
        self.cls_weight = cls_weight
        self.dml_alpha = dml_alpha
        self.dml_beta = dml_beta
        self.postprocess_cfg = postprocess or PostprocessConfig()

    def box_features(self, feats: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        return self.box_head(multiscale_roi_align(feats, boxes, 7))

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], proposal_scores: list[Tensor],
                image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]] | None = None,
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        feats = [features[k] for k in ROI_LEVELS]
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training")
            return [], self._forward_train(feats, proposals, targets)
        return self._forward_test(feats, proposals, proposal_scores, image_sizes), {}

    def _sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Per image: GT boxes appended to the proposals, matched at IoU 0.5, 512 RoIs with <= 25 % fg."""
        per_image, sampler_labels = [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            props = torch.cat([props, gt])
            n = props.shape[0]
            if gt.shape[0] == 0:  # no GT: every RoI is background
                match = torch.zeros(n, dtype=torch.int64, device=props.device)
                is_fg = torch.zeros(n, dtype=torch.bool, device=props.device)
                iou = props.new_zeros(n)
            else:
                iou_mat = box_iou(gt, props)
                m = self.proposal_matcher(iou_mat)
                is_fg = m >= 0
                match = m.clamp(min=0)
                iou = iou_mat.gather(0, match[None]).squeeze(0)
            per_image.append({"props": props, "match": match, "fg": is_fg, "iou": iou})
            sampler_labels.append(is_fg.to(torch.int64))  # 1 fg, 0 bg (no ignore band)
        pos, neg = self.fg_bg_sampler(sampler_labels)
        out = []
        for s, t, p, q in zip(per_image, targets, pos, neg):
            keep = torch.nonzero(p | q).flatten()
            fg = s["fg"][keep]
            match = s["match"][keep]
            gt = t["boxes"].to(s["props"].dtype)
            labels = torch.full_like(match, self.num_known)  # background = K
            if gt.shape[0] > 0:
                labels[fg] = t["labels"].to(match.device)[match[fg]]
                matched_gt = gt[match]
            else:
                matched_gt = torch.zeros_like(s["props"][keep])
            out.append({"props": s["props"][keep], "fg": fg, "iou": s["iou"][keep], "labels": labels,
                        "match": match, "matched_gt": matched_gt})
        return out

    def _forward_train(self, feats: Sequence[Tensor], proposals: list[Tensor],
                       targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        samples = self._sample([p.detach() for p in proposals], targets)
        props = [s["props"] for s in samples]
        f = self.box_features(feats, props)
        pred_deltas = self.bbox_pred(f)
        iou_logits = self.iou_pred(f).squeeze(1)
        e, r = self.embedding(f)
        logits = self.classifier(r)

        cat = {k: torch.cat([s[k] for s in samples]) for k in ("props", "fg", "iou", "labels", "matched_gt")}
        num_rois = cat["props"].shape[0]
        losses = fast_rcnn_losses(cat["props"], cat["matched_gt"], cat["fg"], pred_deltas, iou_logits,
                                  self.box_coder, self.box_reg_weight, self.iou_weight)
        # DML only on known-fg RoIs with IoU strictly > 0.5 (deep_metric_learning.py); -1 = excluded.
        dml_labels = torch.where(cat["fg"] & (cat["iou"] > 0.5), cat["labels"], torch.full_like(cat["labels"], -1))
        losses["loss_dml"] = self.dml_weight * dml_loss(e, self.embedding.prototypes, dml_labels, num_rois,
                                                        self.dml_alpha, self.dml_beta)
        losses["loss_cls"] = self.cls_weight * F.cross_entropy(logits, cat["labels"])

        # Mask: fg RoIs pooled 14x14 on the *proposal* box, kernel from their own (not detached) e.
        fg_props = [s["props"][s["fg"]] for s in samples]
        mask_feats = multiscale_roi_align(feats, fg_props, 14)
        mask_logits = self.mask_head(mask_feats, e[cat["fg"]])
        mask_targets = []
        for s, t, boxes in zip(samples, targets, fg_props):
            if boxes.shape[0] == 0:
                continue
            gt_masks = t["masks"].to(device=boxes.device, dtype=boxes.dtype)[:, None]
            rois = torch.cat([s["match"][s["fg"]][:, None].to(boxes.dtype), boxes], dim=1)
            # detectron2 BitMasks.crop_and_resize: aligned RoIAlign of the full-image mask, >= 0.5.
            crop = roi_align(gt_masks, rois, (28, 28), spatial_scale=1.0, sampling_ratio=0, aligned=True)
            mask_targets.append((crop[:, 0] >= 0.5).to(boxes.dtype))
        if mask_targets:
            losses["loss_mask"] = mask_loss(mask_logits, torch.cat(mask_targets))
        else:
            losses["loss_mask"] = mask_logits.sum() * 0.0
        return losses

    @torch.no_grad()
    def _forward_test(self, feats: Sequence[Tensor], proposals: list[Tensor], proposal_scores: list[Tensor],
                      image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        f = self.box_features(feats, proposals)
        pred_deltas = self.bbox_pred(f)
        iou_prob = torch.sigmoid(self.iou_pred(f).squeeze(1))
        e, r = self.embedding(f)
        known_probs = F.softmax(self.classifier(r), dim=1)[:, : self.num_known]  # background column dropped
        counts = [p.shape[0] for p in proposals]
        results, det_boxes, det_emb = [], [], []
        for i, (props, ctr, d, iou, emb, kp) in enumerate(zip(
                proposals, proposal_scores, pred_deltas.split(counts), iou_prob.split(counts), e.split(counts),
                known_probs.split(counts))):
            boxes = clip_boxes_to_image(self.box_coder.decode_single(d, props), image_sizes[i])
            objectness = torch.sqrt(iou * ctr)  # geometric mean of box-head IoU and RPN centerness
            dmin, _ = self.embedding.nearest(emb)
            det = open_set_postprocess(boxes, objectness, dmin, kp, self.postprocess_cfg)
            # dmin travels with each detection: the caller logs where the unknown threshold cuts.
            results.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
                            "dmin": dmin[det["index"]]})
            det_boxes.append(det["boxes"])
            det_emb.append(emb[det["index"]])
        # Masks pooled on the *refined* boxes, kernel = embedding of the producing proposal row.
        mask_feats = multiscale_roi_align(feats, det_boxes, 14)
        masks = torch.sigmoid(self.mask_head(mask_feats, torch.cat(det_emb)))
        for res, m in zip(results, masks.split([b.shape[0] for b in det_boxes])):
            res["masks"] = m
        return results


# ---------------------------------------------------------------------------------------------- model
class SemSegNet(nn.Module):
    """SemSeg: ResNet-FPN + OLN RPN + open-set RoI heads, with torchvision's GeneralizedRCNN transform.

    Training: ``forward(images, targets)`` with images a list of 3 x H x W RGB tensors in [0, 1] and
    targets dicts of ``boxes`` (G x 4 xyxy, pixels), ``labels`` (G, known index 0..K-1) and ``masks``
    (G x H x W uint8) -> the seven losses ``loss_rpn_loc``, ``loss_rpn_ctr``, ``loss_box_reg``, ``loss_iou``,
    ``loss_dml``, ``loss_cls``, ``loss_mask`` (already weighted; sum them). Images without GT are fine.
    Eval: ``forward(images)`` -> per image ``boxes`` (D x 4, original pixels), ``scores``, ``labels`` (-1 =
    unknown, else the known index) and ``masks`` (D x 1 x H x W probabilities pasted into the image).

    ``roi_batch_size_per_image``, ``mask_conv_dim`` and ``mask_num_conv`` exist to shrink the model in tests;
    the defaults are SemSeg's.
    """

    def __init__(self, num_known: int, backbone_name: str = "resnet50",
                 backbone_weights: str | os.PathLike[str] | None = None,
                 min_size: int | tuple[int, ...] = (640, 672, 704, 736, 768, 800), max_size: int = 1333,
                 rpn_pre_topk_train: int = 2000, rpn_pre_topk_test: int = 1000, dml_weight: float = 2.0,
                 cls_weight: float = 1.0, class_agnostic_mask: bool = False,
                 postprocess: PostprocessConfig | None = None, roi_batch_size_per_image: int = 512,
                 mask_conv_dim: int = 256, mask_num_conv: int = 4, trainable_layers: int = 3) -> None:
        super().__init__()
        if num_known < 1:
            raise ValueError(f"num_known must be positive, got {num_known}")
        self.num_known = num_known
        if isinstance(min_size, int):
            min_size = (min_size,)
        # Random short side from min_size per training image, min_size[-1] at eval (keep it ascending).
        self.transform = GeneralizedRCNNTransform(tuple(min_size), max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
        self.backbone = build_backbone(backbone_name, backbone_weights, trainable_layers)
        channels = self.backbone.out_channels
        self.rpn = OLNRPN(channels, rpn_pre_topk_train, rpn_pre_topk_test)
        self.roi_heads = OpenSetRoIHeads(num_known, channels, dml_weight=dml_weight, cls_weight=cls_weight,
                                         batch_size_per_image=roi_batch_size_per_image,
                                         class_agnostic_mask=class_agnostic_mask, mask_conv_dim=mask_conv_dim,
                                         mask_num_conv=mask_num_conv, postprocess=postprocess)

    def _check_targets(self, targets: list[dict[str, Tensor]]) -> None:
        for i, t in enumerate(targets):
            boxes = t.get("boxes")
            if boxes is None or boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target {i}: boxes must be G x 4, got {None if boxes is None else boxes.shape}")
            # A zero-area GT has IoU 0 with every anchor, and the low-quality matching would then make every
            # anchor a positive (as in torchvision's GeneralizedRCNN, refuse them; the data pipeline drops them).
            if boxes.numel() and bool(((boxes[:, 2:] <= boxes[:, :2]).any(dim=1)).any()):
                raise ValueError(f"target {i}: degenerate boxes (x2 <= x1 or y2 <= y1)")
            for key in ("labels", "masks"):
                if key not in t or t[key].shape[0] != boxes.shape[0]:
                    raise ValueError(f"target {i}: {key} missing or not one per box")
            if t["labels"].numel() and (t["labels"].min() < 0 or t["labels"].max() >= self.num_known):
                raise ValueError(f"target {i}: labels must be known indices in [0, {self.num_known})")

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training")
            self._check_targets(targets)
            targets = [{**t, "boxes": t["boxes"].float()} for t in targets]
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets if self.training else None)
        features = self.backbone(image_list.tensors)
        proposals, scores, rpn_losses = self.rpn(image_list, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, scores, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
