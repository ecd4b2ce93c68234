"""What a selector can know about each candidate without the ground truth: one number per
candidate and signal, larger meaning "more likely the right mask".

From the decoder and the masks alone (no encoder pass):

- ``iou_prediction``: SAM's IoU head on the candidate's output (the fork's "decoder confidence"),
  as the decode's :class:`~prmagic_core.select.SelectorEvidence` gives it (NaN without one).
- ``margin``: select.py's margin, mean sigmoid of the logits inside the mask minus outside (the
  release's beta_s term; the fork's "foreground-background separation"), on the evidence's
  margin logits and mask when the decode gives them, else on the candidate's; 0 for an empty or
  full mask, as the release.
- ``stability``: IoU with the previous candidate; 1 for candidate 0, as the fork.
- ``vote``: IoU with the pixel-majority mask of all candidates: the candidates vote on every
  pixel and the candidate nearest the consensus wins (a medoid that noise cannot pull away).

From the episode's own encodings, the query's z0 and the support's (no extra pass):

- ``pooled``: cosine between z0 averaged over the candidate and z_s averaged over the support
  mask (select.py's ``pooled`` selector).
- ``contrastive``: that cosine minus the cosine to the support's BACKGROUND (z_s averaged
  outside the support mask): a candidate that swallows a distractor or the background drifts
  towards what the support's background looks like.
- ``centred``: the ``pooled`` cosine after subtracting the episode's mean feature (all cells
  of the query and the support maps): on SAM-Tiny every object's pooled feature shares a
  large common component, which makes raw cosines all close to 1.
- ``prototype_iou``: soft IoU between the candidate's cell coverage and the cells of z0 that
  are closer to the support's foreground prototype than to its background prototype: a
  nearest-prototype segmentation of the query that the candidate should agree with.
- ``purity``: the share of the candidate's cells (weighted by coverage) in that region: a mask
  merged with a distractor or the background adds cells of the other side.

Re-encoding (the release's and the paper's representations, select.py, on the evidence's masks
as the selector encodes them): ``masked-image`` and ``crop-pool``. :func:`extra_passes` counts what they cost on a fresh encoder.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .masks import box_of, iou
from .models.encoding import Encoded, Encoder, to_grid
from .select import _pool, image_margin, margin, select

REENCODING = ("masked-image", "crop-pool")
RELEASE = REENCODING + ("pooled",)  # select.py's cosines
FEATURE = ("contrastive", "centred", "prototype_iou", "purity")
DECODER = ("iou_prediction", "margin", "stability", "vote")
SIGNALS = RELEASE + FEATURE + DECODER


def _margin(step, query: Encoded) -> float:
    """The release's margin of a refine step: on the evidence's logits and mask when the decode
    gave them, else on the candidate's own logits and mask."""
    evidence = step.evidence
    logits = step.logits if evidence is None or evidence.margin_logits is None else evidence.margin_logits
    mask = step.mask if evidence is None or evidence.mask is None else evidence.mask
    if logits.dim() == 3:  # Matcher's merged masks' image-frame logits (the release's d_phi): their max is the union's
        return image_margin(logits.max(0).values, mask)
    return margin(logits, mask, query)


def stability(candidates) -> np.ndarray:
    return np.array([1.0] + [iou(b, a) for a, b in zip(candidates, candidates[1:])])


def vote(candidates) -> np.ndarray:
    majority = np.mean(np.stack(candidates), axis=0) > 0.5
    return np.array([iou(c, majority) for c in candidates])


