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


@pytest.fixture(autouse=True)
def _restore_torch_global_state():
    """Tests run in one process: thread count and deterministic-kernel mode (float sums depend on both)
    must not leak from one test into the next, e.g. from a benchmark smoke test that pins 1 thread."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()  # an active run would be picked up by the next test's WandbLogger
