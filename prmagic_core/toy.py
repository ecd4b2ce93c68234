"""The 2-D toy of notebook 00: particles moved by a trained discriminator's gradient flow.

The same :func:`~prmagic_core.flow.flow_step` as the refinement loop, on a small MLP instead of
SAM's mask decoder, so that the flow can be watched in the plane.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .flow import FlowConfig, flow_step


@dataclass
class ToyFlow:
    """Particles moved by a trained 2-D discriminator's gradient flow."""

    real: np.ndarray  # (n, 2)
    snapshots: dict  # step -> (n, 2)
    distance: np.ndarray  # energy distance to ``real`` after each step (index 0: before any)
    grid: tuple  # (xs, ys, d on the grid) for contour plots
    losses: list
    config: dict = field(default_factory=dict)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (0 iff the distributions agree)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def toy_discriminator(seed: int = 0) -> torch.nn.Module:
    """A small MLP d(x): the logit of "x is real" for 2-D points."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                               torch.nn.Linear(64, 1))


def train_discriminator(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, steps: int) -> list:
    """``steps`` Adam steps of logistic loss, real labelled 1 and fake 0; returns the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs = torch.cat([real, fake.detach()])
    labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[:, 0], labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def toy_flow(flow: FlowConfig, steps: int, n: int = 400, train_steps: int = 300, seed: int = 0,
             retrain_every: int | None = None, retrain_steps: int = 30, real_mean=(2.0, 1.5), real_std: float = 0.5,
             fake_mean=(-2.0, -1.0), fake_std: float = 1.0, record=None) -> ToyFlow:
    """Fake particles moved toward a real 2-D Gaussian by :func:`flow_step` on a trained discriminator.

    As the paper's equation reads (gradient at the moved point): x_t = x_0 + delta_t, and
    delta_{t+1} = delta_t + eta s(d) clip(grad d(x_t)) + sqrt(2 eta gamma) xi. The discriminator
    is trained once against the initial particles (PR-MaGIC's decoder is never retrained either),
    or, with ``retrain_every``, further trained against the current particles every so many steps,
    so that d keeps estimating log(mu / rho_t).
    """
    g = torch.Generator().manual_seed(seed)
    real = torch.tensor(real_mean) + real_std * torch.randn(n, 2, generator=g)
    x0 = torch.tensor(fake_mean) + fake_std * torch.randn(n, 2, generator=g)
    model = toy_discriminator(seed)
    losses = train_discriminator(model, real, x0, train_steps)
    record = sorted(set(record or (0, steps // 4, steps // 2, steps)))
    delta = torch.zeros_like(x0)
    snapshots, distance = {0: x0.numpy().copy()}, [energy_distance(x0, real)]
    for t in range(1, steps + 1):
        if retrain_every and t > 1 and (t - 1) % retrain_every == 0:
            losses += train_discriminator(model, real, x0 + delta, retrain_steps)
        x = (x0 + delta).requires_grad_(True)
        with torch.enable_grad():
            d = model(x)[:, 0]
            (grad,) = torch.autograd.grad(d.sum(), x)  # each particle's own gradient
        delta, _ = flow_step(delta, grad, float(d.detach().mean()), flow, g)
        moved = (x0 + delta).detach()
        distance.append(energy_distance(moved, real))
        if t in record:
            snapshots[t] = moved.numpy().copy()
    points = np.concatenate([real.numpy(), *snapshots.values()])
    lo, hi = float(points.min()) - 1.0, float(points.max()) + 1.0
    xs = np.linspace(lo, hi, 81)
    grid = torch.tensor(np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2), dtype=torch.float32)
    with torch.no_grad():
        field_d = model(grid)[:, 0].reshape(len(xs), len(xs)).numpy()
    config = {**flow.as_dict(), "steps": steps, "n": n, "train_steps": train_steps, "seed": seed,
              "retrain_every": retrain_every, "retrain_steps": retrain_steps}
    return ToyFlow(real.numpy(), snapshots, np.array(distance), (xs, xs, field_d), losses, config)
