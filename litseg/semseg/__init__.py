"""SemSeg: open-set instance segmentation (class-semantics-modulated Mask R-CNN, ``shared/specs/semseg.md``)."""
