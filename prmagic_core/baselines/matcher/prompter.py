"""Matcher (Liu et al., ICLR 2024) behind PR-MaGIC's prompter interface.

Per episode (:meth:`Matcher.prepare`): matching features of the supports and the query
(:mod:`.features`), the support-foreground cells, and the step map of the chosen variant
(:mod:`.steps`). Then, for a query SAM embedding z (z0 or a refined z_t):

- ``similarity(z)``: the step z - z0 is carried into the matching features, which are
  L2-normalised and matched both ways (:mod:`.matching`); returns the cosine map of the
  query features to the support prototype (mean of the normalised foreground features), on
  the query image. The matching itself is kept for the two calls below.
- ``sample_prompts(S, generator)``: the matched points of the matching behind S (their
  k-means centres under the ``fss`` preset), and the random prompt subsets (:mod:`.sampling`).
- ``decode(z, prompts, S)``: one stock SAM decode per subset on z, Matcher's metrics, filters
  and merge (:mod:`.scoring`); returns the merged mask and the low-res logits of the
  best-scored candidate (decoded again with gradient when z requires it), whose reduction is d_phi.

The refined embedding reaches only the matching (hence the prompts and the evidence the
candidates are scored against, as when Matcher runs whole on moved tokens); SAM always
decodes from the embedding ``decode`` is given. ``timings`` accumulates the seconds spent
on features (in prepare), matching, decoding and scoring.

Where this differs from Matcher's release, and why:
- candidates come only from the matched-point subsets; the COCO/LVIS setting of the release
  also pools SAM's everything-mode masks (a 64x64 point grid) and runs box NMS (0.65) over
  all of them, which would multiply the decodes of every refinement step;
- SAM decodes the query at its own input size with prompts in original-image pixels (the
  release hands SAM the 518x518 stretched image); SAM's stability score is computed on the
  low-res logits, not on the upsampled masks;
- k-means is sklearn's k-means++ (one run, seeded by the prompt generator; the release
  loops its own until no cluster is empty, which sklearn guarantees); random subsets come
  from a numpy generator seeded the same way, not from Python's global ``random``;
- an empty support mask is an error, or (``empty_support="fallback"``, the release's) the
  grid's centre cell with a warning (the release fills a 14-px centre square of its 518-px
  input: the centre token of 37 x 37); an empty candidate gets emd score 0 (the release
  scores it as if it covered the whole image); the best-scored candidate always joins the
  union (see :func:`.scoring.merge_choice`);
- on SAM-Tiny the matching features are SAM-Tiny's own or DINO-Tiny's, by name (see
  :mod:`.features`) and the subsets per size are capped by the preset (:mod:`.presets`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import calculate_stability_score

from ...models import decoding
from ...models.decoding import Prompts
from ...models.encoding import Encoded, Encoder, to_image_frame
from ...models.tiny import TINY_CONFIG
from ...presets import Preset, get_preset
from ...select import SelectorEvidence
from ...timing import timed
from ..base import Baseline, EmptySupportWarning, Prompter
from .features import MatchingEncoder
from .grid import TokenGrid, centre_cell, normalised_cells
from .matching import bidirectional_match
from .presets import MatcherPreset
from .presets import get_preset as get_matcher_preset
from .sampling import kmeans_centres, prompt_subsets
from .scoring import Metrics, coverage, emd_score, merge_choice, passing_metric_filters, passing_sam_filters, \
    points_inside, purity
from .steps import ReleasedStep, TransportStep, check_variant

REMEMBERED_MATCHINGS = 4  # similarity maps whose matching stays available to sample_prompts
MASK_CHUNK = 64  # candidates brought to full resolution at once


@dataclass(frozen=True)
class Evidence:
    """What one matching leaves for scoring: the matched query points (M, 2) as (x, y) in the
    query image, and the emd cost (support-foreground cells, query cells) = (1 - cosine) / 2."""

    points: np.ndarray
    cost: np.ndarray


@dataclass(frozen=True)
class MatcherPrompts(Prompts):
    """Matcher's prompt points with the subsets decoded from them (index arrays into ``coords``),
    the box prompt every subset shares (or None), and the evidence of the matching behind them."""

    subsets: tuple = ()
    box: np.ndarray | None = None
    evidence: Evidence | None = None

    def fingerprint(self) -> bytes:
        subsets = b"|".join(np.asarray(s, dtype=np.int64).tobytes() for s in self.subsets)
        box = b"" if self.box is None else np.asarray(self.box, dtype=np.float64).tobytes()
        evidence = b"" if self.evidence is None else self.evidence.points.tobytes() + self.evidence.cost.tobytes()
        return b"#".join((super().fingerprint(), subsets, box, evidence))


class MatcherPrompter(Prompter):
    # decode() scores against the matching behind the similarity map, so decodes are shared
    # only between equal maps (the prompts' subsets follow from the map and the prompt seed).
    decode_uses_similarity = True

    def __init__(self, sam, query: Encoded, query_tokens: TokenGrid, supports: list, support_masks,
                 preset: MatcherPreset, variant: str, subsets_cap: int | None, timings: dict,
                 settings: Preset | None = None, selector_encoder=None):
        self.sam = sam
        self.query = query
        self.query_tokens = query_tokens
        self.preset = preset
        self.subsets_cap = subsets_cap
        self.timings = timings
        self.settings = get_preset(settings)
        # The encoder the masked-image selector re-encodes with: the one Matcher matches with.
        self.selector_encoder = selector_encoder
        self.z0 = query.embedding.detach()
        features, foreground = [], []
        for index, (grid, mask) in enumerate(zip(supports, support_masks, strict=True)):
            _, valid = grid.frame.centres()
            covered = grid.frame.cells(mask).cpu().numpy()[valid] > 0
            if not covered.any():
                message = f"support mask {index} is empty (no foreground on the {grid.frame.grid} token grid)"
                if self.settings.empty_support != "fallback":
                    raise ValueError(message)
                warnings.warn(f"{message}; using the centre square of the grid", EmptySupportWarning, stacklevel=2)
                covered = centre_cell(grid.frame.grid)[valid]
            features.append(normalised_cells(grid.tokens)[torch.as_tensor(valid)])
            foreground.append(covered)
        self.support = torch.cat(features)
        self.foreground = np.concatenate(foreground)
        self.object_features = self.support[torch.as_tensor(self.foreground)]
        self.prototype = F.normalize(self.object_features.mean(0), dim=0)
        self.centres, valid = query_tokens.frame.centres()
        self.valid_cells = np.flatnonzero(valid)
        if check_variant(variant) == "released":
            self.step_map = ReleasedStep(query_tokens.tokens.shape[0], query_tokens.frame.grid)
        else:
            self.step_map = TransportStep.fit(self.z0, query_tokens)
        self._matchings: list = []

    @contextmanager
    def _timed(self, key: str):
        with timed(self.timings, key, self.z0.device):
            yield

    def matching_features(self, embedding: torch.Tensor) -> torch.Tensor:
        """The query's matching features (h*w, C) with the step ``embedding`` - z0 carried in: added to
        the tokens before L2-normalising (``step_injection="raw"``), or to the normalised tokens
        and left as they are (``"normalised"``, the release's: the moved features are not unit vectors)."""
        step = self.step_map(embedding.detach() - self.z0)
        if self.settings.step_injection == "raw":
            return normalised_cells(self.query_tokens.tokens + step)
        return normalised_cells(self.query_tokens.tokens) + step.flatten(1).T

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        with self._timed("matching"):
            features = self.matching_features(embedding)
            matches = bidirectional_match(self.support, self.foreground, features[torch.as_tensor(self.valid_cells)])
            cost = ((1 - self.object_features @ features.T) / 2).cpu().numpy()
            evidence = Evidence(self.centres[self.valid_cells[matches.query]], cost)
            grid_map = (features @ self.prototype).reshape(self.query_tokens.frame.grid)
            similarity = self.query_tokens.frame.to_image(grid_map)
            self._matchings = [(similarity, evidence), *self._matchings][:REMEMBERED_MATCHINGS]
        return similarity

    def _evidence(self, similarity: torch.Tensor) -> Evidence:
        for known, evidence in self._matchings:
            if known is similarity:
                return evidence
        raise ValueError("this similarity map was not made by this prompter's similarity() (or is too old)")

    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> MatcherPrompts:
        evidence = self._evidence(similarity)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
        points = evidence.points
        if self.preset.centres is not None:
            points = kmeans_centres(points, self.preset.centres, seed)
        subsets = prompt_subsets(len(points), self.preset.subset_sizes, self.preset.draws_per_size,
                                 np.random.default_rng(seed), self.subsets_cap)
        return MatcherPrompts(points, np.ones(len(points)), tuple(subsets), self._box(evidence.points), evidence)

    def _box(self, points: np.ndarray) -> np.ndarray | None:
        """The box around all matched points (part preset), inside the image."""
        if not self.preset.box:
            return None
        height, width = self.query.original_size
        low = np.maximum(points.min(0), 0)
        high = np.minimum(points.max(0), [width - 1, height - 1])
        return np.concatenate([low, high]).astype(np.float64)

    def _decode_subset(self, embedding: torch.Tensor, prompts: MatcherPrompts, index: int) -> decoding.Decoded:
        subset = prompts.subsets[index]
        points = Prompts(prompts.coords[subset], prompts.labels[subset])
        return decoding.decode(self.sam, embedding, self.query, points, box=prompts.box,
                               multimask=self.preset.multimask)

    def _decode_subsets(self, embedding: torch.Tensor, prompts: MatcherPrompts, which=None) -> dict:
        """{subset index: its decode} for the subsets ``which`` (default: all), one decoder call per
        subset size (SAM's prompt padding makes only equal sizes batch to what one call per subset gives)."""
        by_size: dict = {}
        for index in range(len(prompts.subsets)) if which is None else sorted(set(which)):
            by_size.setdefault(len(prompts.subsets[index]), []).append(index)
        decoded = {}
        for indices in by_size.values():
            point_sets = [Prompts(prompts.coords[prompts.subsets[i]], prompts.labels[prompts.subsets[i]])
                          for i in indices]
            batch = decoding.decode_many(self.sam, embedding, self.query, point_sets, box=prompts.box,
                                         multimask=self.preset.multimask)
            for index, result in zip(indices, batch):
                decoded[index] = result
        return decoded

    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor):
        """Matcher's mask on ``embedding`` from ``prompts`` (``similarity`` is unused: the
        matching it came from travels with the prompts)."""
        if not isinstance(prompts, MatcherPrompts) or prompts.evidence is None:
            raise TypeError("Matcher decodes MatcherPrompts from its own sample_prompts()")
        with self._timed("decoding"), torch.no_grad():
            decoded = self._decode_subsets(embedding.detach(), prompts)
            logits = torch.cat([decoded[i].logits for i in range(len(decoded))])
            origin = [(i, j) for i in range(len(decoded)) for j in range(len(decoded[i].iou))]
            stability = calculate_stability_score(logits, self.sam.mask_threshold, 1.0)
            predicted_iou = torch.cat([decoded[i].iou for i in range(len(decoded))]).cpu().numpy()
            pool = passing_sam_filters(predicted_iou, stability.cpu().numpy(), self.preset)
        with self._timed("scoring"):
            metrics = self._metrics(logits[torch.as_tensor(pool, device=logits.device)], prompts.evidence)
            kept = passing_metric_filters(metrics, self.preset)
            chosen = pool[kept[merge_choice(metrics.score(self.preset)[kept], self.preset)]]
            mask = self._masks(logits[torch.as_tensor(chosen, device=logits.device)]).any(0)
        evidence = SelectorEvidence(mask, float(np.mean(predicted_iou[chosen])))
        if self.settings.matcher_d_phi == "merged-high-res":
            return mask, self._merged_high_res(embedding, prompts, logits, origin, chosen), evidence
        subset, output = origin[chosen[0]]
        if not embedding.requires_grad:
            return mask, logits[chosen[0]], evidence
        with self._timed("decoding"):
            return mask, self._decode_subset(embedding, prompts, subset).logits[output], evidence

    def _merged_high_res(self, embedding, prompts: MatcherPrompts, logits, origin, chosen) -> torch.Tensor:
        """(k, H, W) image-frame logits of all k merged candidates (the release's d_phi sums them),
        decoded again with gradient when ``embedding`` requires it."""
        if not embedding.requires_grad:
            return to_image_frame(logits[torch.as_tensor(chosen, device=logits.device)], self.query)
        with self._timed("decoding"):
            decoded = self._decode_subsets(embedding, prompts, [origin[i][0] for i in chosen])
            outputs = [decoded[origin[i][0]].logits[origin[i][1]] for i in chosen]
        return to_image_frame(torch.stack(outputs), self.query)

    def _masks(self, logits: torch.Tensor) -> np.ndarray:
        return (to_image_frame(logits, self.query) > self.sam.mask_threshold).cpu().numpy()

    def _metrics(self, logits: torch.Tensor, evidence: Evidence) -> Metrics:
        emd, pure, cover, emd_by_cells = [], [], [], {}
        frame = self.query_tokens.frame
        for start in range(0, len(logits), MASK_CHUNK):
            for mask in self._masks(logits[start : start + MASK_CHUNK]):
                inside = frame.cells(mask).cpu().numpy() > 0
                key = inside.tobytes()  # candidates over the same cells have the same emd
                if key not in emd_by_cells:
                    emd_by_cells[key] = emd_score(evidence.cost, inside)
                hits = points_inside(mask, evidence.points)
                emd.append(emd_by_cells[key])
                pure.append(purity(hits, int(inside.sum())))
                cover.append(coverage(hits, len(evidence.points)))
        return Metrics(np.array(emd), np.array(pure), np.array(cover))


