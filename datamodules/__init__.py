"""Every method's LightningDataModule (importing this registers them with the CLI)."""

from datamodules.base import LitSegDataModule
from datamodules.converseg import ConverSegDataModule
from datamodules.interactive import InteractiveDataModule
from datamodules.rclicks import ClickMapDataModule
from datamodules.saom import SAOMDataModule
from datamodules.semseg import SemSegDataModule
from datamodules.weak_unet import OxfordPetDataModule

__all__ = [
    "ClickMapDataModule", "ConverSegDataModule", "InteractiveDataModule", "LitSegDataModule", "OxfordPetDataModule",
    "SAOMDataModule", "SemSegDataModule",
]
