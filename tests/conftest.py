"""Shared fixtures: nothing downloads, nothing needs a W&B account, plots stay off-screen."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PET_ROOT = REPO / "sample_data" / "oxford_pet_subset"


@pytest.fixture(autouse=True)
def _no_downloads(tmp_path_factory, monkeypatch):
    import torch

    torch.hub.set_dir(str(tmp_path_factory.mktemp("hub")))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))


@pytest.fixture
def pet_root() -> Path:
    return PET_ROOT
