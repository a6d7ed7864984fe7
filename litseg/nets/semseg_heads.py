"""SemSeg's method-defining heads (open-set instance segmentation, RA-L 2024), as plain torch modules.

Spec: ``/work/shared/specs/semseg.md`` sections 1.4-1.8. What lives here:

* :class:`EmbeddingHead` ("DML"): the class-semantics embedding ``e`` (unit 256-d), the decoder
  reconstruction ``r`` and the K learnable class prototypes; :func:`dml_loss` is the double-margin
  hinge loss to those prototypes (SemSeg: ``semseg/modeling/roi_heads/deep_metric_learning.py``).
* :class:`KnownClassifier`: the K+1-way softmax classifier on ``r``
  (SemSeg: ``semseg/modeling/roi_heads/softmax_classifier.py``).
* :class:`ModulatedMaskHead`: the mask tower whose output layer is a per-instance dynamic 1x1 conv
  with weights generated from ``e``; :func:`mask_loss` (SemSeg: ``semseg/modeling/roi_heads/os_mask_head.py``).
* :func:`open_set_postprocess`: the two-branch known / unknown inference of section 1.7
  (SemSeg: ``os_fast_rcnn.py``, ``deep_metric_learning.py``, ``softmax_classifier.py``).

The RPN, box head and the model assembly live in ``litseg.nets.semseg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, nms

__all__ = ["EmbeddingHead", "KnownClassifier", "ModulatedMaskHead", "PostprocessConfig", "UNKNOWN_LABEL",
           "dml_loss", "mask_loss", "open_set_postprocess"]

# Label of unknown detections in open_set_postprocess's output (the caller maps it to COCO id 1000).
UNKNOWN_LABEL = -1

# Hidden width of the kernel MLP (SemSeg builds it with CONV_DIM = 256 as its width).
_KERNEL_MLP_HIDDEN = 256


def _normal_init(layer: nn.Linear | nn.Conv2d, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _msra_init(layer: nn.Conv2d | nn.ConvTranspose2d) -> None:
    # detectron2's c2_msra_fill: He normal with fan_out, ReLU gain, bias 0 (SemSeg's mask tower init).
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------------------------------------- DML
class EmbeddingHead(nn.Module):
    """The class-semantics embedding ("DML") head on the 1024-d box feature ``f``.

    ``encoder`` Linear(in_dim -> emb_dim) and ``decoder`` Linear(emb_dim -> in_dim) with no activation
    between; ``e = normalize(encoder(f))`` is the embedding, ``r = decoder(encoder(f))`` (of the
    *un-normalised* encoder output) feeds the softmax classifier. ``prototypes`` (K x emb_dim, N(0,1))
    are normalised whenever used; cosine distance d(a, b) = 1 - <a, b> in [0, 2].
    """

    def __init__(self, num_known: int, in_dim: int = 1024, emb_dim: int = 256) -> None:
        super().__init__()
        if num_known < 1:
            raise ValueError(f"num_known must be positive, got {num_known}")
        self.num_known = num_known
        self.encoder = nn.Linear(in_dim, emb_dim)
        self.decoder = nn.Linear(emb_dim, in_dim)
        _normal_init(self.encoder, 0.01)
        _normal_init(self.decoder, 0.01)
        self.prototypes = nn.Parameter(torch.randn(num_known, emb_dim))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(f)
        return F.normalize(z, dim=1), self.decoder(z)

    def normalized_prototypes(self) -> torch.Tensor:
        return F.normalize(self.prototypes, dim=1)

    def distances(self, e: torch.Tensor) -> torch.Tensor:
        """R x K cosine distances of unit embeddings ``e`` to the normalised prototypes."""
        return 1.0 - e @ self.normalized_prototypes().t()

    def nearest(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dmin R, cls R): distance to and index of the nearest prototype; dmin > threshold => unknown."""
        dmin, cls = self.distances(e).min(dim=1)
        return dmin, cls


