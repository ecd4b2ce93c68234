"""GF-SAM (Zhang et al., NeurIPS 2024, "Bridge the Points: Graph-based Few-shot Segment Anything
Semantically") behind PR-MaGIC's prompter interface.

Per episode (:meth:`GFSAM.prepare`): the matching features of the supports and the query (the
same seam as Matcher's: DINOv2 on official SAM, SAM-Tiny's own features on SAM-Tiny until a
tiny semantic encoder exists), GF-SAM-normalised (:func:`.priors.normalised_channels`), and the
step map of the chosen variant. Then, for a query SAM embedding z (z0 or a refined z_t):

- ``similarity(z)``: the step z - z0 carried into the query features as into Matcher's
  (``released``: resized and zero-padded; ``transport``: the fitted linear map), the positive
  and negative priors, and the filtered cross-similarity map on the query image;
- ``sample_prompts(S, generator)``: the top-k cells of the map behind S, as positive points
  (deterministic: the generator is not used);
- ``decode(z, prompts, S)``: one single-output SAM mask per point (batched), the point graph and
  its weak components, cluster classification, point self-consistency, and the merge; returns
  the merged mask and the low-res logits (m, h', w') of the m decoder outputs merged into it
  (decoded again with gradient when z requires it), whose reduction is d_phi.

Where this differs from the release, and why:
- points are the centres of their cells (the release scales cell indices by 1024/37, the
  cells' top-left corners): the same cells, half a cell apart;
- masks reach the grid as the fraction of each cell they cover (the release samples its
  1024-px masks bilinearly at 37 x 37 points); the graph tests each mask at the point's pixel;
- SAM decodes the query at its own input size with points in original-image pixels (the release
  hands SAM the 1024 x 1024 stretched image); cells over SAM-Tiny's padding are left out.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ...models.decoding import Prompts, decode_each_point
from ...models.encoding import Encoded, Encoder, to_image_frame
from ...timing import timed
from ..base import Baseline, Prompter
from ..matcher.features import MatchingEncoder
from ..matcher.grid import TokenGrid
from ..matcher.steps import ReleasedStep, TransportStep, check_variant
from .graph import classify_clusters, merge, point_graph, point_self_consistency, top_points, weak_components
from .priors import filtered_cross_similarity, fill_empty_support, normalised_channels, positive_evidence, \
    shot_priors

REMEMBERED_MAPS = 4  # similarity maps whose evidence stays available to sample_prompts


@dataclass(frozen=True)
class Evidence:
    """What one similarity map leaves for decoding, on the grid: the filtered point map (n,),
    the query features the priors compared (n, C), the positive region (n,) and its evidence (n,)."""

    point_map: torch.Tensor
    features: torch.Tensor
    positive: torch.Tensor
    evidence: torch.Tensor

    def digest(self) -> bytes:
        h = hashlib.sha1()
        for tensor in (self.point_map, self.features, self.positive, self.evidence):
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.digest()


@dataclass(frozen=True)
class GFSAMPrompts(Prompts):
    """GF-SAM's points (all positive) with their grid cells and the evidence they were drawn from."""

    cells: np.ndarray | None = None
    evidence: Evidence | None = None

    def fingerprint(self) -> bytes:
        cells = b"" if self.cells is None else np.asarray(self.cells, dtype=np.int64).tobytes()
        evidence = b"" if self.evidence is None else self.evidence.digest()
        return b"#".join((super().fingerprint(), cells, evidence))


@dataclass
class Decision:
    """Everything one GF-SAM decode decided, for inspection: per point its cluster, foreground flag,
    self-consistency label, and the points merged."""

    clusters: int
    labels: np.ndarray
    foreground: np.ndarray
    point_labels: np.ndarray
    merged: np.ndarray


