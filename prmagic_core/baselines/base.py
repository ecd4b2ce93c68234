"""The interface between the refinement loop and a baseline (PerSAM, PerSAM-F, Matcher, ...).

A :class:`Baseline` turns one episode (support images + masks, query image) into a
:class:`Prompter`; the loop in ``refine.py`` only ever talks to the prompter:

- ``similarity(embedding)``: the support-query similarity map on the query image (H, W),
  computed from a query embedding (the original z0, or a refined z_t);
- ``sample_prompts(similarity, generator)``: point prompts from that map;
- ``decode(embedding, prompts, similarity)``: the baseline's decoder call(s) on
  ``embedding``; returns the candidate mask and the low-res logits whose reduction is
  d_phi. When ``embedding`` requires grad, the logits must be differentiable w.r.t. it.

The loop always decodes candidates from z0; the refined embedding reaches the prompter
only through ``similarity``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ..models.decoding import Prompts
from ..models.encoding import Encoded, Encoder


class EmptySupportWarning(UserWarning):
    """A support mask selects no cell of the feature grid, and the baseline uses its documented fallback."""


class Prompter(ABC):
    """One episode's prompt generator and decoder, prepared from its support set."""

    query: Encoded
    # Whether decode() reads the similarity map (PerSAM's attention guidance does); decodes of
    # a prompter that does not are shared across similarity maps with the same prompts.
    decode_uses_similarity: bool = True

    @abstractmethod
    def similarity(self, embedding: torch.Tensor) -> torch.Tensor:
        """Support-query similarity on the query image (H, W), from a query embedding (1, C, h, w)."""

    @abstractmethod
    def sample_prompts(self, similarity: torch.Tensor, generator: torch.Generator) -> Prompts:
        """Point prompts (original query pixels) sampled from a similarity map."""

    @abstractmethod
    def decode(self, embedding: torch.Tensor, prompts: Prompts, similarity: torch.Tensor) -> tuple:
        """(candidate mask (H, W) bool, logits whose reduction is d_phi) decoded on ``embedding``,
        optionally followed by a :class:`~prmagic_core.select.SelectorEvidence` for the selector."""


class Baseline(ABC):
    """A few-shot segmenter that PR-MaGIC can wrap."""

    name: str

    @abstractmethod
    def prepare(self, encoder: Encoder, support_images, support_masks, query_image: np.ndarray) -> Prompter:
        """Build the episode's prompter; encodings go through ``encoder`` so they are cached and counted."""
