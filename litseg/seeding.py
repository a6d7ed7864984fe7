"""Stable per-item random generators.

A generator derived from ``(seed, key)`` gives the same numbers whatever the worker,
rank or iteration order, which is what makes per-image results reproducible under DDP.
"""

from __future__ import annotations

import hashlib

import numpy as np


def item_rng(seed: int, *keys: object) -> np.random.Generator:
    """A NumPy generator seeded from ``seed`` and any number of keys (e.g. an image stem)."""
    digest = hashlib.sha256(repr((int(seed), *map(str, keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
