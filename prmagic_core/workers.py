"""Episodes in worker processes, one torch thread each, results back in order.

    for row in ordered_map(run_one, indices, workers=2):   # run_one(index) -> a picklable result
        table.append([row])

On a CPU, N processes of one thread each beat one process of N threads: an episode is
hundreds of small ops, which intra-op threads barely split, and two busy processes with two
threads each oversubscribe the cores. Workers are forked, so they start with the parent's model,
data and caches and share nothing after: each computes whole items and sends its result back;
the parent alone writes the results table, in the items' order, so the table is the one a
single process writes. Every random draw of an item is seeded by the item itself (see
``evaluation.episode_seed``), never by what ran before it in the same process.

On a GPU use one process per device (``torchrun``, :mod:`prmagic_core.distributed`) instead.
"""
from __future__ import annotations

import multiprocessing
import os

import torch

_FUNCTION = None  # the forked workers' task, set by ordered_map just before it forks


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int | None, device: torch.device | str, world: int = 1) -> int:
    """``workers`` checked for ``device``; None means every core on a CPU, one process on a GPU or under torchrun."""
    device = torch.device(device)
    if workers is None:
        return available_cores() if device.type == "cpu" and world == 1 else 1
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"--workers {workers} runs CPU processes; on {device} use torchrun, one process per GPU")
    if workers > 1 and world > 1:
        raise ValueError(f"--workers {workers} under torchrun: each rank already is one worker; use --workers 1")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(f"--workers {workers} needs the 'fork' start method, which this platform lacks")
    return workers


def _start_worker() -> None:
    torch.set_num_threads(1)


def _call(item):
    return _FUNCTION(item)


def ordered_map(function, items, workers: int = 1):
    """``function(item)`` for each of ``items``, yielded in the items' order as they finish.

    ``workers`` = 1 runs in this process; more forks that many processes with one torch thread each.
    """
    global _FUNCTION
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    _FUNCTION = function
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(items)), initializer=_start_worker) as pool:
            yield from pool.imap(_call, items, chunksize=1)
    finally:
        _FUNCTION = None
