"""Discriminator gradient flow on the query embedding (one Euler-Maruyama step).

The flow minimises KL(mu || rho) - gamma * H(rho) for the embedding distribution rho; with
a discriminator logit d_phi the density ratio is exp(-d_phi), and the SDE discretises to

    delta += eta * s(d) * clip(grad d_phi) + sqrt(2 * eta * gamma) * xi,   xi ~ N(0, I)

where s is the drift weight of the f-divergence (DGflow, Ansari et al. 2021): 1 for KL,
1 / (1 + e^d) for logD, 1 / (1 + e^-d) for JS. SAM's mask decoder plays the discriminator:
d_phi is a reduction of its low-res pre-sigmoid logits.

Beside the paper's step, a drift of a set L2 norm along a chosen direction (the gradient's,
its sign's, or a random one: the controls of the direction test) and step-size policies that
adapt the drift as the flow goes (:func:`make_policy`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

DIVERGENCES = ("kl", "logd", "js")
REDUCTIONS = ("sum", "mean", "foreground")
GRAD_AT = ("z0", "zt")
DIRECTIONS = ("gradient", "sign", "random")
# fixed: the paper's eta * s(d) * clip(grad), or a drift of L2 norm step_size; the others adapt it.
STEPS = ("fixed", "relative", "backtrack", "grow")
PROBING_STEPS = ("backtrack", "grow")  # they look at the prompts a trial step would give
BACKTRACK_TRIES = 8


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the flow. Defaults are the release's semantic-segmentation values.

    ``grad_at="z0"`` evaluates the gradient at the original embedding with the current
    prompts (as released); ``"zt"`` at the moved embedding (as the paper's equation reads).
    ``drift=False`` zeroes the gradient term (the noise-only ablation); ``gamma=0`` is drift only.

    ``step`` and ``step_size`` set the drift's size (its direction is ``direction``):

    - ``"fixed"``: ``step_size=None`` is the paper's eta * s(d) * clip(grad); a number is the drift's
      L2 norm, the same at every step (the direction test's matched norm);
    - ``"relative"``: a drift of norm ``step_size`` * ||z0|| (a set fraction of the embedding's norm);
    - ``"backtrack"``: first tries a drift of norm ``step_size`` * ||z0||, halves it until the step
      raises the next candidate's d_phi (up to :data:`BACKTRACK_TRIES` tries), else takes no step;
    - ``"grow"``: the paper's drift with an eta that grows by the factor ``step_size`` while the
      prompts do not move, and stops the flow at the first move that does not raise d_phi.
    """

    eta: float = 1e-3
    gamma: float = 0.1
    clip: float | None = 0.1
    divergence: str = "kl"
    reduction: str = "sum"
    grad_at: str = "z0"
    drift: bool = True
    direction: str = "gradient"
    step: str = "fixed"
    step_size: float | None = None

    def __post_init__(self):
        if self.eta < 0 or self.gamma < 0:
            raise ValueError(f"eta and gamma must be >= 0, got eta={self.eta}, gamma={self.gamma}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive or None (off), got {self.clip}")
        for value, allowed, name in ((self.divergence, DIVERGENCES, "divergence"),
                                     (self.reduction, REDUCTIONS, "reduction"), (self.grad_at, GRAD_AT, "grad_at"),
                                     (self.direction, DIRECTIONS, "direction"), (self.step, STEPS, "step")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.step_size is None and self.step in ("relative", "backtrack", "grow"):
            raise ValueError(f"step {self.step!r} needs step_size (see FlowConfig)")
        if self.step_size is not None and not self.step_size > (1 if self.step == "grow" else 0):
            raise ValueError(f"step_size must be > {1 if self.step == 'grow' else 0} for step {self.step!r}, "
                             f"got {self.step_size}")
        if self.direction != "gradient" and (self.step_size is None or self.step == "grow"):
            raise ValueError(f"direction {self.direction!r} needs a drift of set norm (step 'fixed' with a step_size, "
                             f"'relative' or 'backtrack'); the paper's eta * clip(grad) has the gradient's")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def noise_std(self) -> float:
        return math.sqrt(2 * self.eta * self.gamma)


def d_phi(logits: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The discriminator logit: a scalar reduction of the decoder's low-res logits.

    ``sum`` (as released) adds every pixel's logit, ``mean`` averages them, ``foreground``
    adds only the pixels currently predicted foreground (logit > 0).
    """
    if reduction == "sum":
        return logits.sum()
    if reduction == "mean":
        return logits.mean()
    if reduction == "foreground":
        return (logits * (logits.detach() > 0)).sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def drift_weight(d: float, divergence: str = "kl") -> float:
    """s(d) of the f-divergence's flow."""
    if divergence == "kl":
        return 1.0
    if divergence == "logd":
        return 1.0 / (1.0 + math.exp(min(d, 700.0)))
    if divergence == "js":
        return 1.0 / (1.0 + math.exp(min(-d, 700.0)))
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


@dataclass(frozen=True)
class StepNorms:
    """L2 norms of the two terms of one step, so notebooks can compare drift and noise."""

    drift: float
    noise: float


def paper_drift(grad: torch.Tensor, d: float, cfg: FlowConfig, eta: float | None = None) -> torch.Tensor:
    """The paper's drift eta * s(d) * clip(grad) (``eta`` overrides the config's)."""
    g = grad.clamp(-cfg.clip, cfg.clip) if cfg.clip is not None else grad
    return (cfg.eta if eta is None else eta) * drift_weight(d, cfg.divergence) * g


def unit_direction(grad: torch.Tensor, direction: str, generator: torch.Generator) -> torch.Tensor:
    """A direction of L2 norm 1: the gradient's, its sign's (what a saturated clip leaves of it), or a
    random one (a Gaussian draw, uniform on the sphere). A zero vector stays zero."""
    if direction == "gradient":
        v = grad
    elif direction == "sign":
        v = grad.sign()
    elif direction == "random":
        v = torch.randn(grad.shape, generator=generator, device=generator.device, dtype=grad.dtype).to(grad.device)
    else:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    norm = v.norm()
    return v / norm if norm > 0 else torch.zeros_like(v)


class FixedStep:
    """``step="fixed"``: the paper's drift, or a drift of L2 norm ``step_size`` along ``direction``.

    A policy's ``drift(grad, d, generator, probe)`` returns the drift of one step; ``probe(drift)``
    (for the policies that look ahead) says whether that drift would move the prompts and the d_phi
    of the candidate it would give.
    """

    probes = False

    def __init__(self, cfg: FlowConfig, embedding_norm: float):
        self.cfg, self.embedding_norm = cfg, embedding_norm

    def drift(self, grad, d, generator, probe):
        if self.cfg.step_size is None:
            return paper_drift(grad, d, self.cfg)
        return self.cfg.step_size * unit_direction(grad, self.cfg.direction, generator)


class RelativeStep(FixedStep):
    """``step="relative"``: a drift of norm ``step_size`` * ||z0||, whatever the gradient's scale."""

    def drift(self, grad, d, generator, probe):
        return self.cfg.step_size * self.embedding_norm * unit_direction(grad, self.cfg.direction, generator)


class BacktrackStep(FixedStep):
    """``step="backtrack"``: from a drift of norm ``step_size`` * ||z0||, halve until the step moves the
    prompts to a candidate of higher d_phi; no step if none of :data:`BACKTRACK_TRIES` does."""

    probes = True

    def drift(self, grad, d, generator, probe):
        direction = unit_direction(grad, self.cfg.direction, generator)
        norm = self.cfg.step_size * self.embedding_norm
        for _ in range(BACKTRACK_TRIES):
            moved, d_next = probe(norm * direction)
            if moved and d_next > d:
                return norm * direction
            norm /= 2
        return torch.zeros_like(grad)


class GrowStep(FixedStep):
    """``step="grow"``: the paper's drift with an eta multiplied by ``step_size`` after every step that
    leaves the prompts where they were; the first step that moves them without raising d_phi is not
    taken, and the flow stops there."""

    probes = True

    def __init__(self, cfg: FlowConfig, embedding_norm: float):
        super().__init__(cfg, embedding_norm)
        self.eta, self.stopped = cfg.eta, False

    def drift(self, grad, d, generator, probe):
        if self.stopped:
            return torch.zeros_like(grad)
        drift = paper_drift(grad, d, self.cfg, self.eta)
        moved, d_next = probe(drift)
        if not moved:
            self.eta *= self.cfg.step_size
        elif d_next <= d:
            self.stopped = True
            return torch.zeros_like(grad)
        return drift


POLICIES = {"fixed": FixedStep, "relative": RelativeStep, "backtrack": BacktrackStep, "grow": GrowStep}


def make_policy(cfg: FlowConfig, embedding_norm: float) -> FixedStep:
    """The step-size policy of ``cfg`` for one trajectory (``grow`` keeps state across its steps)."""
    return POLICIES[cfg.step](cfg, embedding_norm)


def flow_step(delta: torch.Tensor, grad: torch.Tensor, d: float, cfg: FlowConfig, generator: torch.Generator,
              policy: FixedStep | None = None, probe=None) -> tuple[torch.Tensor, StepNorms]:
    """One Euler-Maruyama step: returns the new displacement of the embedding and the step's norms.

    ``policy`` (from :func:`make_policy`) sizes the drift; ``probe(delta)`` tells a looking-ahead
    policy what a displacement would give (see :class:`FixedStep`). The noise is drawn first, so a
    probed step includes it.
    """
    if not torch.isfinite(grad).all():
        raise FloatingPointError("the gradient of d_phi is not finite (NaN or inf); lower eta or turn clipping on")
    if policy is None:
        if cfg.step != "fixed":
            raise ValueError(f"step {cfg.step!r} needs its policy: flow_step(..., policy=make_policy(cfg, ||z0||))")
        policy = FixedStep(cfg, math.nan)
    if policy.probes and probe is None:
        raise ValueError(f"step {cfg.step!r} looks ahead: flow_step needs probe=")
    xi = torch.randn(grad.shape, generator=generator, device=generator.device, dtype=grad.dtype).to(grad.device)
    noise = cfg.noise_std * xi
    if cfg.drift:
        drift = policy.drift(grad, d, generator, lambda step: probe(delta + step + noise))
    else:
        drift = torch.zeros_like(grad)
    return delta + drift + noise, StepNorms(float(drift.norm()), float(noise.norm()))
