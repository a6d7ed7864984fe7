"""Base LightningDataModule of the suite: data root, loader settings, seeding, DDP-exact evaluation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from litseg.io import CheckReport, DataError, FileCheck, load_check_cache, run_checks, save_check_cache

CHECK_CACHE_NAME = "data_check_cache.json"
# The splits each Lightning stage reads (None: every split).
STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",),
    None: ("train", "val", "test"),
}


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``W`` takes samples ``r, r + W, r + 2W, ...``: no padding, no repeats.

    Lightning's default ``DistributedSampler`` pads the dataset with repeated samples so that
    every rank has equal batches, which counts those samples twice in a metric. Evaluation
    metrics here are torchmetrics states synced at epoch end, so unequal per-rank lengths are
    fine. Being a ``DistributedSampler`` subclass, Lightning keeps it instead of replacing it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(DistributedSampler):
    """Training order shuffled from ``(seed, epoch)``; yields ``(index, epoch)`` keys.

    The dataset receives the epoch with each index, so per-sample augmentation can be seeded
    from ``(seed, epoch, index)``: the same with any worker count, rank count, or after a
    resume from a checkpoint (Lightning calls ``set_epoch`` on it every epoch). Under DDP
    each rank takes its shard, like Lightning's own distributed sampler.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((index, self.epoch) for index in super().__iter__())


class LitSegDataModule(LightningDataModule):
    """Shared conventions for the five methods' data.

    Args:
        root: dataset root folder (a config value, e.g. ``--data.root PATH``).
        batch_size: samples per batch for every split.
        num_workers: DataLoader worker processes.
        seed: seed of every data-side random choice (splits, augmentation), so the same
            config and seed give the same data on any machine.
    """

    def __init__(self, root: str, batch_size: int = 8, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._checked: dict[str, dict] = {}  # entries of the checks passed in this process

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise DataError(self.root, "data root not found (set --data.root)")

    def check_cache_path(self) -> Path | None:
        """``data_check_cache.json`` in the run directory of the attached trainer (beside its
        checkpoints and config.yaml). None without a trainer, or for a trainer that neither logs
        nor checkpoints: it has no run folder, and the cache must not land in the working directory."""
        trainer = self.trainer
        if not isinstance(trainer, Trainer) or (not trainer.loggers and trainer.checkpoint_callback is None):
            return None
        from callbacks.run_config import run_directory  # lazy: callbacks import W&B helpers

        return run_directory(self.trainer) / CHECK_CACHE_NAME

    def check_files(self, checks: Sequence[FileCheck], what: str) -> CheckReport:
        """Run the up-front data checks of ``what`` (e.g. "Oxford-IIIT Pet train + val").

        Checks whose files are unchanged since they passed, in this process or in this run
        (``data_check_cache.json`` in the run directory, written by global rank 0), are not
        run again. Returns the report; the caller raises its problems (with its own
        cross-file ones) through :func:`litseg.io.raise_problems`.
        """
        cache_path = self.check_cache_path()
        stored = load_check_cache(cache_path) if cache_path is not None else {}
        report = run_checks(checks, stored | self._checked)
        self._checked |= report.entries
        if cache_path is not None and report.read and self.world()[1] == 0:
            merged = {k: v for k, v in stored.items() if k not in report.failed} | report.entries
            try:
                save_check_cache(cache_path, merged)
            except OSError as err:  # only a speed-up: never stop a run for it
                warnings.warn(f"{cache_path}: cannot write the data-check cache ({err})", stacklevel=2)
        n_files = len({f for c in checks for f in c.files})
        rank_zero_info(f"Data check of {what}: {n_files} files, {report.read} checks read, {report.cached} unchanged "
                       f"since checked, {len(report.problems)} problem(s), {report.seconds:.2f} s")
        return report

    def world(self) -> tuple[int, int]:
        """(number of processes, this process's global rank) of the attached trainer."""
        if self.trainer is not None:
            return self.trainer.world_size, self.trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def make_loader(self, dataset: Dataset, shuffle: bool, collate_fn=None, drop_last: bool = False,
                    batch_size: int | None = None, epoch_keys: bool = False) -> DataLoader:
        """A DataLoader with the suite's sampling rules.

        Evaluation loaders (``shuffle=False``) use :class:`UnpaddedDistributedSampler` under DDP so
        each sample counts once. Training loaders with ``epoch_keys=True`` use
        :class:`EpochShuffleSampler` (the dataset must accept ``(index, epoch)`` keys); other
        training loaders shuffle by ``(seed, epoch)`` through a ``DistributedSampler`` (also with one process).
        """
        sampler = None
        world, rank = self.world()
        if not shuffle and world > 1:
            sampler = UnpaddedDistributedSampler(dataset, world, rank)
        elif shuffle and epoch_keys:
            sampler, shuffle = EpochShuffleSampler(dataset, self.seed, world, rank), False
        elif shuffle:
            # The order comes from (seed, epoch) (Lightning calls set_epoch), not from a generator's
            # running state: a run resumed at epoch k reads epoch k's order, as the uninterrupted run did.
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                         drop_last=drop_last)
            shuffle = False
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_fn,
            drop_last=drop_last,
            # Always a private generator: without one, each new iterator draws its base seed from the
            # global torch RNG, shifting dropout / drop-connect randomness (breaks exact resume).
            generator=torch.Generator().manual_seed(self.seed),
        )


