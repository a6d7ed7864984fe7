"""The suite's LightningCLI: subclass mode over every method's module and datamodule.

Beyond Lightning's own CLI it

* checks that a ``--ckpt_path`` checkpoint was trained with the configured model (Lightning would
  silently replace the configured model's arguments with the checkpoint's),
* resumes a run in the run directory its checkpoint lives in, so best-model tracking, ``metrics.csv``
  and ``config.yaml`` continue where they stopped instead of starting a new ``version_N``,
* removes credentials from a W&B logger's ``config`` before they reach the W&B run, and
* turns config and data errors into one sentence naming the file and key (:func:`main`); the full
  traceback only with ``--debug``.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.run_config import SECRET_KEY, RunConfigSaver, redact
from litseg.checkpoint import load_checkpoint
from litseg.io import ConfigError, DataError
from litseg.wandb_guard import guard_wandb_loggers

# Init arguments that may legitimately differ between a checkpoint and the config it resumes under:
# weights loaded at construction are overwritten by the checkpoint's state anyway.
RESUME_EXEMPT_KEYS = frozenset({"init_weights"})


def _register_methods() -> tuple[type, type]:
    # Importing the packages registers every LightningModule / DataModule subclass,
    # so configs can name them by class name alone.
    import datamodules
    import lit_modules

    return lit_modules.LitSegModule, datamodules.LitSegDataModule


class LitSegCLI(LightningCLI):
    """``fit / validate / test / predict`` over the suite's methods."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        model_base, data_base = _register_methods()
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # No top-level optimizer: / lr_scheduler: keys: they would silently replace a module's own optimiser.
        kwargs.setdefault("auto_configure_optimizers", False)
        self.checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, loaded and checked
        self._argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, Mapping) else []
        super().__init__(
            model_base,
            data_base,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs=kwargs.pop("parser_kwargs", {"parser_mode": "omegaconf"}),
            seed_everything_default=0,
            args=args,
            run=run,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> Any:
        parser = super().init_parser(**kwargs)
        # Raise instead of printing ~100 lines of usage: main() turns the error into one sentence.
        parser.exit_on_error = False
        return parser

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--torch_threads", type=int | None, default=None,
            help="torch intra-op threads (torch.set_num_threads). Float sums depend on it, so the deterministic "
                 "preset pins it: the same config, seed and thread count give the same numbers.")
        parser.add_argument(
            "--run_name", type=str | None, default=None,
            help="names the run: loggers whose name is null take it, and a null trainer.default_root_dir "
                 "becomes <first logger's save_dir, else runs>/<run_name>. Recipes that include a shared "
                 "trainer file set it, so one trainer file serves every recipe of a method.")

    # ------------------------------------------------------------------ config sections
    def _section(self) -> Namespace:
        """The config of the subcommand being run (or the whole config with ``run=False``)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def config_sources(self) -> list[str]:
        """The ``--config`` files of this invocation, in order (later ones win)."""
        return _config_files(self._argv) or ["<command line>"]

    # ------------------------------------------------------------------ checkpoints
    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` against the configured model instead of adopting its arguments.

        Lightning's version loads the checkpoint's hyper-parameters over the config, so a points
        recipe given a boxes checkpoint trains boxes and exits 0. Here the config stays the source of
        truth: the file is loaded by the one safe loader (a non-checkpoint is a ``DataError`` naming
        it) and any difference in the model's class or init arguments stops the run.
        """
        ckpt_path = self._section().get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        self.checkpoint = ckpt = load_checkpoint(ckpt_path)
        if "state_dict" not in ckpt:
            raise DataError(ckpt_path, "not a Lightning checkpoint (no 'state_dict'); "
                            "use init_weights: for plain weight files")
        check_checkpoint_matches_config(ckpt_path, ckpt, self._section().get("model"), self.config_sources())

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        threads = self._section().get("torch_threads")
        if threads is not None:
            if threads < 1:
                raise ConfigError("torch_threads", f"must be a positive thread count, got {threads}",
                                  locate_key(self._argv, "torch_threads"))
            torch.set_num_threads(threads)
        apply_run_name(self._section().get("trainer"), self._section().get("run_name"))
        _redact_logger_configs(self._section().get("trainer"))
        # W&B unreachable (no network, no key): go offline with a warning instead of failing or hanging.
        guard_wandb_loggers(self._section().get("trainer"))
        # W&B records the command line in its run metadata: a key passed there must not reach it either.
        sys.argv[1:] = redact_argv(sys.argv[1:])

    def before_fit(self) -> None:
        ckpt_path = self._section().get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            resume_in_run_directory(self.trainer, ckpt_path, self.checkpoint)


