"""GF-SAM's priors: where the query looks like the support's object, and where like its background.

All maps live on the matching features' grid (one value per cell, row-major). Features are
compared by cosine after GF-SAM's own normalisation (:func:`normalised_channels`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6
# The release fills an all-empty support with a 14 x 14 square at the centre of its 1024 x 1024 mask.
FALLBACK_SQUARE = 14 / 1024


def normalised_channels(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(n, C) features with each channel scaled to unit L2 norm over the image's valid cells.

    The release normalises its DINOv2 tokens over the token axis, not the channel axis, before
    the cosine: a per-image, per-channel rescaling that changes which channels dominate it.
    """
    norms = features[valid].norm(dim=0).clamp_min(EPS)
    return features / norms


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n_a, n_b) cosine similarities of the rows of ``a`` and ``b``."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def prior(query: torch.Tensor, support: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max prior, mask-averaged prior), each (n_query,): for every query cell, the largest
    weight-scaled cosine to the support's cells, and the weight-averaged cosine.

    ``weight`` (n_support,) is the support region's coverage of each cell (0 outside it), so cells
    outside the region take part in the max with value 0, as in the release."""
    weighted = cosine(query, support) * weight[None]
    return weighted.max(dim=1).values, weighted.sum(dim=1) / (weight.sum() + EPS)


def shot_priors(query: torch.Tensor, shots) -> dict:
    """The priors GF-SAM uses, averaged over the shots: positive max and mean (support
    foreground), negative mean (support background). ``shots`` holds (features (n_s, C),
    foreground weight (n_s,), background weight (n_s,))."""
    maps = {"max_pos": [], "mean_pos": [], "mean_neg": []}
    for features, foreground, background in shots:
        high, mean = prior(query, features, foreground)
        maps["max_pos"].append(high)
        maps["mean_pos"].append(mean)
        maps["mean_neg"].append(prior(query, features, background)[1])
    return {key: torch.stack(values).mean(0) for key, values in maps.items()}


def _min_max(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    low, high = values[valid].min(), values[valid].max()
    return (values - low) / (high - low + EPS)


def filtered_cross_similarity(priors: dict, valid: torch.Tensor) -> torch.Tensor:
    """GF-SAM's point map: the product of the positive max and mean priors scaled to [0, 1],
    zeroed wherever the negative mean prior (scaled the same way) is larger, and off the image."""
    cross = _min_max(priors["mean_pos"] * priors["max_pos"], valid)
    negative = _min_max(priors["mean_neg"], valid)
    return torch.where((negative <= cross) & valid, cross, torch.zeros_like(cross))


def positive_evidence(priors: dict, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive region (n,) bool, per-cell evidence (n,)) for cluster classification: a cell is
    positive when the squared positive mean prior beats the negative mean prior times the
    positive prior's mid-range; the evidence is the difference of the two."""
    mean_pos = priors["mean_pos"]
    mid_range = (mean_pos[valid].max() + mean_pos[valid].min()) / 2
    evidence = mean_pos * mean_pos - priors["mean_neg"] * mid_range
    return (evidence > 0) & valid, evidence


def fill_empty_support(masks) -> list:
    """GF-SAM's empty-support fallback: when no support mask has any foreground, each becomes
    a centre square of 14/1024 of its sides (at least one pixel); otherwise the masks are kept."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if any(m.any() for m in masks):
        return masks
    filled = []
    for mask in masks:
        height, width = mask.shape
        square = np.zeros_like(mask)
        half_h, half_w = max(1, round(height * FALLBACK_SQUARE / 2)), max(1, round(width * FALLBACK_SQUARE / 2))
        square[height // 2 - half_h : height // 2 + half_h, width // 2 - half_w : width // 2 + half_w] = True
        filled.append(square)
    return filled
