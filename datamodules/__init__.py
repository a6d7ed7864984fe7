"""Every method's LightningDataModule (importing this registers them with the CLI)."""

from datamodules.base import LitSegDataModule
from datamodules.oxford_pet import OxfordPetDataModule

__all__ = ["LitSegDataModule", "OxfordPetDataModule"]
