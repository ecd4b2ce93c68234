"""PR-MaGIC's step on Matcher: moving the SAM-space step z_t - z0 into the matching features.

The flow moves SAM's embedding, but Matcher matches with other features (DINOv2 tokens on
official SAM). The step has to be carried over; it is added to the query's matching tokens
before they are L2-normalised and matched. Two ways, chosen by name:

- ``released`` (:class:`ReleasedStep`), the PR-MaGIC release's heuristic: bilinear resize of
  the step to the token grid (64x64 -> 37x37) and zero channel padding (256 -> 1024). It puts
  SAM channel c onto DINOv2 channel c, two unrelated coordinates, and leaves 768 channels
  untouched: a perturbation of the tokens that carries no meaning of the step's direction.
- ``transport`` (:class:`TransportStep`): a least-squares linear map W from SAM features to
  matching features, fitted on the query image itself (SAM's grid aligned to the token grid,
  both centred, so W is the linear part of the best affine map). If the tokens were an affine
  function of SAM's features, t = z W + b, a step dz of the embedding moves the tokens by
  exactly dz W; W is the first-order transport of the step, the best one a linear map fitted
  on this image can give. Its limits: the relation is far from linear, and 37x37 = 1369
  positions fit 256 x 1024 weights (minimum-norm solution), so W is a smoothed estimate.

With SAM-Tiny the matching features are the SAM features themselves (same grid, same
channels): the released map is the identity, the fitted W is the identity too, and both
variants are the step itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .grid import TokenGrid

VARIANTS = ("released", "transport")


def check_variant(variant: str, method: str = "Matcher") -> str:
    if variant not in VARIANTS:
        raise ValueError(f"{method} variant must be one of {VARIANTS}, got {variant!r}")
    return variant


@dataclass(frozen=True)
class ReleasedStep:
    """Resize to ``grid`` (h, w), zero-pad the channels up to ``channels``."""

    channels: int
    grid: tuple

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        """(C_match, h, w) from a SAM-space step (1, C_sam, h', w')."""
        sam_channels = step.shape[1]
        if sam_channels > self.channels:
            raise ValueError(f"a {sam_channels}-channel step does not fit {self.channels} matching channels")
        resized = F.interpolate(step, self.grid, mode="bilinear", align_corners=False)[0]
        return F.pad(resized, (0, 0, 0, 0, 0, self.channels - sam_channels))


@dataclass(frozen=True)
class TransportStep:
    """The step aligned to the token grid, pushed through ``weights`` (C_sam, C_match)."""

    weights: torch.Tensor
    align: object  # SAM-grid map (1, C, h', w') -> token-grid map (C, h, w)

    @classmethod
    def fit(cls, sam_features: torch.Tensor, tokens: TokenGrid) -> "TransportStep":
        """Least squares on the query: SAM features (1, C_sam, h', w') against ``tokens`` at the same positions."""
        align = tokens.frame.from_sam_grid
        x = align(sam_features).flatten(1).T.double().cpu()
        y = tokens.tokens.flatten(1).T.double().cpu()
        weights = torch.linalg.pinv(x - x.mean(0)) @ (y - y.mean(0))
        return cls(weights.to(sam_features.device, torch.float32), align)

    def __call__(self, step: torch.Tensor) -> torch.Tensor:
        return torch.einsum("chw,cd->dhw", self.align(step), self.weights)
