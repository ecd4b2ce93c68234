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

The selector family (:data:`FAMILY`, :func:`choose`): every selector is a rule over the
candidates' signals (:mod:`prmagic_core.signals`), so one interface serves a live trajectory
(:func:`choose`: trajectory + the episode's encodings -> index, scores, encoder passes) and a
table's recorded signals (:func:`apply`, the selector study scores every rule offline):

- the release's: ``masked-image`` (score cos + alpha_s * IoU prediction + beta_s * margin; the
  launchers' 0 / 0), ``masked-image-iou-margin`` (the code's defaults 0.25 / 0.10), ``crop-pool``,
  ``pooled``;
- the public fork's (endeavor1233/Guarded-PR-MaGIC, ``multi_criteria_selector.py``), over the
  criteria (masked-image cosine, IoU prediction, stability, margin): ``guarded`` (the
  0.25 / 0.10 pick, kept only when its cosine and margin are no worse than candidate 0's),
  ``rank-sum`` (best mean rank), ``median-rank`` (best median rank), ``consensus`` (a candidate
  first on >= 3 criteria, else the median rank); each of the last three falls back to
  candidate 0 unless its pick ranks no worse than candidate 0 on at least two criteria. Ranks
  as the fork: 1 - position / (K - 1) in a stable descending sort;
- ours, aimed at masks that merge the target with a distractor or pick the wrong instance,
  all at zero extra passes: ``contrastive``, ``centred``, ``prototype-iou``, ``purity``, ``vote``
  (argmax of the signal of that name); a candidate replaces candidate 0 only when it beats it by more
  than ``delta`` (0 by default: plain argmax);
- references no method can use: ``random`` (uniform, from ``seed``), ``fixed-step`` (``step``),
  ``oracle`` (the ground truth).
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
    """Mean sigmoid of low-res ``logits`` (brought to the image frame) inside ``mask`` minus outside;
    0 if either is empty."""
    return image_margin(to_image_frame(logits.detach(), query), mask)


def image_margin(logits: torch.Tensor, mask: np.ndarray) -> float:
    """:func:`margin` of logits already in the image frame (H, W)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return 0.0
    probability = torch.sigmoid(logits.detach())
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
    passes: int = 0  # encoder passes the choice cost beyond the baseline's own (a fresh encoder)
    fallback: bool = False  # the rule's own pick was overruled for candidate 0


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


# ---------------------------------------------------------------- the family: rules over signals

@dataclass(frozen=True)
class Rule:
    """A selector: the signals it reads, its constants' defaults, and which family it belongs to."""

    signals: tuple
    constants: dict
    family: str  # "release", "fork", "ours" or "reference"


FORK_CRITERIA = ("masked-image", "iou_prediction", "stability", "margin")
OWN_SIGNALS = {"contrastive": "contrastive", "centred": "centred", "prototype-iou": "prototype_iou", "purity": "purity",
               "vote": "vote"}
FAMILY = {
    "masked-image": Rule(("masked-image", "iou_prediction", "margin"), {"alpha_s": 0.0, "beta_s": 0.0}, "release"),
    "masked-image-iou-margin": Rule(("masked-image", "iou_prediction", "margin"), {"alpha_s": 0.25, "beta_s": 0.10},
                                    "release"),
    "crop-pool": Rule(("crop-pool",), {}, "release"),
    "pooled": Rule(("pooled",), {}, "release"),
    "guarded": Rule(FORK_CRITERIA, {"alpha_s": 0.25, "beta_s": 0.10}, "fork"),
    "rank-sum": Rule(FORK_CRITERIA, {}, "fork"),
    "median-rank": Rule(FORK_CRITERIA, {}, "fork"),
    "consensus": Rule(FORK_CRITERIA, {}, "fork"),
    **{name: Rule((signal,), {"delta": 0.0}, "ours") for name, signal in OWN_SIGNALS.items()},
    "random": Rule(("step",), {"seed": 0}, "reference"),
    "fixed-step": Rule(("step",), {"step": 1}, "reference"),
    "oracle": Rule(("iou",), {}, "reference"),
}


def fork_ranks(signals: dict) -> np.ndarray:
    """(criteria, K) ranks in [0, 1], 1 = best; ties broken by order (earlier ranks higher), as the fork."""
    rows = []
    for name in FORK_CRITERIA:
        values = np.nan_to_num(np.asarray(signals[name], dtype=float), nan=-1e9)
        order = np.argsort(-values, kind="stable")
        position = np.empty(len(values))
        position[order] = np.arange(len(values))
        rows.append(1 - position / (len(values) - 1) if len(values) > 1 else np.ones(1))
    return np.stack(rows)


def _weighted(signals: dict, alpha_s: float, beta_s: float) -> np.ndarray:
    confidence = np.nan_to_num(np.asarray(signals["iou_prediction"], dtype=float))
    return np.asarray(signals["masked-image"]) + alpha_s * confidence + beta_s * np.asarray(signals["margin"])


def _fork_choice(name: str, signals: dict) -> tuple:
    """(scores, pick) of ``rank-sum``, ``median-rank`` or ``consensus``, before the fallback."""
    ranks = fork_ranks(signals)
    mean, median = ranks.mean(axis=0), np.median(ranks, axis=0)
    if name == "rank-sum":
        return mean, _first_best(mean)
    if name == "median-rank":
        return median, _first_best(median)
    votes = np.bincount(np.argmax(ranks, axis=1), minlength=ranks.shape[1])  # first places per candidate
    return mean, _first_best(votes) if votes.max() >= 3 else _first_best(median)


def _rule_choice(name: str, signals: dict, constants: dict) -> tuple:
    """(scores, index, fallback) of selector ``name`` on one trajectory's signals."""
    family = FAMILY[name].family
    if name in ("masked-image", "masked-image-iou-margin", "guarded"):
        scores = _weighted(signals, constants["alpha_s"], constants["beta_s"])
        pick = _first_best(scores)
        if name == "guarded" and pick != 0:
            similarity, margin = np.asarray(signals["masked-image"]), np.asarray(signals["margin"])
            if similarity[pick] < similarity[0] or margin[pick] < margin[0]:
                return scores, 0, True
        return scores, pick, False
    if family == "fork":
        scores, pick = _fork_choice(name, signals)
        ranks = fork_ranks(signals)
        if pick != 0 and int(np.sum(ranks[:, pick] >= ranks[:, 0])) < 2:
            return scores, 0, True
        return scores, pick, False
    if family == "ours":
        scores = np.asarray(signals[OWN_SIGNALS[name]], dtype=float)
        pick = _first_best(scores)
        if pick != 0 and scores[pick] - scores[0] <= constants["delta"]:
            return scores, 0, True
        return scores, pick, False
    if name == "random":
        scores = np.random.default_rng(constants["seed"]).random(len(signals["step"]))
        return scores, _first_best(scores), False
    if name == "fixed-step":
        scores = (np.asarray(signals["step"]) == min(constants["step"], len(signals["step"]) - 1)).astype(float)
        return scores, _first_best(scores), False
    if name in ("crop-pool", "pooled", "oracle"):
        scores = np.asarray(signals[FAMILY[name].signals[0]], dtype=float)
        return scores, _first_best(scores), False
    raise ValueError(f"selector must be one of {sorted(FAMILY)}, got {name!r}")


def rule(name: str) -> Rule:
    if name not in FAMILY:
        raise ValueError(f"selector must be one of {sorted(FAMILY)}, got {name!r}")
    return FAMILY[name]


def apply(name: str, signals: dict, passes: int = 0, **constants) -> Selection:
    """Selector ``name`` on one trajectory's recorded ``signals`` ({signal: (K,) array}; ``step`` is
    0..K-1 and ``iou`` the ground truth's, for the references); ``constants`` override the rule's
    defaults; ``passes``: what its signals cost (:func:`~prmagic_core.signals.extra_passes`)."""
    spec = rule(name)
    unknown = set(constants) - set(spec.constants)
    if unknown:
        raise ValueError(f"selector {name!r} has no constant(s) {sorted(unknown)}; it has {sorted(spec.constants)}")
    missing = [s for s in spec.signals if s not in signals]
    if missing:
        raise ValueError(f"selector {name!r} needs the signal(s) {missing}")
    scores, index, fallback = _rule_choice(name, signals, {**spec.constants, **constants})
    return Selection(int(index), tuple(float(x) for x in scores), passes, bool(fallback))


def choose(name: str, trajectory, encoder: Encoder, query: Encoded, support_images, support_masks,
           truth: np.ndarray | None = None, **constants) -> Selection:
    """Selector ``name`` of :data:`FAMILY` on a live trajectory: the signals it reads, computed on the
    episode's encodings, then its rule; ``truth`` (the query's mask) only for the ``oracle`` reference."""
    from .signals import candidate_signals, distinct_reencoded, extra_passes

    spec = rule(name)
    candidates = trajectory.candidates
    wanted = [s for s in spec.signals if s not in ("iou", "step")]
    signals = candidate_signals(wanted, trajectory, encoder, query, support_images, support_masks)
    signals["step"] = np.arange(len(candidates))
    if "iou" in spec.signals:
        if truth is None:
            raise ValueError("the oracle needs the query's ground-truth mask")
        signals["iou"] = np.array(oracle(candidates, truth).scores)
    return apply(name, signals, extra_passes(wanted, distinct_reencoded(candidates)), **constants)
