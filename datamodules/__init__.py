"""Every method's LightningDataModule (importing this registers them with the CLI)."""

from datamodules.base import LitSegDataModule
from datamodules.click_maps import ClickMapDataModule
from datamodules.interactive import InteractiveDataModule
from datamodules.oxford_pet import OxfordPetDataModule

__all__ = ["ClickMapDataModule", "InteractiveDataModule", "LitSegDataModule", "OxfordPetDataModule"]