def _logger_configs(trainer_cfg: Any) -> list[Any]:
    loggers = trainer_cfg.get("logger") if trainer_cfg is not None else None
    if loggers is None or isinstance(loggers, bool):
        return []
    return [lg for lg in (loggers if isinstance(loggers, list) else [loggers]) if lg is not None and "init_args" in lg]


def apply_run_name(trainer_cfg: Any, run_name: str | None) -> None:
    """Fill what a shared trainer file leaves open with ``run_name``: null logger names, a null
    ``default_root_dir`` (where SLURM's ``hpc_ckpt`` lands). Values set anywhere else win."""
    if not run_name or trainer_cfg is None:
        return
    loggers = _logger_configs(trainer_cfg)
    for logger in loggers:
        if "name" in logger.init_args and logger.init_args.get("name") is None:
            logger.init_args["name"] = run_name
    if trainer_cfg.get("default_root_dir") is None:
        save_dirs = [lg.init_args.get("save_dir") for lg in loggers if lg.init_args.get("save_dir")]
        trainer_cfg["default_root_dir"] = str(Path(save_dirs[0] if save_dirs else "runs") / run_name)


# ---------------------------------------------------------------------------------- checkpoints
def _class_name(path: str | None) -> str:
    return (path or "").rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """Config values as plain Python (tuples as lists, Namespaces as dicts) for comparison."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _evaluation_args(class_path: str | None) -> tuple[str, ...]:
    """A module's ``evaluation_args``: init arguments that change what is evaluated, not the weights
    (e.g. SAOM's ``everything_mode``), so a checkpoint may be evaluated with other values."""
    if not class_path or "." not in class_path:
        return ()
    module_name, _, name = class_path.rpartition(".")
    try:
        return tuple(getattr(getattr(importlib.import_module(module_name), name), "evaluation_args", ()))
    except (ImportError, AttributeError):
        return ()


def check_checkpoint_matches_config(ckpt_path: str | os.PathLike[str], ckpt: Mapping[str, Any],
                                    model_cfg: Any, config_files: Sequence[str]) -> None:
    """Raise ``DataError`` when the checkpoint's model class or init arguments differ from the config."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    ckpt_class = hparams.pop("_class_path", None)
    model_cfg = _plain(model_cfg) or {}
    cfg_class, cfg_args = model_cfg.get("class_path"), model_cfg.get("init_args") or {}
    configs = ", ".join(config_files)
    if ckpt_class and cfg_class and _class_name(ckpt_class) != _class_name(cfg_class):
        raise DataError(ckpt_path, f"checkpoint holds a {_class_name(ckpt_class)} but the config ({configs}) "
                        f"builds a {_class_name(cfg_class)}: model.class_path differs")
    if not hparams:
        return
    differing = []
    exempt = set(RESUME_EXEMPT_KEYS) | set(_evaluation_args(cfg_class or ckpt_class))
    for key in sorted(set(hparams) | set(cfg_args)):
        if key in exempt or key not in hparams or key not in cfg_args:
            # A key only on one side is a default added or removed by a code change, not a recipe mismatch.
            continue
        if _plain(hparams[key]) != _plain(cfg_args[key]):
            differing.append(f"model.init_args.{key} is {_plain(hparams[key])!r} in the checkpoint "
                             f"but {_plain(cfg_args[key])!r} in the config")
    if differing:
        raise DataError(ckpt_path, f"checkpoint does not match the config ({configs}): " + "; ".join(differing))


def resume_in_run_directory(trainer: Trainer, ckpt_path: str | os.PathLike[str],
                            checkpoint: Mapping[str, Any] | None = None) -> Path | None:
    """Point the trainer's loggers at the run directory that holds ``ckpt_path``.

    A checkpoint written by this suite lives in ``<run dir>/checkpoints/``. Resuming there (same
    logger version / W&B id) keeps Lightning's ``ModelCheckpoint`` state (best score and path, which
    it drops when its directory changes), the run's ``config.yaml`` and its ``metrics.csv``, whose
    rows after the checkpoint are cut so the resumed run appends exactly what was lost. Returns the
    run directory, or ``None`` (with a warning) when the checkpoint is not inside this logger's tree.
    """
    ckpt = Path(ckpt_path).resolve()
    run_dir = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not trainer.loggers:
        if trainer.loggers:
            rank_zero_warn(f"{ckpt_path}: not inside a run's checkpoints/ folder; resuming into a new run directory "
                           "(best-checkpoint tracking starts again)")
        return None
    logger = trainer.loggers[0]
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        if Path(logger.root_dir).resolve() != run_dir.parent:
            rank_zero_warn(f"{ckpt_path}: belongs to {run_dir}, not to this logger's {logger.root_dir}; resuming "
                           "into a new run directory (best-checkpoint tracking starts again)")
            return None
        logger._version = run_dir.name  # the version is a folder name; a string is used as-is
        if isinstance(logger, CSVLogger) and trainer.is_global_zero:
            _keep_metrics_up_to(logger, checkpoint if checkpoint is not None else load_checkpoint(ckpt_path))
    elif isinstance(logger, WandbLogger):
        if (Path(logger.save_dir or ".") / str(logger.name)).resolve() != run_dir.parent:
            rank_zero_warn(f"{ckpt_path}: belongs to {run_dir}, not to this W&B logger's project folder; resuming "
                           "into a new run (best-checkpoint tracking starts again)")
            return None
        # Continue the same W&B run (its id is the run folder's name).
        logger._id = run_dir.name
        logger._wandb_init.update(id=run_dir.name, resume="allow")
    else:
        return None
    return run_dir


def _keep_metrics_up_to(logger: CSVLogger, ckpt: Mapping[str, Any]) -> None:
    """Keep the run's metrics.csv rows up to the checkpoint (Lightning's writer would delete the file)."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    epoch, step = int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1))

    def before_checkpoint(row: dict[str, str]) -> bool:
        if row.get("epoch"):
            return int(float(row["epoch"])) <= epoch
        # Rows without an epoch come from callbacks logging directly (LearningRateMonitor at the start of
        # a batch): one at step == global_step belongs to the first batch after the checkpoint.
        return bool(row.get("step")) and int(float(row["step"])) < step

    kept = [row for row in rows if before_checkpoint(row)]
    writer = logger.experiment  # creating the writer removes the old file ...
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=header)
    out.writeheader()
    out.writerows(kept)
    path.write_text(buffer.getvalue())  # ... so write back the rows that precede the checkpoint
    writer.metrics_keys = header


