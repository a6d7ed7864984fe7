"""Helpers shared by tests: run the real CLI in-process or as a subprocess, with tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

REPO = Path(__file__).resolve().parents[1]

# Tiny, fast settings for the weak-UNet recipes on the bundled sample.
TINY_PET = [
    "--data.init_args.image_size", "64",
    "--data.init_args.batch_size", "4",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


def run_script(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root; fail the test with the output on error."""
    full_env = os.environ.copy() | {"PYTHONPATH": str(REPO)} | (env or {})
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def copy_pet_subset(pet_root: Path, dest: Path, n: int | None = None) -> Path:
    """The first ``n`` images (by name) of an Oxford-Pet layout with their trimaps, copied to ``dest``."""
    import shutil

    stems = sorted(p.stem for p in (pet_root / "images").glob("*.jpg"))[:n]
    (dest / "images").mkdir(parents=True)
    (dest / "annotations" / "trimaps").mkdir(parents=True)
    for s in stems:
        shutil.copy(pet_root / "images" / f"{s}.jpg", dest / "images")
        shutil.copy(pet_root / "annotations" / "trimaps" / f"{s}.png", dest / "annotations" / "trimaps")
    return dest


def save_image(path: Path, array) -> Path:
    """Write ``array`` (H x W or H x W x 3 uint8) with PIL, creating the folder (``tests.fakes.save_image``)."""
    from tests.fakes import save_image as save

    return save(path, array)


def free_port() -> int:
    """A free TCP port on loopback, for a test's own gloo process group."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a loopback gloo process group (call at the start of an ``mp.spawn`` worker)."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger whose run only records what is logged (no W&B process)."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.logged: list[dict[str, Any]] = []

    @property
    def experiment(self):  # noqa: D102
        outer = self

        class Run:
            def log(self, data: dict[str, Any]) -> None:
                outer.logged.append(data)

        return Run()


class WriteOnRankZero(Callback):
    """Writes the module's evaluation outputs from global rank 0 at the end of a (DDP) test run."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_test_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.write_evaluation(self.out_dir)
