"""GF-SAM's graph over the prompt points: which points to prompt, how their masks connect them,
which clusters are the object, which points agree with their cluster, and the final merge.

Points are cells of the matching grid; each has one single-output SAM mask. ``coverage``
arguments are masks on the grid: (masks, cells) fractions of each cell covered.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csgraph

from .priors import EPS

MAX_POINTS = 128  # the release's cap, "for efficiency"
# Labels of the point self-consistency step.
REJECTED, SELECTED, UNDECIDED = 0, 1, 2


def top_points(point_map: torch.Tensor, grid: tuple) -> np.ndarray:
    """Cells (k,) to prompt: the k highest of the filtered map, k = its mass (sum) rounded down,
    at most 128, at least 1 when the mass is positive; ordered by (column, row) as the release
    reads them off its map."""
    mass = float(point_map.sum())
    k = min(int(mass), MAX_POINTS)
    if k == 0 and mass > 0:
        k = 1
    cells = point_map.flatten().topk(k).indices.cpu().numpy()
    rows, cols = np.divmod(cells, grid[1])
    return cells[np.lexsort((rows, cols))]


def point_graph(masks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(k, k) adjacency: edge i -> j when point i's mask (k, H, W) covers point j (x, y)."""
    height, width = masks.shape[1:]
    cols = np.clip(points[:, 0].astype(int), 0, width - 1)
    rows = np.clip(points[:, 1].astype(int), 0, height - 1)
    return masks[:, rows, cols]


def weak_components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of clusters, cluster label per point): the weakly connected components of the graph."""
    return csgraph.connected_components(adjacency, directed=True, connection="weak", return_labels=True)


def classify_clusters(coverage: torch.Tensor, labels: np.ndarray, clusters: int, positive: torch.Tensor,
                      evidence: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mask growth over the positive region, per cluster: its masks in decreasing order of mean
    evidence; a mask joins the object when the part of it not yet grown covers more positive
    than non-positive cells. Returns (foreground flag per point, cluster score per point).

    A cluster's score is the margin (positive - non-positive cells) of the last mask examined, as
    in the release; it only breaks ties in :func:`merge` when no point is selected."""
    foreground = np.zeros(len(labels), dtype=bool)
    scores = np.zeros(len(labels))
    positive = positive.float()
    for cluster in range(clusters):
        members = np.flatnonzero(labels == cluster)
        masks = coverage[torch.as_tensor(members)]
        mean_evidence = (masks * evidence).sum(1) / (masks.sum(1) + EPS)
        grown = torch.zeros_like(positive)
        margin = 0.0
        for index in np.argsort(-mean_evidence.cpu().numpy(), kind="stable"):
            new = masks[index] * (1 - grown)
            margin = float((positive * new).sum() - ((1 - positive) * new).sum())
            if margin > 0:
                grown = grown + new
                foreground[members[index]] = True
        scores[members] = margin
    return foreground, scores


def point_self_consistency(features: torch.Tensor, unions: torch.Tensor, labels: np.ndarray, cells: np.ndarray,
                           grid: tuple, foreground: np.ndarray) -> np.ndarray:
    """Label each point SELECTED (consistent with its cluster and foreground), UNDECIDED (one of
    the two) or REJECTED (neither).

    A point is consistent when, among all clusters, its own has the highest similarity (its
    feature's mean cosine over the cluster's union mask ``unions`` (clusters, cells)) divided by
    the grid distance to the cluster's nearest point (1 for its own); a cluster where the
    inconsistent points outnumber the consistent ones loses all of them."""
    unit = torch.nn.functional.normalize(features[torch.as_tensor(cells)], dim=1)
    affinity = unit @ torch.nn.functional.normalize(features, dim=1).T  # (points, cells)
    similarity = (affinity @ unions.T / (unions.sum(1) + EPS)).cpu().numpy().T  # (clusters, points)
    positions = np.stack(np.divmod(cells, grid[1]), 1).astype(np.float64)
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)  # (points, points)
    nearest = np.stack([distance[:, labels == c].min(1) for c in range(len(unions))])
    nearest[nearest == 0] = 1
    consistent = np.argmax(similarity / nearest, axis=0) == labels
    for cluster in range(len(unions)):
        members = labels == cluster
        if 2 * consistent[members].sum() < members.sum():
            consistent[members] = False
    return np.where(consistent & foreground, SELECTED, np.where(consistent | foreground, UNDECIDED, REJECTED))


def merge(point_labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the points whose masks make the final mask: every SELECTED point; if there is
    none, the single UNDECIDED point of highest cluster score (the release's argmax over scores
    zeroed elsewhere, so a point of score 0 when all are negative); none without points."""
    selected = np.flatnonzero(point_labels == SELECTED)
    if len(selected) or not len(point_labels):
        return selected
    return np.array([int(np.argmax(np.where(point_labels == UNDECIDED, scores, 0.0)))])