class EpisodeFeatures:
    """The query's z0 and the support's embeddings, with the support's prototypes: the support
    averaged inside (``foreground``) and outside (``background``) its masks, normalised per shot
    then over shots, as select.py builds the support's vector; ``mean``: the average cell of all
    the episode's maps."""

    def __init__(self, query: Encoded, supports, support_masks):
        self.query = query
        masks = [np.asarray(m, dtype=bool) for m in support_masks]
        self.mean = torch.cat([e.embedding[0].flatten(1) for e in [query, *supports]], dim=1).mean(dim=1)
        shift = self.mean[None, :, None, None]

        def prototype(masks_, shifted=False):
            vectors = [_pool(e, m, e.embedding - shift if shifted else None) for e, m in zip(supports, masks_)]
            return F.normalize(torch.stack(vectors).mean(0), dim=0)

        self.foreground = prototype(masks)
        self.background = prototype([~m for m in masks])
        self.support_centred = prototype(masks, shifted=True)

    def scores(self, name: str, candidates) -> np.ndarray:
        """One signal of :data:`FEATURE` for each candidate mask."""
        query, z = self.query, self.query.embedding
        if name == "contrastive":
            vectors = [_pool(query, c) for c in candidates]
            return np.array([float(v @ self.foreground - v @ self.background) for v in vectors])
        if name == "centred":
            centred = z - self.mean[None, :, None, None]
            return np.array([float(_pool(query, c, centred) @ self.support_centred) for c in candidates])
        if name in ("prototype_iou", "purity"):
            cells = F.normalize(z[0].flatten(1), dim=0)
            closer = (self.foreground @ cells > self.background @ cells).reshape(query.grid).float()
            region = closer * (to_grid(np.ones(query.original_size, dtype=bool), query) > 0)
            out = []
            for c in candidates:
                cover = to_grid(c, query)
                inside = torch.minimum(cover, region).sum()
                whole = torch.maximum(cover, region).sum() if name == "prototype_iou" else cover.sum()
                out.append(float(inside / whole) if whole > 0 else 0.0)
            return np.array(out)
        raise ValueError(f"no feature signal {name!r}; feature signals: {FEATURE}")


def candidate_signals(names, trajectory, encoder: Encoder, query: Encoded, support_images, support_masks) -> dict:
    """``{signal: (T + 1,) array}`` for the candidates of ``trajectory`` (steps of :mod:`refine`)."""
    unknown = [n for n in names if n not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signals {unknown}; signals: {SIGNALS}")
    candidates = [s.mask for s in trajectory.steps]
    out = {}
    features = None
    for name in names:
        if name in RELEASE:
            out[name] = np.array(select(name, candidates, encoder, query, support_images, support_masks,
                                        evidence=trajectory.evidence).scores)
        elif name in FEATURE:
            if features is None:
                features = EpisodeFeatures(query, encoder.encode_many(list(support_images)), support_masks)
            out[name] = features.scores(name, candidates)
        elif name == "iou_prediction":
            out[name] = np.array([np.nan if s.evidence is None or s.evidence.iou_prediction is None
                                  else s.evidence.iou_prediction for s in trajectory.steps])
        elif name == "margin":
            out[name] = np.array([_margin(s, query) for s in trajectory.steps])
        elif name == "stability":
            out[name] = stability(candidates)
        else:
            out[name] = vote(candidates)
    return out


def distinct_reencoded(candidates) -> dict:
    """How many distinct images each re-encoding signal must encode for ``candidates``: masked
    images of distinct masks, crops of distinct boxes, leaving out those that are the query image
    itself (an empty or full mask, a box over the whole image: the query is already encoded)."""
    masks = [np.asarray(c, dtype=bool) for c in candidates]
    kept = [m for m in masks if m.any() and not m.all()]
    boxes = {tuple(box_of(m).astype(int)) for m in kept}
    whole = (0, 0, masks[0].shape[1] - 1, masks[0].shape[0] - 1) if masks else None
    return {"masked-image": len({m.tobytes() for m in kept}), "crop-pool": len(boxes - {whole})}


def extra_passes(names, reencoded: dict) -> int:
    """Encoder passes the signals ``names`` cost one episode on a fresh encoder: per re-encoding
    signal, its distinct images (:func:`distinct_reencoded`) and the support's."""
    return sum(reencoded[name] + 1 for name in names if name in REENCODING)