def dml_loss(e: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, num_rois: int | torch.Tensor,
             alpha: float = 0.05, beta: float = 0.95) -> torch.Tensor:
    """SemSeg's double-margin prototype loss (spec 1.4), *without* the loss weight (2.0 / 3.0, caller's).

    ``e`` R x D unit embeddings; ``prototypes`` K x D (normalised here); ``labels`` R int64: the known
    index for RoIs that are fg for a known class with IoU(proposal, GT) > 0.5, -1 for every other RoI
    (excluded: background and unknown objects are unlabeled). ``num_rois``: the normaliser, the number
    of *all* sampled RoIs (512 x N), not the number of labelled ones.

        L = [ sum_i max(d(e_i, P_yi) - alpha, 0)            # intra: pull to own prototype
            + sum_i max(beta - min_{c != yi} d(e_i, P_c), 0) # inter: push from nearest other prototype
            + sum_c max(alpha + beta - min_{c' != c} d(P_c, P_c'), 0) ] / num_rois  # prototype separation

    With K = 1 there is no "other" class, so the inter and separation terms are 0 (only intra remains).
    The separation term does not depend on the RoIs and is added even when no RoI is labelled.
    """
    protos = F.normalize(prototypes, dim=1)
    num_known = protos.shape[0]
    sel = labels >= 0
    y = labels[sel]
    d = 1.0 - e[sel] @ protos.t()  # n x K
    intra = d.gather(1, y[:, None]).squeeze(1)
    loss = (intra - alpha).clamp(min=0).sum()
    if num_known > 1:
        own = F.one_hot(y, num_known).bool()
        inter = d.masked_fill(own, float("inf")).min(dim=1).values
        loss = loss + (beta - inter).clamp(min=0).sum()
        dp = 1.0 - protos @ protos.t()
        eye = torch.eye(num_known, dtype=torch.bool, device=dp.device)
        sep = dp.masked_fill(eye, float("inf")).min(dim=1).values
        loss = loss + (alpha + beta - sep).clamp(min=0).sum()
    if isinstance(num_rois, torch.Tensor):
        return loss / num_rois.clamp(min=1)
    return loss / max(int(num_rois), 1)


class KnownClassifier(nn.Module):
    """Linear(in_dim -> K + 1) on the decoder reconstruction ``r``; background = index K.

    The loss is plain ``F.cross_entropy`` by the caller (spec 1.5); at test the background column is
    dropped after the softmax and the remaining K probabilities label DML-known boxes.
    """

    def __init__(self, num_known: int, in_dim: int = 1024) -> None:
        super().__init__()
        self.num_known = num_known
        self.cls_score = nn.Linear(in_dim, num_known + 1)
        _normal_init(self.cls_score, 0.01)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.cls_score(r)


