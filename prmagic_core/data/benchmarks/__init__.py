"""Loaders for the six real few-shot benchmarks, read from their standard layouts; nothing is downloaded.

``load_benchmark("fss", root)`` plans a fold's episodes from the split and annotation files and
returns a :class:`BenchmarkEpisodes`: ``len`` is the protocol's episode count, indexing reads
that episode's images, ``episode_ids`` are stable strings to resume runs by. Episodes are drawn
from ``numpy.random.default_rng(seed)``; each module's docstring states the protocol and the
annotation format it assumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import coco, dis5k, fss, lvis, paco, pascal_part
from ._base import BenchmarkEpisodes, BenchmarkError, resize_episode
from ._files import require_dir

BENCHMARKS = {
    "fss": fss.BENCHMARK,
    "coco": coco.BENCHMARK,
    "lvis": lvis.BENCHMARK,
    "paco": paco.BENCHMARK,
    "pascal_part": pascal_part.BENCHMARK,
    "dis5k": dis5k.BENCHMARK,
}

__all__ = ["BENCHMARKS", "BenchmarkEpisodes", "BenchmarkError", "load_benchmark", "resize_episode"]


def load_benchmark(
    name: str, root, fold: int = 0, shots: int = 1, seed: int = 0, size: int | None = 518
) -> BenchmarkEpisodes:
    """A fold's test episodes of benchmark ``name`` read from ``root``, resized to ``size`` squared (None: native)."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    if not _is_int(fold) or not 0 <= fold < benchmark.num_folds:
        raise BenchmarkError(f"{benchmark.title} has no fold {fold!r}; expected 0..{benchmark.num_folds - 1}")
    if not _is_int(shots) or shots < 1:
        raise BenchmarkError(f"shots must be a positive integer, got {shots!r}")
    if not _is_int(seed) or seed < 0:
        raise BenchmarkError(f"seed must be a non-negative integer, got {seed!r}")
    if size is not None and (not _is_int(size) or size < 1):
        raise BenchmarkError(f"size must be a positive integer or None, got {size!r}")
    root = require_dir(Path(root), f"the {benchmark.title} root holding {benchmark.layout}")
    plan = benchmark.plan_episodes(root, int(fold), int(shots), np.random.default_rng(seed))
    return BenchmarkEpisodes(name, benchmark.kind, plan, fold=int(fold), shots=int(shots), seed=int(seed), size=size)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
