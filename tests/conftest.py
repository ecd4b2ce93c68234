import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def random_tiny():
    """A randomly initialised SAM-Tiny (fixed seed): for tests of plumbing, not of quality."""
    from prmagic_core.models.tiny import build_sam_tiny

    torch.manual_seed(0)
    return build_sam_tiny().eval()
