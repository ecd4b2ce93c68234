"""How semantic is a DINO-Tiny? Two numbers on held-out episodes of a fold's NOVEL classes.

- ``novel_class_accuracy``: nearest-neighbour classification of mask-pooled features. The
  query object's feature (its patch tokens averaged with the mask's coverage of each patch
  as weight) is compared by cosine with the support objects of 6 candidate classes: the
  episode's own support and the supports of 5 other novel classes (from other episodes of
  the same draw); correct when its own support is the nearest.
  Per class, ``class_accuracy`` (fraction right) and ``confusions`` ("true -> picked": count of
  the wrong picks) say where it fails.
- ``patch_foreground_match``: over all query patches at least half covered by the query
  mask, the fraction whose most similar support patch (cosine of the L2-normalised tokens)
  is at least half covered by the support mask.

Both use the tokens Matcher matches with (:func:`.dinov2.patch_tokens`, the last block's); ``block``
reads an earlier block's instead, to see where in the network the features stop generalising.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..data import shapeworld
from .dinov2 import patch_tokens

EVAL_SEED = 1000
CANDIDATES = 6


def patch_coverage(mask: np.ndarray, grid: tuple) -> torch.Tensor:
    return F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], grid, mode="area")[0, 0]


def _features(model, image: np.ndarray, mask: np.ndarray, block: int):
    """(h*w, C) tokens and (h*w,) mask coverage of one image."""
    tokens = patch_tokens(model, image, block).cpu()
    return tokens.flatten(1).T, patch_coverage(mask, tuple(tokens.shape[-2:])).flatten()


def _pooled(tokens: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    return F.normalize((coverage[:, None] * tokens).sum(0) / coverage.sum(), dim=0)


def evaluate_dino_tiny(model, episodes: int = 300, fold: int = 0, seed: int = EVAL_SEED, size: int = 512,
                       progress: bool = False, block: int = -1) -> dict:
    from tqdm.auto import tqdm

    depth = len(model.blocks)
    if not -depth <= block < depth:
        raise ValueError(f"block {block} does not exist: this model has {depth} blocks (0..{depth - 1}, or -1..-{depth})")
    draw = shapeworld.episodes(episodes, seed=seed, kind="object", size=size, fold=fold)
    queries, supports = [], []
    for ep in tqdm(draw, disable=not progress, desc="dino-tiny features"):
        queries.append(_features(model, ep.query_image, ep.query_mask, block))
        supports.append(_features(model, ep.support_images[0], ep.support_masks[0], block))
    support_pooled = torch.stack([_pooled(*s) for s in supports])
    classes = np.array([ep.class_name for ep in draw])
    rng = np.random.default_rng([seed, fold, episodes])
    picks, hits, patches = [], 0, 0
    for i, (query_tokens, query_cover) in enumerate(queries):
        others = [c for c in np.unique(classes) if c != classes[i]]
        picked = rng.choice(others, size=min(CANDIDATES - 1, len(others)), replace=False)
        candidates = [i] + [int(rng.choice(np.flatnonzero(classes == c))) for c in picked]
        scores = support_pooled[candidates] @ _pooled(query_tokens, query_cover)
        picks.append(str(classes[candidates[int(scores.argmax())]]))
        support_tokens, support_cover = supports[i]
        foreground = query_cover >= 0.5
        similarity = F.normalize(query_tokens[foreground], dim=1) @ F.normalize(support_tokens, dim=1).T
        hits += int((support_cover[similarity.argmax(1)] >= 0.5).sum())
        patches += int(foreground.sum())
    right = np.array(picks) == classes
    confusions = Counter(f"{true} -> {pick}" for true, pick in zip(classes, picks) if true != pick)
    return dict(novel_class_accuracy=round(float(right.mean()), 4),
                patch_foreground_match=round(hits / max(patches, 1), 4),
                class_accuracy={str(c): round(float(right[classes == c].mean()), 4) for c in np.unique(classes)},
                confusions=dict(confusions.most_common()),
                episodes=episodes, fold=fold, seed=seed, image_size=size, candidates=CANDIDATES, block=block,
                novel_classes=list(shapeworld.novel_classes(fold)))
