"""Helpers shared by tests: run the real CLI in-process or as a subprocess, with tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
