"""Train / validate / test / predict any litseg method.

    python train.py fit --config configs/weak_unet/points.yaml [--trainer configs/trainer/cpu.yaml]
    python train.py fit --config configs/weak_unet/points.yaml --print_config

This file only imports: the classes live in packages, so LightningCLI resolves them by
their import path (a class defined in ``__main__`` would not match its base).
"""

from litseg.cli import main

if __name__ == "__main__":
    main()
