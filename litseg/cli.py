"""The suite's LightningCLI: subclass mode over every method's module and datamodule."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from callbacks.run_config import RunConfigSaver


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


def main(args: Any = None) -> LitSegCLI:
    return LitSegCLI(args=args)
