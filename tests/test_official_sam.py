"""The official-checkpoint path with a randomly initialised vit_b (no real weights can be had here)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from prmagic_core.baselines import PerSAMF
from prmagic_core.data.folder import load_episodes
from prmagic_core.flow import FlowConfig
from prmagic_core.models.encoding import Encoder
from prmagic_core.models.loading import CheckpointError, load_sam
from prmagic_core.pipeline import run_episode

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples" / "shapeworld"


@pytest.mark.slow
def test_random_vit_b_checkpoint_runs_a_folder_episode(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), checkpoint)
    with pytest.raises(CheckpointError, match="it is a vit_b checkpoint, use model type vit_b"):
        load_sam("vit_h", checkpoint)
    sam = load_sam("vit_b", checkpoint)
    episode = load_episodes(SAMPLES)[0]
    encoder = Encoder(sam, batch_size=2)
    result = run_episode(PerSAMF(train_iters=50), encoder, episode, steps=2, flow=FlowConfig(eta=1e-3),
                         selector="pooled")
    h, w = episode.query_image.shape[:2]
    assert len(result.candidates) == 3
    assert all(m.shape == (h, w) for m in result.candidates)
    assert result.trajectory.steps[0].gradient.shape == (1, 256, 64, 64)
    assert np.isfinite(result.trajectory.steps[0].d_phi)
    assert encoder.passes == 2  # support + query; the pooled selector re-encodes nothing
