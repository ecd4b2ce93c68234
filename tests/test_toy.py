import numpy as np

from prmagic_core.flow import FlowConfig
from prmagic_core.toy import toy_flow


def test_toy_flow_moves_particles_only_when_the_flow_acts():
    still = toy_flow(FlowConfig(eta=0.0, gamma=0.0, clip=None), steps=3, n=64, train_steps=20)
    assert np.allclose(still.distance, still.distance[0])
    moving = toy_flow(FlowConfig(eta=0.02, gamma=0.0, clip=None), steps=20, n=64, train_steps=100)
    assert moving.distance[-1] < 0.5 * moving.distance[0]  # drift toward the real samples
    assert sorted(moving.snapshots) == [0, 5, 10, 20]
