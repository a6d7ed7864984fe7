"""Callbacks shared by every method."""

from callbacks.checkpoint import RunCheckpoint
from callbacks.run_config import RunConfigSaver, run_directory
from callbacks.wandb_images import SegmentationOverlayLogger

__all__ = ["RunCheckpoint", "RunConfigSaver", "SegmentationOverlayLogger", "run_directory"]
