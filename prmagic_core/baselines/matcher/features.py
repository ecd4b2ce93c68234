"""The matching encoder: the features Matcher matches with (and a selector may pool).

:func:`matching_encoder` is the one place that says which encoder that is:

- ``dinov2`` (official SAM): DINOv2 ViT-L/14 patch tokens, as Matcher matches with: the
  image stretched to 518x518, the last block's output before the final norm, CLS dropped,
  37x37 tokens of 1024 channels (:class:`VitFeatures`).
- ``dino-tiny`` (SAM-Tiny's default, :data:`TINY_DEFAULT`): DINO-Tiny
  (:mod:`prmagic_core.models.dino_tiny`), the small ViT trained on a ShapeWorld fold's base
  classes (``dino_tiny_fold``'s shipped weights), read the same way: 16x16 tokens of 64 channels.
  Semantic features find the points, SAM's features cut the masks, as in Matcher.
- ``sam-tiny``: SAM-Tiny's own embedding (32x32 cells of 64 channels, :class:`SamFeatures`),
  which shows what a semantic encoder changes: these features are class-agnostic (every object
  lights up), and matching and decoding share one feature space, so a PR-MaGIC step moves the
  matching features directly.

Every matching encoder is called on an :class:`Encoded` query or support (-> a
:class:`TokenGrid`) and has ``selector_encoder(encoder)``: the encoder Matcher's selector
re-encodes masked images with (as the release does with DINOv2, SPEC section 8.10): SAM's own
encoder for :class:`SamFeatures`, a :class:`TokenEncoder` over the ViT's tokens otherwise.
Features are L2-normalised per cell only at matching time (:mod:`.grid`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ...models.dinov2 import patch_tokens
from ...models.encoding import Encoded, Encoder
from ...models.tiny import TINY_CONFIG
from .grid import PaddedFrame, StretchedFrame, TokenGrid

MATCHING_ENCODERS = ("dino-tiny", "sam-tiny", "dinov2")
# SAM-Tiny's default: Matcher on real data matches with DINOv2, and every fold's DINO-Tiny meets its
# quality bar (see the cards), so the semantic encoder is the faithful choice.
TINY_DEFAULT = "dino-tiny"


class SamFeatures:
    """SAM's own embedding as matching features."""

    name = "sam-tiny"

    def __call__(self, encoded: Encoded) -> TokenGrid:
        return TokenGrid(encoded.embedding[0].detach(), PaddedFrame(encoded))

    def selector_encoder(self, encoder):
        return encoder


@dataclass(frozen=True)
class TokenEmbedding:
    """A ViT's patch tokens of one image as an embedding (1, C, h, w), as the selector pools them."""

    embedding: torch.Tensor


class TokenEncoder:
    """``encode_many`` over a ViT's patch tokens (pre-final-norm, CLS dropped), for the selector."""

    def __init__(self, model):
        self.model = model

    def encode_many(self, images) -> list:
        return [TokenEmbedding(patch_tokens(self.model, image)[None]) for image in images]



class VitFeatures:
    """Patch tokens of a timm ViT (DINOv2 or DINO-Tiny), read by :func:`prmagic_core.models.dinov2.patch_tokens`."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    def __call__(self, encoded: Encoded) -> TokenGrid:
        tokens = patch_tokens(self.model, encoded.image).to(encoded.embedding.device)
        return TokenGrid(tokens, StretchedFrame(encoded, tuple(tokens.shape[-2:])))

    def selector_encoder(self, encoder) -> TokenEncoder:
        return TokenEncoder(self.model)


@lru_cache(maxsize=4)
def _dino_tiny(device: str, fold: int = 0):
    from ...models.dino_tiny import load_dino_tiny

    return load_dino_tiny(device=device, fold=fold)


def matching_encoder_name(name: str | None, on_tiny: bool, dinov2_checkpoint=None, method: str = "Matcher") -> str:
    """``name``, or the default: ``dinov2`` when ``dinov2_checkpoint`` is given, else :data:`TINY_DEFAULT`
    on SAM-Tiny; official SAM without a DINOv2 checkpoint is an error (that would not be ``method``)."""
    if name is not None:
        return name
    if dinov2_checkpoint is None and not on_tiny:
        raise ValueError(f"{method} on official SAM matches with DINOv2 ViT-L/14: give dinov2_checkpoint")
    return "dinov2" if dinov2_checkpoint is not None else TINY_DEFAULT


def matching_encoder(name: str | None, encoder: Encoder, dinov2_checkpoint=None, method: str = "Matcher",
                     dino_tiny_fold: int = 0):
    """The encoder a matching baseline matches with, for SAM ``encoder`` (``name`` None: the default
    of :func:`matching_encoder_name`; ``dino-tiny`` is the one trained on ``dino_tiny_fold``'s base classes)."""
    on_tiny = encoder.sam.image_encoder.img_size == TINY_CONFIG["img_size"]
    name = matching_encoder_name(name, on_tiny, dinov2_checkpoint, method)
    if name == "dinov2":
        if dinov2_checkpoint is None:
            raise ValueError("matching encoder dinov2 needs dinov2_checkpoint (a local DINOv2 ViT-L/14 file)")
        from ...models.dinov2 import load_dinov2

        return VitFeatures(load_dinov2(dinov2_checkpoint, str(encoder.device)), "dinov2")
    if name == "dino-tiny":
        return VitFeatures(_dino_tiny(str(encoder.device), dino_tiny_fold), "dino-tiny")
    if name == "sam-tiny":
        if not on_tiny:
            raise ValueError("matching encoder sam-tiny needs the tiny backend")
        return SamFeatures()
    raise ValueError(f"matching encoder must be one of {MATCHING_ENCODERS}, got {name!r}")


class MatchingEncoder:
    """The matching encoder of one baseline object (Matcher, GF-SAM), chosen by name on first use
    (:func:`matching_encoder`) and kept, so DINOv2 is loaded once."""

    def __init__(self, name: str | None = None, dinov2_checkpoint=None, method: str = "Matcher",
                 dino_tiny_fold: int = 0):
        if name is not None and name not in MATCHING_ENCODERS:
            raise ValueError(f"matching encoder must be one of {MATCHING_ENCODERS}, got {name!r}")
        self.name, self.dinov2_checkpoint, self.method = name, dinov2_checkpoint, method
        self.dino_tiny_fold = dino_tiny_fold
        self._features = None

    def __call__(self, encoder: Encoder):
        if self._features is None:
            self._features = matching_encoder(self.name, encoder, self.dinov2_checkpoint, self.method,
                                              self.dino_tiny_fold)
        return self._features