# ---------------------------------------------------------------------------------------------- mask
class ModulatedMaskHead(nn.Module):
    """Class-semantics-modulated mask head (spec 1.6).

    ``tower``: num_conv x [Conv3x3 + ReLU] -> ConvTranspose 2x2/2 + ReLU -> Conv3x3 to ``mask_emb_dim``
    (no activation) gives per-pixel embeddings F (R x mask_emb_dim x 28 x 28). ``kernel_mlp`` maps the
    instance's own embedding e (not detached, never the GT prototype) to m (R x mask_emb_dim), and the
    mask logit is a bias-free dynamic 1x1 conv: logit[h, w] = sum_c m[c] F[c, h, w].

    ``class_agnostic=True`` is the CA-Mask ablation: an ordinary Conv1x1(mask_emb_dim -> 1) replaces the
    dynamic conv and e is ignored.
    """

    def __init__(self, in_channels: int = 256, conv_dim: int = 256, num_conv: int = 4, mask_emb_dim: int = 128,
                 emb_dim: int = 256, class_agnostic: bool = False) -> None:
        super().__init__()
        self.class_agnostic = class_agnostic
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(num_conv):
            layers += [nn.Conv2d(ch, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            ch = conv_dim
        layers += [nn.ConvTranspose2d(ch, conv_dim, 2, stride=2), nn.ReLU(inplace=True),
                   nn.Conv2d(conv_dim, mask_emb_dim, 3, padding=1)]
        self.tower = nn.Sequential(*layers)
        for layer in self.tower:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                _msra_init(layer)
        self.kernel_mlp: nn.Sequential | None = None
        self.predictor: nn.Conv2d | None = None
        if class_agnostic:
            self.predictor = nn.Conv2d(mask_emb_dim, 1, 1)
            # detectron2's mask predictor init (N(0, 0.001), bias 0) for the plain 1-channel output layer.
            _normal_init(self.predictor, 0.001)
        else:
            self.kernel_mlp = nn.Sequential(nn.Linear(emb_dim, _KERNEL_MLP_HIDDEN), nn.ReLU(inplace=True),
                                            nn.Linear(_KERNEL_MLP_HIDDEN, mask_emb_dim))
            for layer in self.kernel_mlp:
                if isinstance(layer, nn.Linear):
                    _normal_init(layer, 0.01)

    def forward(self, x: torch.Tensor, e: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` R x in_channels x 14 x 14 RoI features, ``e`` R x emb_dim -> R x 1 x 28 x 28 logits."""
        feats = self.tower(x)
        if self.predictor is not None:
            return self.predictor(feats)
        assert self.kernel_mlp is not None
        if e is None:
            raise ValueError("the modulated mask head needs the instance embeddings e")
        if e.shape[0] != feats.shape[0]:
            raise ValueError(f"{feats.shape[0]} RoIs but {e.shape[0]} embeddings")
        kernels = self.kernel_mlp(e)  # R x mask_emb_dim: one 1x1 conv (no bias) per instance
        return torch.einsum("rc,rchw->rhw", kernels, feats).unsqueeze(1)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE-with-logits over fg RoIs (``logits`` R x 1 x M x M, ``targets`` R x M x M)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keep the graph connected with no fg RoI
    return F.binary_cross_entropy_with_logits(logits[:, 0], targets.to(logits.dtype))


# ---------------------------------------------------------------------------------------------- inference
@dataclass
class PostprocessConfig:
    """SemSeg's test-time thresholds (YAML values; spec 1.7)."""

    unknown_threshold: float = 0.085  # DML.UNK_THR: dmin > this => unknown
    objectness_threshold: float = 0.05  # OBJ_SCORE_THRESH_TEST
    known_score_threshold: float = 0.05
    known_nms: float = 0.5
    known_topk: int = 50
    unknown_score_threshold: float = 0.05
    unknown_nms: float = 0.5
    unknown_topk: int = 50
    max_proposals: int = 1000  # TEST.DETECTIONS_PER_IMAGE after the objectness gate


def open_set_postprocess(boxes: torch.Tensor, objectness: torch.Tensor, dmin: torch.Tensor,
                         known_probs: torch.Tensor, cfg: PostprocessConfig | None = None) -> dict[str, torch.Tensor]:
    """Two-branch known / unknown detection of one image (spec 1.7).

    Inputs per proposal row: ``boxes`` R x 4 (refined, clipped), ``objectness`` R (sqrt(sigmoid(iou) *
    centerness)), ``dmin`` R (nearest-prototype cosine distance), ``known_probs`` R x K (softmax over
    K + 1 with the background column dropped).

    Returns ``boxes`` D x 4, ``scores`` D, ``labels`` D int64 (``UNKNOWN_LABEL`` = -1 for unknown,
    else the known index) and ``index`` D int64 (the input row, e.g. to take its embedding for the mask
    head); unknown detections first, then known (SemSeg concatenates unknown, known), each sorted by score.
    """
    cfg = cfg or PostprocessConfig()
    device = boxes.device
    # Objectness gate, then "NMS at 1.0" (i.e. none) + top max_proposals by objectness (os_fast_rcnn.py).
    rows = torch.nonzero(objectness > cfg.objectness_threshold).flatten()
    order = objectness[rows].argsort(descending=True)[: cfg.max_proposals]
    rows = rows[order]
    is_unknown = dmin[rows] > cfg.unknown_threshold

    # Unknown branch: score = objectness, class-agnostic NMS (deep_metric_learning.py).
    unk = rows[is_unknown]
    unk_scores = objectness[unk]
    unk_ok = unk_scores > cfg.unknown_score_threshold
    unk, unk_scores = unk[unk_ok], unk_scores[unk_ok]
    keep = nms(boxes[unk].float(), unk_scores.float(), cfg.unknown_nms)[: cfg.unknown_topk]
    unk, unk_scores = unk[keep], unk_scores[keep]

    # Known branch: every (box, class) pair with p > thresh, per-class NMS; score = p, NOT times
    # objectness (softmax_classifier.py). One box may appear under several classes.
    kn = rows[~is_unknown]
    probs = known_probs[kn]
    pair_row, pair_cls = torch.nonzero(probs > cfg.known_score_threshold, as_tuple=True)
    kn_rows = kn[pair_row]
    kn_scores = probs[pair_row, pair_cls]
    keep = batched_nms(boxes[kn_rows].float(), kn_scores.float(), pair_cls, cfg.known_nms)[: cfg.known_topk]
    kn_rows, kn_scores, kn_cls = kn_rows[keep], kn_scores[keep], pair_cls[keep]

    index = torch.cat([unk, kn_rows]).to(torch.int64)
    labels = torch.cat([torch.full_like(unk, UNKNOWN_LABEL), kn_cls]).to(device=device, dtype=torch.int64)
    scores = torch.cat([unk_scores.to(boxes.dtype), kn_scores.to(boxes.dtype)])
    return {"boxes": boxes[index], "scores": scores, "labels": labels, "index": index}
