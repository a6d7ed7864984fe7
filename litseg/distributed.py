"""Rank gathering for evaluation results held as Python objects (rows, counts), one definition.

Without an initialised process group (one process, or CPU tests) everything is local: the
world has one rank and gathering returns the caller's own object.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def world_size() -> int:
    """Ranks in the default process group; 1 when none is initialised."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order (``all_gather_object``); ``[obj]`` in a one-rank world.

    Every rank must call it (a collective), with a picklable object.
    """
    n = world_size()
    if n == 1:
        return [obj]
    parts: list[Any] = [None] * n
    torch.distributed.all_gather_object(parts, obj)
    return parts


def gather_rows(rows: Iterable[T]) -> list[T]:
    """All ranks' rows concatenated in rank order (each rank's own order kept)."""
    return [row for part in gather_objects(list(rows)) for row in part]
