"""Save the resolved config into the run's own directory and push it to W&B.

Lightning's stock ``SaveConfigCallback`` writes to ``trainer.log_dir``, which for a
``WandbLogger`` is the shared ``save_dir``: every run overwrites the same file. Here the
config goes beside the run's checkpoints, and onto the W&B run, with secrets removed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from litseg.io import atomic_path

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)", re.IGNORECASE)


def redact(obj: Any) -> Any:
    """Drop every mapping entry whose key looks like a credential."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items() if not (isinstance(k, str) and SECRET_KEY.search(k))}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def write_config(parser: Any, config: Any, path: Path) -> dict[str, Any]:
    """Write the resolved ``config`` of ``parser`` to ``path`` atomically, credentials removed; returns it."""
    resolved = redact(yaml.safe_load(parser.dump(config, skip_none=False)))
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return resolved


def run_directory(trainer: Trainer) -> Path:
    """The directory that holds this run's checkpoints, config and outputs."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        # Lightning puts W&B runs' checkpoints under <save_dir>/<project>/<run id>/checkpoints.
        return Path(logger.save_dir or ".") / str(logger.name) / str(logger.version)
    return Path(trainer.log_dir or trainer.default_root_dir)


class RunConfigSaver(SaveConfigCallback):
    """Writes ``config.yaml`` into :func:`run_directory` and into the W&B run's config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False  # we choose the directory ourselves
        super().__init__(*args, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts from rank 0, so every rank must ask for it here; asking on
        # rank 0 alone (inside save_config) would deadlock DDP.
        self._run_dir = run_directory(trainer)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = write_config(self.parser, self.config, self._run_dir / self.config_filename)
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.experiment.config.update({"cli": config}, allow_val_change=True)
