"""Every method's LightningModule (importing this registers them with the CLI)."""

from lit_modules.base import LitSegModule
from lit_modules.converseg import ConverSeg
from lit_modules.interactive import InteractiveBenchmark
from lit_modules.rclicks import ClickabilityModel
from lit_modules.saom import SAOM
from lit_modules.semseg import SemSeg
from lit_modules.weak_unet import WeakLabelUNet

__all__ = ["ClickabilityModel", "ConverSeg", "InteractiveBenchmark", "LitSegModule", "SAOM", "SemSeg", "WeakLabelUNet"]
