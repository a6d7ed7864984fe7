"""Callbacks shared by every method."""

from callbacks.run_config import RunConfigSaver, run_directory
from callbacks.wandb_images import SegmentationOverlayLogger

__all__ = ["RunConfigSaver", "SegmentationOverlayLogger", "run_directory"]
