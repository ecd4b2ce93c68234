"""Discriminator gradient flow on the query embedding (one Euler-Maruyama step).

The flow minimises KL(mu || rho) - gamma * H(rho) for the embedding distribution rho; with
a discriminator logit d_phi the density ratio is exp(-d_phi), and the SDE discretises to

    delta += eta * s(d) * clip(grad d_phi) + sqrt(2 * eta * gamma) * xi,   xi ~ N(0, I)

where s is the drift weight of the f-divergence (DGflow, Ansari et al. 2021): 1 for KL,
1 / (1 + e^d) for logD, 1 / (1 + e^-d) for JS. SAM's mask decoder plays the discriminator:
d_phi is a reduction of its low-res pre-sigmoid logits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

DIVERGENCES = ("kl", "logd", "js")
REDUCTIONS = ("sum", "mean", "foreground")
GRAD_AT = ("z0", "zt")


@dataclass(frozen=True)
class FlowConfig:
    """Settings of the flow. Defaults are the release's semantic-segmentation values.

    ``grad_at="z0"`` evaluates the gradient at the original embedding with the current
    prompts (as released); ``"zt"`` at the moved embedding (as the paper's equation reads).
    ``drift=False`` zeroes the gradient term (the noise-only ablation); ``gamma=0`` is drift only.
    """

    eta: float = 1e-3
    gamma: float = 0.1
    clip: float | None = 0.1
    divergence: str = "kl"
    reduction: str = "sum"
    grad_at: str = "z0"
    drift: bool = True

    def __post_init__(self):
        if self.eta < 0 or self.gamma < 0:
            raise ValueError(f"eta and gamma must be >= 0, got eta={self.eta}, gamma={self.gamma}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive or None (off), got {self.clip}")
        for value, allowed, name in ((self.divergence, DIVERGENCES, "divergence"),
                                     (self.reduction, REDUCTIONS, "reduction"), (self.grad_at, GRAD_AT, "grad_at")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

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


def flow_step(delta: torch.Tensor, grad: torch.Tensor, d: float, cfg: FlowConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, StepNorms]:
    """One Euler-Maruyama step: returns the new displacement of the embedding and the step's norms."""
    if not torch.isfinite(grad).all():
        raise FloatingPointError("the gradient of d_phi is not finite (NaN or inf); lower eta or turn clipping on")
    g = grad.clamp(-cfg.clip, cfg.clip) if cfg.clip is not None else grad
    drift = cfg.eta * drift_weight(d, cfg.divergence) * g if cfg.drift else torch.zeros_like(g)
    xi = torch.randn(grad.shape, generator=generator, device=generator.device, dtype=grad.dtype).to(grad.device)
    noise = cfg.noise_std * xi
    return delta + drift + noise, StepNorms(float(drift.norm()), float(noise.norm()))
