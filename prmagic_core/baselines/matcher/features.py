"""Where Matcher's matching features come from.

- :class:`Dinov2Features` (official SAM): DINOv2 ViT-L/14 patch tokens, as Matcher matches
  with: the image stretched to 518x518, the last block's output before the final norm, CLS
  dropped, 37x37 tokens of 1024 channels.
- :class:`SamFeatures` (SAM-Tiny): the SAM embedding itself (32x32 cells of 64 channels).
  There is no second model to train for ShapeWorld, and SAM-Tiny's encoder is the only one
  that has seen it. The honest limitation: matching and decoding then share one feature
  space, unlike real Matcher, where DINOv2's semantic features find the points and SAM's
  features cut the masks; a PR-MaGIC step in SAM space moves the matching features directly.

Either way the features are L2-normalised per cell only at matching time (:mod:`.grid`).

``selector_encoder(encoder)`` is the seam for Matcher's selector, which re-encodes masked
images with the encoder Matcher matches with (as the release does with DINOv2): SAM's own
encoder for :class:`SamFeatures`, a :class:`TokenEncoder` for a ViT. A new feature source
(e.g. a small DINO for the tiny backend) provides the same method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...models.dinov2 import patch_tokens
from ...models.encoding import Encoded
from .grid import PaddedFrame, StretchedFrame, TokenGrid


class SamFeatures:
    name = "sam"

    def __call__(self, encoded: Encoded) -> TokenGrid:
        return TokenGrid(encoded.embedding[0].detach(), PaddedFrame(encoded))

    def selector_encoder(self, encoder):
        return encoder


@dataclass(frozen=True)
class TokenEmbedding:
    """A ViT's patch tokens of one image as an embedding (1, C, h, w), as the selector pools them."""

    embedding: torch.Tensor


class TokenEncoder:
    """``encode_many`` over DINOv2 patch tokens (pre-final-norm, CLS dropped), for the selector."""

    def __init__(self, model):
        self.model = model

    def encode_many(self, images) -> list:
        return [TokenEmbedding(patch_tokens(self.model, image)[None]) for image in images]


class Dinov2Features:
    """DINOv2 patch tokens from a model loaded with :func:`prmagic_core.models.dinov2.load_dinov2`."""

    name = "dinov2"

    def __init__(self, model):
        self.model = model

    def __call__(self, encoded: Encoded) -> TokenGrid:
        tokens = patch_tokens(self.model, encoded.image).to(encoded.embedding.device)
        return TokenGrid(tokens, StretchedFrame(encoded, tuple(tokens.shape[-2:])))

    def selector_encoder(self, encoder) -> TokenEncoder:
        return TokenEncoder(self.model)
