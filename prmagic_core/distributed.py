"""Evaluation over several processes started by ``torchrun``; a no-op in a plain process.

    rank, world, device = setup(resolve_device("auto"))   # cuda:LOCAL_RANK under torchrun
    rows = gather_rows(my_rows)                           # every rank's rows, on every rank
    teardown()

Ranks share nothing but the gathered rows: each runs its own shard of episodes, so the
process group is only a rendezvous (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank that finished its shard waits in the gather for the slowest one, which after a
# resume can be hours behind; torchrun stops every rank if one fails, so nothing hangs.
GATHER_TIMEOUT = timedelta(hours=48)


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets its environment)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def setup(device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the process group when launched by torchrun.

    ``device`` says CPU or CUDA; under torchrun a CUDA rank gets ``cuda:LOCAL_RANK``.
    """
    device = torch.device(device)
    if not launched():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # all_gather_object stages its bytes on the current device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GATHER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), device


def gather_rows(rows: list) -> list:
    """All ranks' rows, rank 0's first, on every rank (so every rank can summarise and agree on the exit code)."""
    if not dist.is_initialized():
        return list(rows)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(rows))
    return [row for part in parts for row in part]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
