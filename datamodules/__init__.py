"""Every method's LightningDataModule (importing this registers them with the CLI)."""

from datamodules.base import LitSegDataModule
from datamodules.interactive import InteractiveDataModule
from datamodules.rclicks import ClickMapDataModule
from datamodules.saom import SAOMDataModule
from datamodules.semseg import SemSegDataModule
from datamodules.weak_unet import OxfordPetDataModule

__all__ = [
    "ClickMapDataModule", "InteractiveDataModule", "LitSegDataModule", "OxfordPetDataModule", "SAOMDataModule",
    "SemSegDataModule",
]
