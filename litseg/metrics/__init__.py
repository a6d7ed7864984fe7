"""Mask metrics shared by the methods (one definition each)."""

from litseg.metrics.masks import GIoUCIoU, PooledClassIoU, intersection_union, mask_iou, np_mask_iou, pairwise_mask_iou

__all__ = ["GIoUCIoU", "PooledClassIoU", "intersection_union", "mask_iou", "np_mask_iou", "pairwise_mask_iou"]
