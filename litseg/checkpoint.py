"""The one checkpoint loader: ``torch.load(..., weights_only=True)`` with clear errors.

Used for Lightning checkpoints written by this suite and for upstream weight files
(SAM, SAM2, clickability models). ``weights_only=True`` refuses to run pickled code,
so a checkpoint downloaded from somewhere cannot execute anything on load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from litseg.io import DataError


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely; a missing or unreadable file raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        # torch's own text is a paragraph of advice about weights_only=False (not an option here):
        # keep its first sentence; the whole error stays chained for --debug.
        reason = str(err).strip().split("\n")[0].split(". ")[0][:160]
        raise DataError(path, f"not a readable checkpoint: torch.load(weights_only=True) failed "
                              f"({type(err).__name__}: {reason})") from err
    if not isinstance(obj, Mapping):
        raise DataError(path, f"expected a dict-like checkpoint, got {type(obj).__name__}")
    return dict(obj)


def extract_state_dict(ckpt: Mapping[str, Any], key: str | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
    """Pick the weights out of a checkpoint dict.

    ``key`` selects a nested dict (``"state_dict"`` for Lightning, ``"model"`` for SAM2);
    ``None`` tries those two and falls back to the dict itself. ``prefix`` keeps only
    keys starting with it and strips it (e.g. ``"net."`` to load a Lightning checkpoint
    into the bare network).
    """
    if key is None:
        key = next((k for k in ("state_dict", "model") if isinstance(ckpt.get(k), Mapping)), None)
    sd = ckpt[key] if key is not None else ckpt
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_weights(module: nn.Module, path: str | os.PathLike[str], key: str | None = None,
                 prefix: str = "", strict: bool = True, checkpoint: Mapping[str, Any] | None = None) -> None:
    """Load weights from ``path`` (or its already loaded ``checkpoint``) into ``module``; mismatches name the file."""
    sd = extract_state_dict(load_checkpoint(path) if checkpoint is None else checkpoint, key=key, prefix=prefix)
    if not sd:
        raise DataError(path, f"no weights found (key={key!r}, prefix={prefix!r})")
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise DataError(path, f"weights do not match the model: {err}") from err
    if strict and (result.missing_keys or result.unexpected_keys):
        raise DataError(
            path,
            "weights do not match the model: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}",
        )
