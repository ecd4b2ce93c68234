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
from ...models.encoding import Encoded, Encoder
from ...models.tiny import TINY_CONFIG
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


class MatchingEncoder:
    """The matching features a SAM-based method uses (Matcher, GF-SAM), chosen on first use:
    DINOv2 from ``dinov2_checkpoint`` (loaded once, onto the SAM's device), else SAM-Tiny's own
    features, which only SAM-Tiny may use (on official SAM that would not be the method)."""

    def __init__(self, dinov2_checkpoint=None, method: str = "Matcher"):
        self.dinov2_checkpoint = dinov2_checkpoint
        self.method = method
        self._features = None

    def __call__(self, encoder: Encoder):
        if self._features is None:
            if self.dinov2_checkpoint is not None:
                from ...models.dinov2 import load_dinov2

                self._features = Dinov2Features(load_dinov2(self.dinov2_checkpoint, str(encoder.device)))
            elif encoder.sam.image_encoder.img_size != TINY_CONFIG["img_size"]:
                raise ValueError(f"{self.method} on official SAM matches with DINOv2 ViT-L/14: give dinov2_checkpoint")
            else:
                self._features = SamFeatures()
        return self._features
