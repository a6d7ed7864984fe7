"""Weak labels (tags, points, scribbles, boxes) for the weakly-supervised segmentation study.

* :mod:`litseg.weak_labels.generate`: simulate the annotations from Oxford-IIIT Pet trimaps
  (``python -m litseg.weak_labels --root DIR --output FILE.json``).
* :mod:`litseg.weak_labels.format`: the versioned JSON file, its loader and checks.
* :mod:`litseg.weak_labels.render`: training targets drawn after augmentation.
"""

from litseg.weak_labels.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ImageWeakLabels,
    WeakObject,
    check_size,
    load_weak_labels,
)
from litseg.weak_labels.generate import GeneratorConfig, generate_weak_labels, write_weak_labels
from litseg.weak_labels.render import (
    SparseKeypoints,
    flatten_keypoints,
    polyline_pixels,
    render_box_target,
    render_sparse_target,
    unflatten_keypoints,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GeneratorConfig",
    "ImageWeakLabels",
    "SparseKeypoints",
    "WeakObject",
    "check_size",
    "flatten_keypoints",
    "generate_weak_labels",
    "load_weak_labels",
    "polyline_pixels",
    "render_box_target",
    "render_sparse_target",
    "unflatten_keypoints",
    "write_weak_labels",
]
