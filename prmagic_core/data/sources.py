"""Episodes from disk: a folder of episodes or a real benchmark, and the task they pose."""
from __future__ import annotations


def load_source(dataset: str, root, fold: int = 0, shots: int = 1, seed: int = 0):
    """The episodes of ``root``: folder format (``dataset="folder"``) or a benchmark's standard layout."""
    if root is None:
        raise ValueError(f"--dataset {dataset} needs a data root (--data DIR or --data-root PATH)")
    if dataset == "folder":
        from .folder import load_episodes

        return load_episodes(root)
    from .benchmarks import load_benchmark

    return load_benchmark(dataset, root, fold=fold, shots=shots, seed=seed)


def kind_of(episodes, default: str) -> str:
    """``object`` or ``part``: a benchmark says it, a list of episodes by its first one."""
    return getattr(episodes, "kind", None) or (episodes[0].kind if len(episodes) else default)