def _redact_logger_configs(trainer_cfg: Any) -> None:
    """Strip credential-like keys from every logger's ``init_args.config`` (it goes to ``wandb.init``)."""
    if trainer_cfg is None:
        return
    loggers = trainer_cfg.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
            init_args = logger["init_args"]
            if init_args.get("config") is not None:
                init_args["config"] = redact(_plain(init_args["config"]))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line without credentials: secret-named flags are dropped with their value, and
    secret-named keys inside YAML / JSON mapping values are removed (the rest of the value is kept)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and SECRET_KEY.search(flag):
            skip = "=" not in arg
            continue
        value = arg.split("=", 1)[1] if flag.startswith("--") and "=" in arg else arg
        if SECRET_KEY.search(value) and value.lstrip().startswith("{"):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            if isinstance(parsed, dict):
                cleaned = json.dumps(redact(parsed))
                arg = f"{flag}={cleaned}" if value is not arg else cleaned
        out.append(arg)
    return out


# ---------------------------------------------------------------------------------- error reporting
def _arguments(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """``("config", path)`` for each ``--config`` / ``-c`` file and ``("flag", --name)`` for every other flag."""
    it = iter(argv)
    for arg in it:
        if arg in ("--config", "-c"):
            yield "config", next(it, "")
        elif arg.startswith("--config="):
            yield "config", arg.split("=", 1)[1]
        elif arg.startswith("--"):
            yield "flag", arg.split("=", 1)[0]


def _config_files(argv: Sequence[str]) -> list[str]:
    return [value for kind, value in _arguments(argv) if kind == "config" and value]


def _lookup(tree: Any, dotted: str) -> tuple[bool, Any]:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def recipe_includes(path: str | os.PathLike[str]) -> dict[str, Path]:
    """A recipe's included sections (``data: _shared/data.yaml``): section -> file, resolved as
    jsonargparse does, relative to the recipe's folder."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    return {section: Path(path).parent / value for section, value in tree.items()
            if isinstance(value, str) and value.endswith((".yaml", ".yml"))}


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A recipe as one tree, its included section files read in place."""
    tree = yaml.safe_load(Path(path).read_text()) or {}
    for section, file in recipe_includes(path).items():
        tree[section] = yaml.safe_load(file.read_text())
    return tree


def locate_key(argv: Sequence[str], key: str) -> str:
    """Where ``key`` (``model.init_args.lr``) was set: the last config file (or the section file it
    includes) or ``--key`` argument wins."""
    short = key.replace(".init_args.", ".")
    source = "default value (no config file sets it)"
    for kind, value in _arguments(argv):
        if kind == "config":
            try:
                tree = yaml.safe_load(Path(value).read_text()) or {}
                includes = recipe_includes(value)
            except (OSError, yaml.YAMLError, AttributeError):
                continue
            if _lookup(tree, key)[0] or _lookup(tree, short)[0]:
                source = value
            section, _, rest = key.partition(".")
            if section in includes and rest:
                try:
                    sub = yaml.safe_load(includes[section].read_text()) or {}
                except (OSError, yaml.YAMLError):
                    continue
                if _lookup(sub, rest)[0] or _lookup(sub, rest.replace("init_args.", "", 1))[0]:
                    source = str(includes[section])
        elif value in (f"--{key}", f"--{short}"):
            source = f"command line {value}"
    return source


_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
          "Problem with given class_path")


