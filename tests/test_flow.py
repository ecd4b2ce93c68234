import math

import pytest
import torch

from prmagic_core.flow import BACKTRACK_TRIES, FlowConfig, d_phi, drift_weight, flow_step, make_policy, unit_direction


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
     (dict(reduction="max"), "reduction"), (dict(grad_at="z1"), "grad_at"), (dict(direction="up"), "direction"),
     (dict(step="wild"), "step"), (dict(step="relative"), "needs step_size"), (dict(step_size=0.0), "step_size"),
     (dict(step="grow", step_size=1.0), "step_size must be > 1"), (dict(direction="random"), "set norm"),
     (dict(direction="sign", step="grow", step_size=2.0), "set norm")],
)
def test_bad_flow_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowConfig(**kwargs)


# ---------------------------------------------------------------- directions at a set norm, step policies

@pytest.mark.parametrize("direction", ["gradient", "sign", "random"])
def test_a_drift_of_set_norm_has_exactly_that_norm(direction):
    grad = torch.randn(1, 8, 16, 16, generator=_gen(2)) * 1e4
    for norm in (0.0256, 3.6, 57.8):
        cfg = FlowConfig(gamma=0.0, direction=direction, step_size=norm)
        delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())
        assert math.isclose(float(delta.norm()), norm, rel_tol=1e-5) and math.isclose(norms.drift, norm, rel_tol=1e-5)


def test_directions_are_the_gradients_its_signs_and_a_seeded_random_one():
    grad = torch.tensor([3.0, -1.0, 0.0, 4.0, 5.0]).reshape(1, 5, 1, 1)  # norm sqrt(51)
    assert torch.allclose(unit_direction(grad, "gradient", _gen()).flatten(), grad.flatten() / 51 ** 0.5)
    assert torch.allclose(unit_direction(grad, "sign", _gen()).flatten(), torch.tensor([1.0, -1.0, 0.0, 1.0, 1.0]) / 2)
    a, b, c = (unit_direction(grad, "random", _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(unit_direction(torch.zeros(1, 2, 1, 1), "gradient", _gen()), torch.zeros(1, 2, 1, 1))


def test_the_mean_reductions_gradient_has_the_sums_direction():
    # why the direction test compares "foreground", not "mean": mean = sum / n points the same way
    z = torch.randn(1, 3, 4, 4, generator=_gen(3), requires_grad=True)
    logits = torch.nn.functional.conv2d(z, torch.randn(1, 3, 3, 3, generator=_gen(4)), padding=1)[0, 0] ** 3
    grads = {r: torch.autograd.grad(d_phi(logits, r), z, retain_graph=True)[0] for r in ("sum", "mean", "foreground")}
    assert torch.allclose(unit_direction(grads["sum"], "gradient", _gen()), unit_direction(grads["mean"], "gradient", _gen()))
    assert not torch.allclose(unit_direction(grads["sum"], "gradient", _gen()),
                              unit_direction(grads["foreground"], "gradient", _gen()))


def test_relative_step_is_a_set_fraction_of_the_embeddings_norm():
    grad = torch.randn(1, 4, 8, 8, generator=_gen(5))
    cfg = FlowConfig(gamma=0.0, step="relative", step_size=0.05)
    delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(), make_policy(cfg, 240.0))
    assert math.isclose(norms.drift, 12.0, rel_tol=1e-5)
    assert torch.allclose(delta, 12.0 * grad / grad.norm())
    with pytest.raises(ValueError, match="needs its policy"):
        flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen())


class Probe:
    """A constructed look-ahead: answers (moved, d_phi of the next candidate) from the trial step's norm."""

    def __init__(self, answer):
        self.answer, self.norms = answer, []

    def __call__(self, delta):
        self.norms.append(float(delta.norm()))
        return self.answer(self.norms[-1])


def test_backtracking_halves_until_d_phi_rises_else_takes_no_step():
    grad = torch.ones(1, 1, 2, 2)  # unit direction (0.5, 0.5, 0.5, 0.5)
    cfg = FlowConfig(gamma=0.0, step="backtrack", step_size=0.5)
    probe = Probe(lambda norm: (norm < 200, 1.0 if norm < 40 else -1.0))  # d = 0 now
    delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(), make_policy(cfg, 240.0), probe)
    assert probe.norms == [120.0, 60.0, 30.0] and math.isclose(norms.drift, 30.0, rel_tol=1e-6)
    never = Probe(lambda norm: (True, -1.0))
    delta, norms = flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(), make_policy(cfg, 240.0), never)
    assert len(never.norms) == BACKTRACK_TRIES and norms.drift == 0.0 and torch.equal(delta, torch.zeros_like(grad))
    with pytest.raises(ValueError, match="needs probe"):
        flow_step(torch.zeros_like(grad), grad, 0.0, cfg, _gen(), make_policy(cfg, 240.0))


def test_grow_raises_eta_until_the_prompts_move_and_stops_when_d_phi_does_not_rise():
    grad = torch.full((1, 1, 2, 2), 5.0)  # clipped to 0.1: the paper's drift has norm eta * 0.2
    cfg = FlowConfig(eta=1e-3, gamma=0.0, clip=0.1, step="grow", step_size=10.0)
    policy = make_policy(cfg, 240.0)
    answers = iter([(False, 0.0), (False, 0.0), (True, 2.0), (True, 1.0)])  # d_phi now: 0, 0, 0, then 2
    probe = Probe(lambda norm: next(answers))
    drifts = []
    for d in (0.0, 0.0, 0.0, 2.0, 2.0):
        _, norms = flow_step(torch.zeros_like(grad), grad, d, cfg, _gen(), policy, probe)
        drifts.append(norms.drift)
    assert drifts[:3] == pytest.approx([2e-4, 2e-3, 2e-2])  # eta x10 twice, then the prompts move and d_phi rises
    assert drifts[3:] == [0.0, 0.0]  # the next move lowers d_phi: not taken, and the flow stops
    assert len(probe.norms) == 4  # a stopped flow probes no more
