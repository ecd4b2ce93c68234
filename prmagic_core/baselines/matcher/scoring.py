"""Matcher's candidate metrics, filters and merge, on plain arrays.

For a candidate mask m, with P the matched query points and the query cells under m:
- emd = 1 - EMD(support-foreground cells, query cells under m), uniform masses, cost
  (1 - cosine) / 2 in [0, 1]: how well the masked region's features transport onto the object's;
- purity = |P inside m| / (cells under m): how densely the matches fill the mask;
- coverage = |P inside m| / |P|: how much of the matched evidence the mask explains.
score = alpha * emd + beta * purity * coverage ** exp. A cell is under m when m covers any of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot

from .presets import MatcherPreset


def emd_score(cost: np.ndarray, inside: np.ndarray) -> float:
    """1 - EMD between the support-foreground cells (rows of ``cost``) and the query cells
    where ``inside``; an empty candidate gets 0, the worst score."""
    inside = np.asarray(inside, dtype=bool)
    if not inside.any():
        return 0.0
    sub = np.ascontiguousarray(cost[:, inside], dtype=np.float64)
    rows, cols = sub.shape
    return 1.0 - float(ot.emd2(np.full(rows, 1.0 / rows), np.full(cols, 1.0 / cols), sub))


def points_inside(mask: np.ndarray, xy: np.ndarray) -> int:
    """How many (x, y) points fall on foreground pixels of ``mask``."""
    height, width = mask.shape
    cols = np.clip(np.asarray(xy)[:, 0].astype(int), 0, width - 1)
    rows = np.clip(np.asarray(xy)[:, 1].astype(int), 0, height - 1)
    return int(mask[rows, cols].sum())


def purity(inside_points: int, inside_cells: int) -> float:
    return inside_points / max(inside_cells, 1)


def coverage(inside_points: int, all_points: int) -> float:
    return inside_points / all_points


@dataclass(frozen=True)
class Metrics:
    """Per-candidate metrics, arrays (K,)."""

    emd: np.ndarray
    purity: np.ndarray
    coverage: np.ndarray

    def score(self, preset: MatcherPreset) -> np.ndarray:
        return preset.alpha * self.emd + preset.beta * self.purity * self.coverage ** preset.exp


def passing_sam_filters(predicted_iou: np.ndarray, stability: np.ndarray, preset: MatcherPreset) -> np.ndarray:
    """Indices of the candidates SAM's own quality filters keep (a threshold of 0 is off); all of
    them when none would pass."""
    keep = np.ones(len(predicted_iou), dtype=bool)
    if preset.min_predicted_iou > 0:
        keep &= predicted_iou > preset.min_predicted_iou
    if preset.min_stability > 0:
        keep &= stability >= preset.min_stability
    return np.flatnonzero(keep) if keep.any() else np.arange(len(keep))


def passing_metric_filters(metrics: Metrics, preset: MatcherPreset) -> np.ndarray:
    """Indices of the candidates kept by the coverage, emd and purity filters, in that order; each
    threshold is lowered to the best remaining value, so a filter never empties the pool."""
    keep = np.arange(len(metrics.emd))
    for values, threshold in ((metrics.coverage, preset.min_coverage), (metrics.emd, preset.min_emd),
                              (metrics.purity, preset.min_purity)):
        if threshold > 0:
            kept = values[keep]
            keep = keep[kept >= min(threshold, kept.max())]
    return keep


def merge_choice(scores: np.ndarray, preset: MatcherPreset) -> np.ndarray:
    """Indices into ``scores`` of the candidates whose union is Matcher's mask, best first.

    ``topk``: the ``merge_count`` best whose score relative to the best exceeds
    ``topk_relative_score``. ``score_filter``: by distance 1 - score, those below
    ``max_distance`` and below ``max_relative_distance`` after Matcher's scaling
    (d - min d) / (max d + 1e-6), at most ``merge_count``. The best candidate always merges
    (Matcher would return an empty mask when a non-positive best fails its own threshold).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if preset.merge == "score_filter":
        order = np.argsort(1 - scores, kind="stable")
        distances = (1 - scores)[order]
        scaled = (distances - distances.min()) / (distances.max() + 1e-6)
        chosen = (distances < preset.max_distance) & (scaled < preset.max_relative_distance)
    else:
        order = np.argsort(-scores, kind="stable")[: preset.merge_count]
        best = scores[order[0]]
        chosen = scores[order] / best > preset.topk_relative_score if best > 0 else np.zeros(len(order), dtype=bool)
    chosen[0] = True
    return order[chosen][: preset.merge_count]
