"""Cost of the up-front data check: cold, cached, and against one plain pass over the data.

    python benchmarks/data_check_speed.py --root ../shared/data --datasets GrabCut Berkeley DAVIS

For each benchmark dataset (RITM layouts) this times, side by side in one run,
``InteractiveDataModule.setup("test")`` with an empty check cache (every image and mask decoded
and checked), the same with the cache the first call wrote (nothing decoded), and one plain pass
that reads every sample through the dataset (what the first epoch pays anyway), and prints the
ratios. The check cache lives in a temporary run folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.interactive import InteractiveDataModule  # noqa: E402


def _module(root: str, name: str, cache: Path) -> InteractiveDataModule:
    dm = InteractiveDataModule(root=root, datasets=[name])
    dm.check_cache_path = lambda: cache  # type: ignore[method-assign]  # a run folder without a trainer
    return dm


def measure(root: str, name: str, repeats: int) -> dict[str, float]:
    cold, cached, plain = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "data_check_cache.json"
            start = time.perf_counter()
            dm = _module(root, name, cache)
            dm.setup("test")
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            _module(root, name, cache).setup("test")
            cached.append(time.perf_counter() - start)
            dataset = dm.test_dataloader().dataset
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[i]
            plain.append(time.perf_counter() - start)
    return {"images": len(dataset), "cold": statistics.median(cold), "cached": statistics.median(cached),
            "plain": statistics.median(plain)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO / "sample_data"))
    p.add_argument("--datasets", nargs="+", default=["GrabCut"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| dataset | images | check, cold (s) | check, cached (s) | one plain read pass (s) | cold / pass "
          "| cached / cold |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        r = measure(args.root, name, args.repeats)
        print(f"| {name} | {r['images']} | {r['cold']:.3f} | {r['cached']:.4f} | {r['plain']:.3f} | "
              f"{r['cold'] / r['plain']:.2f} | {r['cached'] / r['cold']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
