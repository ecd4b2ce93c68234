"""Choosing the final mask among the candidates of a trajectory.

Top-1 similarity selectors represent the masked query object of every candidate and the
support object the same way, and pick the candidate whose representation is most similar
(cosine) to the support's; ties go to the earliest step.

- ``masked-image`` (as released): zero the pixels outside the mask, re-encode the whole
  image, average the embedding over all positions. An empty mask re-encodes the image.
- ``crop-pool`` (as the paper describes): crop the image to the mask's box, re-encode the
  crop, average its embedding over the mask.
- ``pooled`` (no extra encoder pass): average the original query embedding z0 over the mask
  and compare with the support embedding averaged over the support mask.

A baseline may hand the selector more than the candidate (:class:`SelectorEvidence`): the
mask to encode (PerSAM-F's release encodes call 1's mask, not the candidate), SAM's IoU
prediction and margin logits, for the release's score cos + alpha_s * IoU + beta_s * margin
(margin = mean sigmoid inside the encoded mask - mean outside; 0 when either side is empty).

The oracle picks the candidate of highest IoU with the ground truth (an upper bound, "O").
Identical masks give identical images, which the encoder's content cache encodes once;
the re-encodings of all candidates go to the encoder as one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .masks import box_of, iou
from .models.encoding import Encoded, Encoder, to_grid, to_image_frame

SELECTORS = ("masked-image", "crop-pool", "pooled")


@dataclass(frozen=True)
class SelectorEvidence:
    """What a decode hands the selector besides its candidate: the mask to encode instead (None:
    the candidate), SAM's IoU prediction, and low-res logits (h', w') for the margin (None: 0)."""

    mask: np.ndarray | None = None
    iou_prediction: float | None = None
    margin_logits: torch.Tensor | None = None


def margin(logits: torch.Tensor, mask: np.ndarray, query: Encoded) -> float:
    """Mean sigmoid of ``logits`` (in the image frame) inside ``mask`` minus outside; 0 if either is empty."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return 0.0
    probability = torch.sigmoid(to_image_frame(logits.detach(), query))
    inside = torch.as_tensor(mask, device=probability.device)
    return float(probability[inside].mean() - probability[~inside].mean())


def _extra_terms(evidence, query: Encoded, masks, alpha_s: float, beta_s: float) -> list:
    """alpha_s * IoU prediction + beta_s * margin per candidate (all 0 when both weights are 0)."""
    terms = []
    for item, mask in zip(evidence, masks):
        term = 0.0
        if alpha_s:
            if item is None or item.iou_prediction is None:
                raise ValueError("alpha_s > 0 needs the baseline's IoU prediction, which this baseline does not give")
            term += alpha_s * item.iou_prediction
        if beta_s and item is not None and item.margin_logits is not None:
            term += beta_s * margin(item.margin_logits, mask, query)
        terms.append(term)
    return terms


@dataclass(frozen=True)
class Selection:
    index: int
    scores: tuple


def _first_best(scores) -> int:
    return int(np.argmax(np.asarray(scores)))


def _masked_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image if not mask.any() else image * mask[..., None].astype(np.uint8)


def _crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not mask.any():
        return image, np.ones(mask.shape, dtype=bool)
    x1, y1, x2, y2 = box_of(mask).astype(int)
    return np.ascontiguousarray(image[y1 : y2 + 1, x1 : x2 + 1]), mask[y1 : y2 + 1, x1 : x2 + 1]


def _pool(encoded: Encoded, mask: np.ndarray | None, embedding: torch.Tensor | None = None) -> torch.Tensor:
    """L2-normalised average of an embedding over a mask's cells (all cells when mask is None)."""
    z = (encoded.embedding if embedding is None else embedding)[0]
    if mask is None:
        vector = z.mean(dim=(1, 2))
    else:
        weight = to_grid(mask, encoded)
        if weight.sum() <= 0:
            vector = z.mean(dim=(1, 2))
        else:
            vector = (z * weight).sum(dim=(1, 2)) / weight.sum()
    return F.normalize(vector, dim=0)


def _representations(name: str, encoder: Encoder, images, masks, pooled_over: Encoded | None = None) -> list:
    """One vector per (image, mask); ``pooled_over`` gives the embedding for the ``pooled`` selector."""
    if name == "masked-image":
        encodings = encoder.encode_many([_masked_image(im, m) for im, m in zip(images, masks)])
        return [_pool(e, None) for e in encodings]
    if name == "crop-pool":
        crops = [_crop(im, m) for im, m in zip(images, masks)]
        encodings = encoder.encode_many([c[0] for c in crops])
        return [_pool(e, c[1]) for e, c in zip(encodings, crops)]
    if name == "pooled":
        encodings = [pooled_over] * len(masks) if pooled_over is not None else encoder.encode_many(list(images))
        return [_pool(e, m) for e, m in zip(encodings, masks)]
    raise ValueError(f"selector must be one of {SELECTORS}, got {name!r}")


def support_representation(name: str, encoder: Encoder, support_images, support_masks) -> torch.Tensor:
    """The support object's vector (k shots averaged, then normalised)."""
    vectors = _representations(name, encoder, support_images, support_masks)
    return F.normalize(torch.stack(vectors).mean(dim=0), dim=0)


def select(name: str, candidates, encoder: Encoder, query: Encoded, support_images, support_masks, *,
           evidence=None, alpha_s: float = 0.0, beta_s: float = 0.0) -> Selection:
    """Top-1 similarity selection among ``candidates`` (masks on the query image).

    ``evidence`` (one :class:`SelectorEvidence` or None per candidate) swaps the mask that is
    encoded and feeds the ``alpha_s`` / ``beta_s`` terms. ``encoder`` is any object whose
    ``encode_many`` gives embeddings (1, C, h, w) (Matcher's selector encodes with its matching encoder).
    """
    evidence = list(evidence) if evidence is not None else [None] * len(candidates)
    masks = [c if e is None or e.mask is None else e.mask for c, e in zip(candidates, evidence, strict=True)]
    support = support_representation(name, encoder, support_images, support_masks)
    vectors = _representations(name, encoder, [query.image] * len(masks), masks, pooled_over=query)
    extra = _extra_terms(evidence, query, masks, alpha_s, beta_s)
    scores = tuple(float(torch.dot(v, support)) + term for v, term in zip(vectors, extra))
    return Selection(_first_best(scores), scores)


def oracle(candidates, truth: np.ndarray) -> Selection:
    """The candidate of highest IoU with the ground truth; scores are the IoUs."""
    scores = tuple(iou(c, truth) for c in candidates)
    return Selection(_first_best(scores), scores)
