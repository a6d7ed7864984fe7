"""Interactive segmentation predictors for the click benchmark (RClicks / RITM protocol).

Built in (``build_predictor(name, **predictor_args)``):

* ``sam``: Segment Anything, ``model_type`` vit_b / vit_l / vit_h + ``checkpoint``
  (:class:`~litseg.interactive.predictors.sam.SamClickPredictor`), threshold 0.5;
* ``sam2``: SAM 2 / 2.1, ``config`` + ``checkpoint`` (+ ``hydra_overrides``)
  (:class:`~litseg.interactive.predictors.sam2.Sam2ClickPredictor`), threshold 0.5;
* ``grabcut``: weights-free OpenCV GrabCut on click seeds
  (:class:`~litseg.interactive.predictors.classical.GrabCutPredictor`), threshold 0.5.
* ``sam_hq``: SAM-HQ (``segment-anything-hq``), ``model_type`` vit_b / vit_l / vit_h / vit_tiny + ``checkpoint``
  (``sam_hq_vit_*.pth``), ``hq_token_only`` as the HQ-SAM evaluation
  (:class:`~litseg.interactive.predictors.sam_hq.SamHQClickPredictor`);
* ``mobile_sam``: MobileSAM (TinyViT encoder + SAM's prompt encoder / decoder), ``mobile_sam.pt``
  (:class:`~litseg.interactive.predictors.sam_hq.MobileSamClickPredictor`);
* ``ritm``: RITM HRNet ITER-M rebuilt from the checkpoint's stored config (``coco_lvis_h18_itermask.pth``
  etc.), ``thresh`` 0.49, Zoom-In, flip, NoBRS (:class:`~litseg.interactive.predictors.ritm.RITMClickPredictor`);
* ``simpleclick``: SimpleClick / CFR-ICL plain ViT (``cocolvis_vit_*.pth``), 448 px, Zoom-In
  (:class:`~litseg.interactive.predictors.simpleclick.SimpleClickPredictor`).

RITM and SimpleClick encode image and clicks together: every click runs the whole network.

All take ``device`` where a network is involved; the SAM family encodes each image once.

Benchmarking your own model
---------------------------
Any object with these members works (``litseg.interactive.types.InteractivePredictor``)::

    threshold: float                  # mask = probs > threshold
    set_image(image) -> None          # H x W x 3 uint8 RGB, once per image: encode here
    reset() -> None                   # once per object instance: forget clicks / previous mask
    predict(clicks) -> np.ndarray     # all clicks so far (litseg.interactive.types.Click: y, x,
                                      # is_positive, index), returns H x W float32 in [0, 1]

Subclassing :class:`ClickPredictor` adds input/output checks (implement ``_encode``,
``_reset_prompts``, ``_predict``). Then either register it::

    from litseg.interactive.predictors import register_predictor
    register_predictor("mine", MyPredictor)          # build_predictor("mine", **args)

or name it by import string in a config, with no registration needed::

    predictor: my_pkg.my_module:MyPredictor
    predictor_args: {checkpoint: /path/weights.pt, device: cuda}
"""

from litseg.interactive.predictors.base import (
    ClickPredictor,
    available_predictors,
    build_predictor,
    check_image,
    clicks_to_points,
    drops_previous_mask,
    register_predictor,
)

__all__ = [
    "ClickPredictor",
    "available_predictors",
    "build_predictor",
    "check_image",
    "clicks_to_points",
    "drops_previous_mask",
    "register_predictor",
]
