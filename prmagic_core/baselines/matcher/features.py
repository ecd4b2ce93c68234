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
"""
from __future__ import annotations

from ...models.dinov2 import patch_tokens
from ...models.encoding import Encoded
from .grid import PaddedFrame, StretchedFrame, TokenGrid


class SamFeatures:
    name = "sam"

    def __call__(self, encoded: Encoded) -> TokenGrid:
        return TokenGrid(encoded.embedding[0].detach(), PaddedFrame(encoded))


class Dinov2Features:
    """DINOv2 patch tokens from a model loaded with :func:`prmagic_core.models.dinov2.load_dinov2`."""

    name = "dinov2"

    def __init__(self, model):
        self.model = model

    def __call__(self, encoded: Encoded) -> TokenGrid:
        tokens = patch_tokens(self.model, encoded.image).to(encoded.embedding.device)
        return TokenGrid(tokens, StretchedFrame(encoded, tuple(tokens.shape[-2:])))
