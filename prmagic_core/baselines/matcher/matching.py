"""Matcher's bidirectional patch matching (Hungarian assignment both ways).

Forward: every support-foreground cell is assigned one query cell, maximising the summed
cosine similarity (one-to-one). Reverse: the matched query cells are assigned back to ALL
support cells; a pair survives when its query cell's reverse match lands in the support
foreground (when none would survive, all are kept). Above 40 pairs only the more similar
half is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

KEEP_ALL_UP_TO = 40


@dataclass(frozen=True)
class Matches:
    """Matched pairs, most similar first: query cell, support cell (both row indices of the
    feature matrices given), and their cosine similarity."""

    query: np.ndarray
    support: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.query)


def bidirectional_match(support: torch.Tensor, foreground: np.ndarray, query: torch.Tensor) -> Matches:
    """Match L2-normalised support features (Ns, C), of which ``foreground`` (Ns,) bool marks the
    object, to L2-normalised query features (Nq, C)."""
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.shape != (len(support),):
        raise ValueError(f"foreground has shape {foreground.shape}, expected ({len(support)},)")
    if not foreground.any():
        raise ValueError("no support foreground cell to match")
    similarity = (support @ query.T).double().cpu().numpy()  # (Ns, Nq)
    object_rows = np.flatnonzero(foreground)
    rows, cols = linear_sum_assignment(similarity[object_rows], maximize=True)
    support_cells, query_cells = object_rows[rows], cols
    scores = similarity[support_cells, query_cells]

    back_rows, back_cols = linear_sum_assignment(similarity[:, query_cells].T, maximize=True)
    returns_to_object = np.zeros(len(query_cells), dtype=bool)
    returns_to_object[back_rows] = foreground[back_cols]
    if returns_to_object.any():
        support_cells, query_cells, scores = (a[returns_to_object] for a in (support_cells, query_cells, scores))

    order = np.argsort(-scores, kind="stable")
    if len(order) > KEEP_ALL_UP_TO:
        order = order[: len(order) // 2]
    return Matches(query_cells[order], support_cells[order], scores[order])