class GFSAMPrompter(Prompter):
    # decode() classifies against the priors behind the similarity map, so decodes are shared
    # only between equal maps.
    decode_uses_similarity = True

    def __init__(self, sam, query: Encoded, query_tokens: TokenGrid, supports: list, support_masks, variant: str,
                 timings: dict):
        self.sam = sam
        self.query = query
        self.frame = query_tokens.frame
        self.grid = tuple(query_tokens.frame.grid)
        self.timings = timings
        self.z0 = query.embedding.detach()
        self.shots = []
        for grid, mask in zip(supports, fill_empty_support(support_masks), strict=True):
            valid = torch.as_tensor(grid.frame.centres()[1], device=grid.tokens.device)
            foreground = grid.frame.cells(mask).to(grid.tokens.device) * valid
            features = normalised_channels(grid.tokens.flatten(1).T.float(), valid)
            self.shots.append((features, foreground, valid.float() - foreground))
        self.points_xy, valid = self.frame.centres()
        self.valid = torch.as_tensor(valid, device=query_tokens.tokens.device)
        channels = query_tokens.tokens.shape[0]
        base = normalised_channels(query_tokens.tokens.flatten(1).T.float(), self.valid)
        self.base_features = base.T.reshape(channels, *self.grid)
        if variant == "released":
            self.step_map = ReleasedStep(channels, self.grid)
        else:
            self.step_map = TransportStep.fit(self.z0, TokenGrid(self.base_features, self.frame))
        self._maps: list = []
        self._z0_logits: dict = {}

    @contextmanager
    def _timed(self, key: str):
        with timed(self.timings, key, self.z0.device):
            yield

    def matching_features(self, embedding: torch.Tensor) -> torch.Tensor:
        """The query features GF-SAM compares (n, C), with the step ``embedding`` - z0 carried in."""
        moved = self.base_features + self.step_map(embedding.detach() - self.z0)
        return moved.flatten(1).T

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        with self._timed("priors"):
            features = self.matching_features(embedding)
            priors = shot_priors(features, self.shots)
            point_map = filtered_cross_similarity(priors, self.valid)
            positive, evidence = positive_evidence(priors, self.valid)
            similarity = self.frame.to_image(point_map.reshape(self.grid))
            known = Evidence(point_map, features, positive, evidence)
            self._maps = [(similarity, known), *self._maps][:REMEMBERED_MAPS]
        return similarity

    def _evidence(self, similarity: torch.Tensor) -> Evidence:
        for known, evidence in self._maps:
            if known is similarity:
                return evidence
        raise ValueError("this similarity map was not made by this prompter's similarity() (or is too old)")

    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> GFSAMPrompts:
        evidence = self._evidence(similarity)
        cells = top_points(evidence.point_map, self.grid)
        return GFSAMPrompts(self.points_xy[cells], np.ones(len(cells)), cells=cells, evidence=evidence)

    def _point_logits(self, embedding: torch.Tensor, cells: np.ndarray) -> torch.Tensor:
        """Low-res logits (k, h', w') of each cell's point decoded alone on ``embedding``. On z0 they
        are kept per cell: the prompts of successive refinement steps share most of their cells."""
        on_z0 = torch.equal(embedding, self.z0)
        todo = [c for c in dict.fromkeys(cells.tolist()) if not (on_z0 and c in self._z0_logits)]
        decoded = {}
        if todo:
            fresh = decode_each_point(self.sam, embedding, self.query, self.points_xy[todo]).logits
            decoded = dict(zip(todo, fresh))
            if on_z0:
                self._z0_logits.update(decoded)
        return torch.stack([decoded[c] if c in decoded else self._z0_logits[c] for c in cells.tolist()])

    def decide(self, masks: np.ndarray, prompts: GFSAMPrompts) -> Decision:
        """GF-SAM's graph steps on the points' masks (k, H, W): which masks make the final one."""
        evidence = prompts.evidence
        clusters, labels = weak_components(point_graph(masks, prompts.coords))
        coverage = torch.stack([self.frame.cells(m) for m in masks]).to(evidence.evidence.device)
        foreground, scores = classify_clusters(coverage, labels, clusters, evidence.positive, evidence.evidence)
        unions = torch.stack([self.frame.cells(masks[labels == c].any(0)) for c in range(clusters)])
        point_labels = point_self_consistency(evidence.features, unions.to(coverage.device), labels, prompts.cells,
                                              self.grid, foreground)
        return Decision(clusters, labels, foreground, point_labels, merge(point_labels, scores))

    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor):
        """GF-SAM's mask on ``embedding`` from ``prompts`` (``similarity`` is unused: the evidence
        it came from travels with the prompts)."""
        if not isinstance(prompts, GFSAMPrompts) or prompts.evidence is None:
            raise TypeError("GF-SAM decodes GFSAMPrompts from its own sample_prompts()")
        low_res = self.sam.prompt_encoder.mask_input_size
        if not len(prompts.coords):  # nothing to prompt: an empty mask, and d_phi does not depend on z
            zeros = torch.zeros(1, *low_res, device=embedding.device)
            return np.zeros(self.query.original_size, dtype=bool), zeros + 0 * embedding.sum()
        with self._timed("decoding"), torch.no_grad():
            logits = self._point_logits(embedding.detach(), prompts.cells)
            masks = (to_image_frame(logits, self.query) > self.sam.mask_threshold).cpu().numpy()
        with self._timed("graph"):
            merged = self.decide(masks, prompts).merged
        mask = masks[merged].any(0)
        if not embedding.requires_grad:
            return mask, logits[torch.as_tensor(merged)]
        with self._timed("decoding"):
            return mask, decode_each_point(self.sam, embedding, self.query, prompts.coords[merged]).logits


class GFSAM(Baseline):
    """GF-SAM as a PR-MaGIC baseline (it has no per-benchmark settings).

    ``variant``: how a PR-MaGIC step reaches the matching features (``released`` or
    ``transport``, as for Matcher); ``dinov2_checkpoint``: the local DINOv2 ViT-L/14 weights
    (required on official SAM); ``matching`` and ``dino_tiny_fold``: the matching encoder, as for
    Matcher (:mod:`..matcher.features`).
    """

    name = "gfsam"

    def __init__(self, variant: str = "released", dinov2_checkpoint=None, matching: str | None = None,
                 dino_tiny_fold: int = 0):
        self.variant = check_variant(variant, "GF-SAM")
        self.dinov2_checkpoint = dinov2_checkpoint
        self.features = MatchingEncoder(matching, dinov2_checkpoint, "GF-SAM", dino_tiny_fold)

    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> GFSAMPrompter:
        *supports, query = encoder.encode_many([*support_images, query_image])
        timings = {"features": 0.0, "priors": 0.0, "decoding": 0.0, "graph": 0.0}
        with timed(timings, "features", encoder.device):
            features = self.features(encoder)
            grids = [features(encoded) for encoded in (*supports, query)]
        return GFSAMPrompter(encoder.sam, query, grids[-1], grids[:-1], support_masks, self.variant, timings)