def explain_parse_error(message: str, argv: Sequence[str]) -> str:
    """One sentence out of jsonargparse's nested error text: file, key, problem, allowed values."""
    keys = _PARSER_KEY.findall(message)
    key = ".".join(keys[:1] + (["init_args"] if len(keys) > 1 and keys[0] in ("model", "data") else []) + keys[1:])
    literal = _LITERAL.search(message)
    if literal:
        allowed = literal.group(1).replace("'", "")
        problem = f"{literal.group(2).strip()!r} is not allowed; allowed values: {allowed}"
    else:
        lines = [_PARSER_KEY.sub("", ln).strip(" -:") for ln in message.splitlines()]
        details = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
        problem = details[-1] if details else message.strip().splitlines()[0]
        unknown = _NOT_ACCEPTED.search(problem)
        if unknown:
            section = f"{key}.init_args" if key in ("model", "data") else key
            key = f"{section}.{unknown.group(1)}" if key else unknown.group(1)
            problem = "no such option for this class (see --help for the accepted ones)"
    if key in ("model", "data") and "import path" in problem:
        given = problem.rsplit(":", 1)[-1].strip()
        problem = f"unknown class {given!r}; known: {', '.join(_known_classes(key))}"
    if key == "config":
        return f"command line --config: {problem}"
    if not key:
        return f"{', '.join(_config_files(argv)) or 'command line'}: {problem}"
    return f"{locate_key(argv, key)}: {key}: {problem}"


def _known_classes(section: str) -> list[str]:
    model_base, data_base = _register_methods()
    base = model_base if section == "model" else data_base
    found, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub.__name__)
            todo.append(sub)
    return sorted(found)


def _failing_init(err: BaseException) -> tuple[object, str] | None:
    """The outermost suite object whose ``__init__`` raised ``err``, and its config section."""
    from lightning.pytorch import LightningDataModule, LightningModule

    owner = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            candidate = frame.f_locals["self"]
            if isinstance(candidate, (LightningModule, LightningDataModule, Trainer)):
                owner = owner or candidate
    if owner is None:
        return None
    if isinstance(owner, Trainer):
        return owner, "trainer"
    return owner, "model" if isinstance(owner, LightningModule) else "data"


def explain_init_error(err: BaseException, argv: Sequence[str]) -> str | None:
    """A ``ValueError`` from a module's ``__init__``: name the file and the init argument it is about."""
    inner: BaseException = err
    while inner.__cause__ is not None and not isinstance(inner, (DataError, ConfigError)):
        inner = inner.__cause__
    if isinstance(inner, DataError):
        return str(inner)
    if isinstance(inner, ConfigError):  # already names its key: add where it was set
        return f"{inner.source or locate_key(argv, inner.key)}: {inner.key}: {inner.problem}"
    if not isinstance(inner, (ValueError, MisconfigurationException)):
        return None
    found = _failing_init(inner)
    if found is None:
        return None
    owner, section = found
    names = [p for cls in type(owner).__mro__ if "__init__" in vars(cls)
             for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    text = str(inner)
    mentioned = sorted((m.start(), name) for name in set(names)
                       for m in [re.search(rf"\b{re.escape(name)}\b", text)] if m)
    init_args = "" if section == "trainer" else ".init_args"
    key = f"{section}{init_args}.{mentioned[0][1]}" if mentioned else f"{section} ({type(owner).__name__})"
    return f"{locate_key(argv, key) if mentioned else ', '.join(_config_files(argv)) or 'command line'}: {key}: {text}"


def run_cli(entry: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Run ``entry(args)``; config and data errors print one sentence (traceback with ``--debug``), exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LITSEG_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if argv is None:
        sys.argv[1:] = args  # LightningCLI reads sys.argv itself (and warns when given both)
    try:
        return entry(None if argv is None else args)
    except (ArgumentError, DataError, ConfigError, ValueError, MisconfigurationException) as err:
        if isinstance(err, ArgumentError):
            sentence = explain_parse_error(str(err), args)
        elif isinstance(err, ConfigError):
            sentence = f"{err.source or locate_key(args, err.key)}: {err.key}: {err.problem}"
        elif isinstance(err, DataError):
            sentence = str(err)
        else:
            sentence = explain_init_error(err, args)
            if sentence is None:
                raise
        if debug:
            traceback.print_exc()
        print(f"error: {sentence}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(2)


def main(args: Any = None) -> LitSegCLI:
    return run_cli(lambda a: LitSegCLI(args=a), args)
