import math

import pytest
import torch

from prmagic_core.flow import FlowConfig, d_phi, drift_weight, flow_step


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_drift_only_step_is_exactly_eta_times_gradient():
    grad = torch.randn(1, 8, 4, 4, generator=_gen(1))
    cfg = FlowConfig(eta=1e-2, gamma=0.0, clip=None)
    delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())
    assert torch.equal(delta, 1e-2 * grad)
    assert norms.noise == 0.0
    assert math.isclose(norms.drift, float((1e-2 * grad).norm()), rel_tol=1e-6)


def test_steps_accumulate_on_the_displacement():
    grad = torch.ones(1, 2, 2, 2)
    cfg = FlowConfig(eta=0.5, gamma=0.0, clip=None)
    delta, _ = flow_step(torch.full_like(grad, 3.0), grad, 0.0, cfg, _gen())
    assert torch.equal(delta, torch.full_like(grad, 3.5))


def test_clip_bounds_each_gradient_entry():
    grad = torch.tensor([-5.0, -0.05, 0.0, 0.05, 5.0]).reshape(1, 5, 1, 1)
    cfg = FlowConfig(eta=1.0, gamma=0.0, clip=0.1)
    delta, _ = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())
    assert torch.allclose(delta.flatten(), torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1]))


def test_noise_has_the_stated_standard_deviation():
    cfg = FlowConfig(eta=1e-3, gamma=0.1, drift=False)
    grad = torch.full((1, 64, 64, 64), 7.0)  # ignored: drift off
    delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())
    assert norms.drift == 0.0
    assert math.isclose(float(delta.std()), math.sqrt(2 * 1e-3 * 0.1), rel_tol=0.02)
    assert abs(float(delta.mean())) < 1e-3 * cfg.noise_std * 100


def test_noise_comes_from_the_passed_generator():
    cfg = FlowConfig()
    grad = torch.zeros(1, 4, 8, 8)
    a, _ = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(5))
    b, _ = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(5))
    c, _ = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_dwarfs_drift_at_the_papers_constants():
    # sqrt(2 * eta * gamma) vs the largest possible drift eta * clip
    for eta in (1e-3, 1e-4):
        cfg = FlowConfig(eta=eta)
        assert cfg.noise_std / (eta * cfg.clip) > 100


def test_drift_weights():
    assert drift_weight(3.0, "kl") == 1.0
    assert drift_weight(0.0, "logd") == 0.5 and drift_weight(0.0, "js") == 0.5
    assert math.isclose(drift_weight(2.0, "logd"), 1 / (1 + math.exp(2.0)))
    assert math.isclose(drift_weight(2.0, "js"), 1 / (1 + math.exp(-2.0)))
    assert drift_weight(1e6, "logd") < 1e-300 and drift_weight(-1e6, "js") < 1e-300  # no overflow


def test_drift_weight_scales_the_step():
    grad = torch.ones(1, 1, 2, 2)
    cfg = FlowConfig(eta=1.0, gamma=0.0, clip=None, divergence="js")
    delta, _ = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())
    assert torch.allclose(delta, torch.full_like(grad, 0.5))


def test_d_phi_reductions():
    logits = torch.tensor([[-2.0, 1.0], [3.0, -4.0]], requires_grad=True)
    assert float(d_phi(logits.detach(), "sum")) == -2.0
    assert float(d_phi(logits.detach(), "mean")) == -0.5
    fg = d_phi(logits, "foreground")
    assert float(fg.detach()) == 4.0
    (grad,) = torch.autograd.grad(fg, logits)
    assert torch.equal(grad, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_non_finite_gradient_is_a_clear_error():
    grad = torch.tensor([float("nan")]).reshape(1, 1, 1, 1)
    with pytest.raises(FloatingPointError, match="not finite"):
        flow_step(torch.zeros_like(grad), grad, 0.0, FlowConfig(), _gen())


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(eta=-1), "eta"), (dict(clip=0), "clip"), (dict(divergence="w2"), "divergence"),
     (dict(reduction="max"), "reduction"), (dict(grad_at="z1"), "grad_at")],
)
def test_bad_flow_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowConfig(**kwargs)