class Matcher(Baseline):
    """Matcher as a PR-MaGIC baseline.

    ``preset``: a :class:`MatcherPreset` or its name (``fss``, ``coco``, ``part``);
    ``variant``: how a PR-MaGIC step reaches the matching features (``released`` or
    ``transport``, see :mod:`.steps`); ``matching``: the name of the matching encoder
    (``dino-tiny``, ``sam-tiny``, ``dinov2``; None: DINOv2 when ``dinov2_checkpoint`` is
    given, else :data:`.features.TINY_DEFAULT` on SAM-Tiny, see :func:`.features.matching_encoder`);
    ``dino_tiny_fold``: whose DINO-Tiny ``dino-tiny`` is (the ShapeWorld fold the episodes come from);
    ``dinov2_checkpoint``: the local DINOv2 ViT-L/14 weights, loaded on first use onto the
    SAM's device.
    ``settings``: a :class:`~prmagic_core.presets.Preset` or its name (step injection, d_phi,
    empty-support fallback).
    """

    name = "matcher"

    def __init__(self, preset: MatcherPreset | str = "fss", variant: str = "released", dinov2_checkpoint=None,
                 settings: Preset | str | None = None, matching: str | None = None, dino_tiny_fold: int = 0):
        self.preset = get_matcher_preset(preset) if isinstance(preset, str) else preset
        self.variant = check_variant(variant)
        self.dinov2_checkpoint = dinov2_checkpoint
        self.settings = get_preset(settings)
        self.features = MatchingEncoder(matching, dinov2_checkpoint, "Matcher", dino_tiny_fold)

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> MatcherPrompter:
        *supports, query = encoder.encode_many([*support_images, query_image])
        timings = {"features": 0.0, "matching": 0.0, "decoding": 0.0, "scoring": 0.0}
        with timed(timings, "features", encoder.device):
            features = self.features(encoder)
            grids = [features(encoded) for encoded in (*supports, query)]
        on_tiny = encoder.sam.image_encoder.img_size == TINY_CONFIG["img_size"]
        cap = self.preset.tiny_subsets_per_size if on_tiny else None
        return MatcherPrompter(encoder.sam, query, grids[-1], grids[:-1], support_masks, self.preset, self.variant,
                               cap, timings, self.settings, features.selector_encoder(encoder))
