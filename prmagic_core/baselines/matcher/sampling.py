"""Matcher's prompt sampler: optional k-means on the matched points, then random prompt subsets."""
from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.cluster import KMeans

ENUMERATE_UP_TO = 8  # with at most this many points Matcher decodes every combination of each size


def kmeans_centres(points: np.ndarray, centres: int, seed: int) -> np.ndarray:
    """(k, 2) integer k-means centres of ``points`` (M, 2), k = min(centres, M).

    sklearn's k-means++ keeps every cluster non-empty, which Matcher's own loop re-runs for.
    """
    k = min(centres, len(points))
    fitted = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(np.asarray(points, dtype=np.float64))
    return fitted.cluster_centers_.astype(np.int64).astype(np.float64)


def prompt_subsets(count: int, sizes: tuple, draws_per_size: int, rng: np.random.Generator,
                   cap: int | None = None) -> list:
    """Index arrays into ``count`` points, for each size in ``sizes`` (clipped to ``count``):
    every combination when ``count`` <= 8, else ``draws_per_size`` random draws (without
    repetition inside a subset, as Matcher). ``cap`` keeps at most that many per size, drawn at random."""
    if count < 1:
        raise ValueError("no prompt points to build subsets from")
    low, high = min(sizes[0], count), min(sizes[1], count)
    subsets = []
    for size in range(low, high + 1):
        if count <= ENUMERATE_UP_TO:
            of_size = [np.array(c) for c in combinations(range(count), size)]
            if cap is not None and len(of_size) > cap:
                of_size = [of_size[i] for i in np.sort(rng.choice(len(of_size), cap, replace=False))]
        else:
            draws = draws_per_size if cap is None else min(draws_per_size, cap)
            of_size = [rng.choice(count, size, replace=False) for _ in range(draws)]
        subsets.extend(of_size)
    return subsets

