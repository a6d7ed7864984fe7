"""Base LightningModule of the suite: optimiser / schedule options, weight init, results.

Every method's module subclasses :class:`LitSegModule`. The CLI runs in subclass mode over
this base, so ``--model WeakLabelUNet`` (or ``class_path`` in YAML) picks a method and
its typed ``__init__`` arguments become config keys.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger

from litseg.checkpoint import load_weights
from litseg.io import write_png, write_table
from litseg.seeding import item_rng


class LitSegModule(LightningModule):
    """Shared conventions for the methods: optimisation, weights, reproducibility, results.

    A method's ``__init__`` takes its own arguments plus ``**kwargs`` passed on to
    ``super().__init__(**kwargs)`` (the CLI still sees every base argument, typed); it re-declares a
    base argument only to change its default. The base then takes care of

    * the optimiser and schedule: built by :meth:`configure_optimizers` from ``optimizer``,
      ``lr_scheduler`` and the parameter groups of :meth:`param_groups`;
    * ``init_weights``: loaded once the subclass's ``__init__`` has built its networks (no call needed);
    * re-seeding per epoch and the evaluation report (:meth:`write_evaluation`, :meth:`log_report`).

    Methods that are not trained (the interactive benchmark) set ``trainable = False``: they take no
    optimiser arguments and refuse ``configure_optimizers``.

    Args:
        lr: peak learning rate: the ``lr`` of every parameter group (times the group's ``lr_scale``).
            It replaces the optimiser's own ``init_args.lr``.
        weight_decay: weight decay of every group that does not set its own (no-decay groups set 0).
            It replaces the optimiser's own ``init_args.weight_decay``.
        optimizer: the optimiser family and its other settings (betas, eps, momentum), e.g.
            ``{class_path: torch.optim.SGD, init_args: {momentum: 0.9}}``; called with the groups.
        lr_scheduler: optional ``torch.optim.lr_scheduler`` callable, e.g.
            ``{class_path: litseg.schedules.WarmupCosine, init_args: {warmup_fraction: 0.1}}``. When it
            takes ``total_steps`` and the config leaves it null, the module passes the run's length
            in scheduler steps (optimiser updates, or ``max_epochs`` with ``scheduler_interval: epoch``).
        scheduler_interval: step the scheduler after every optimiser update (``step``) or epoch.
        init_weights: optional checkpoint whose weights initialise the module (weights only,
            strict). Resuming full trainer state is ``--ckpt_path`` instead.
    """

    trainable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Load init_weights after the outermost __init__ of the instance's class has built everything.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_litseg_wrapped", False):
            return

        @functools.wraps(init)
        def __init__(self: LitSegModule, *args: Any, **kw: Any) -> None:
            depth = self.__dict__.get("_init_depth", 0)
            self.__dict__["_init_depth"] = depth + 1
            try:
                init(self, *args, **kw)
            finally:
                self.__dict__["_init_depth"] = depth
            if depth == 0:
                self._plain_callable_hparams()
                self.load_init_weights()

        __init__._litseg_wrapped = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(
        self,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.init_weights = init_weights
        # Filled by on_test_epoch_end of subclasses; written by evaluate.py.
        self.evaluation_rows: list[dict[str, Any]] = []

    def _plain_callable_hparams(self) -> None:
        """Saved optimiser / scheduler callables as their config form (``class_path`` / ``init_args``).

        The CLI saves the config's dicts already; a module built in Python would otherwise put classes
        and partials into the checkpoint, which the weights-only loader refuses.
        """
        for key in ("optimizer", "lr_scheduler"):
            if key in self.hparams and not isinstance(self.hparams[key], (dict, type(None))):
                self.hparams[key] = callable_config(self.hparams[key])

    # ------------------------------------------------------------------ weights
    def load_init_weights(self) -> None:
        """Load ``init_weights`` (called by the base after the subclass's ``__init__``)."""
        if self.init_weights:
            load_weights(self, self.init_weights, key="state_dict")

    # ------------------------------------------------------------------ reproducibility
    def on_train_epoch_start(self) -> None:
        """Re-seed the global RNGs from (run seed, epoch, rank) at every epoch.

        Stochastic layers (dropout, EfficientNet drop-connect) draw from the global torch RNG,
        whose state is not in Lightning checkpoints. Seeding per epoch makes an epoch's random
        numbers the same whether the run was resumed from ``last.ckpt`` or not, on every rank.
        Subclasses that override this hook must call ``super().on_train_epoch_start()``.
        """
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        epoch_seed = int(item_rng(seed, "epoch", self.current_epoch, self.global_rank).integers(2**62))
        torch.manual_seed(epoch_seed)
        random.seed(epoch_seed)

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser (default: one group of every trainable parameter).

        Override for no-decay groups (:func:`litseg.schedules.no_decay_param_groups`) or LoRA groups.
        A group may set ``lr_scale`` (its lr is ``lr * lr_scale``) and its own ``weight_decay``.
        """
        return [{"params": self.trainable_parameters()}]

    def scheduler_total_steps(self) -> int:
        """The run's length in scheduler steps: optimiser updates, or epochs (``scheduler_interval: epoch``)."""
        if self.scheduler_interval == "epoch":
            epochs = self.trainer.max_epochs
            if epochs is None or epochs < 1:
                raise ValueError("scheduler_interval 'epoch' needs trainer.max_epochs for the schedule's length")
            return int(epochs)
        return max(1, int(self.trainer.estimated_stepping_batches))

    def configure_optimizers(self) -> Any:
        if not self.trainable:
            raise RuntimeError(f"{type(self).__name__} cannot be trained; run trainer.test / evaluate.py")
        groups = []
        for group in self.param_groups():
            group = dict(group)
            group["lr"] = self.lr * float(group.pop("lr_scale", 1.0))
            group.setdefault("weight_decay", self.weight_decay)
            groups.append(group)
        opt = self.optimizer(groups, lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_scheduler is None:
            return opt
        kwargs = {"total_steps": self.scheduler_total_steps()} if _takes_unset(self.lr_scheduler, "total_steps") else {}
        sched = self.lr_scheduler(opt, **kwargs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval}}

    # ------------------------------------------------------------------ evaluation output
    def write_evaluation(self, output_dir: Path) -> list[dict[str, Any]]:
        """Write the last test run's results under ``output_dir``; returns the table rows.

        The default writes ``results.csv`` / ``results.md`` from ``self.evaluation_rows``;
        methods with richer outputs (per-click CSVs, plots) extend it.
        """
        if not self.evaluation_rows:
            raise RuntimeError(f"{type(self).__name__}: no evaluation results; run the test loop first")
        write_table(self.evaluation_rows, output_dir / "results.csv", output_dir / "results.md")
        self.log_report("test", self.evaluation_rows)
        return self.evaluation_rows

    @staticmethod
    def write_pictures(folder: Path, pictures: list[tuple[str, Any]], tag: str) -> dict[str, Path]:
        """Write ``(name, RGB array)`` pairs as ``folder/<name>.png``; returns ``{"<tag>/<name>": path}``
        for :meth:`log_report`."""
        written = {}
        for name, picture in pictures:
            path = Path(folder) / f"{name}.png"
            write_png(path, picture)
            written[f"{tag}/{name}"] = path
        return written

    def log_report(self, prefix: str, rows: list[dict[str, Any]], images: dict[str, Path] | None = None) -> None:
        """Log a results table (``<prefix>/summary``) and figures (``<prefix>/<name>``) to every W&B logger."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns = list(rows[0])
                payload: dict[str, Any] = {
                    f"{prefix}/summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
                }
                payload |= {f"{prefix}/{name}": wandb.Image(str(path)) for name, path in (images or {}).items()}
                logger.experiment.log(payload)


def _factory_parts(factory: Any) -> tuple[Any, dict[str, Any]]:
    """The class behind ``factory`` (a class, ``functools.partial`` of one, or jsonargparse's partial)
    and the keyword arguments bound to it."""
    if isinstance(factory, functools.partial):
        classes = [a for a in (factory.func, *factory.args) if isinstance(a, type)]
        return (classes[-1] if classes else factory.func), dict(factory.keywords)
    return factory, {}


def callable_config(factory: Any) -> dict[str, Any]:
    """``{class_path, init_args}`` of an optimiser / scheduler callable, as a config would give it."""
    cls, bound = _factory_parts(factory)
    out: dict[str, Any] = {"class_path": f"{cls.__module__}.{cls.__qualname__}"}
    if bound:
        out["init_args"] = bound
    return out


def _takes_unset(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a class, or jsonargparse's partial of one) takes ``name`` and leaves it unset."""
    cls, bound = _factory_parts(factory)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params and bound.get(name) is None
