"""Wall-clock timing that waits for the GPU, so a kernel still in flight is counted where it ran."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def timed(timings: dict, key: str, device: torch.device):
    """Add the seconds the block takes to ``timings[key]``."""
    start = clock(device)
    yield
    timings[key] = timings.get(key, 0.0) + clock(device) - start
