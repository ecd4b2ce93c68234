"""DINO-Tiny: the semantic encoder that plays DINOv2's role on ShapeWorld.

A timm :class:`~timm.models.vision_transformer.VisionTransformer` (128-px input, 16x16
tokens of 64 channels, depth 3, no class token) whose patch embedding is timm's
``HybridEmbed`` over a small convolutional stem (three stride-2 3x3 convolutions and one
more at 16x16: convolutions learn textures and edges in far fewer steps than a linear patch
projection, which is what a CPU budget allows), read exactly as Matcher
reads DINOv2 (:func:`prmagic_core.models.dinov2.patch_tokens`): the image stretched to the
model's input, ImageNet-normalised, the last block's output before the final norm. Its
patch tokens match (Matcher); their mean over the image is the pooled feature a selector
compares.

One set of weights ships per ShapeWorld fold (:func:`dino_tiny_files`: fold 0's are
``weights/dino_tiny.pt`` with card ``dino_tiny.json``, fold k's ``dino_tiny_fold{k}.pt``), each
trained by ``prmagic train-dino-tiny --fold k`` on training scenes of that fold's BASE classes
only (:mod:`.dino_training`), so the fold's novel classes meet it unseen, as FSS-1000's classes
meet DINOv2.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..data.shapeworld import check_fold
from .loading import CheckpointError, _mismatch, read_state_dict, resolve_device
from .tiny import WEIGHTS_DIR

DINO_TINY_CONFIG = dict(img_size=128, stem_channels=(16, 32, 64), embed_dim=64, depth=3, num_heads=2, mlp_ratio=4.0)


def dino_tiny_files(fold: int = 0) -> tuple[Path, Path]:
    """The shipped weights and card of fold ``fold``'s DINO-Tiny (fold 0's keep the names the figures cite)."""
    check_fold(fold)
    stem = "dino_tiny" if fold == 0 else f"dino_tiny_fold{fold}"
    return WEIGHTS_DIR / f"{stem}.pt", WEIGHTS_DIR / f"{stem}.json"


def matching_fold(dataset: str, fold: int | None) -> int:
    """Whose DINO-Tiny matches episodes of ``dataset``: ShapeWorld's ``fold`` (its novel classes unseen by
    that network), else fold 0's."""
    return fold if dataset == "shapeworld" and fold is not None else 0


def build_dino_tiny(config: dict = DINO_TINY_CONFIG) -> torch.nn.Module:
    """A randomly initialised DINO-Tiny."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    c = dict(DINO_TINY_CONFIG, **config)
    layers, channels = [], 3
    for out, stride in [(width, 2) for width in c["stem_channels"]] + [(c["stem_channels"][-1], 1)]:
        layers += [torch.nn.Conv2d(channels, out, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(out), torch.nn.GELU()]
        channels = out
    return VisionTransformer(img_size=c["img_size"], patch_size=1, embed_dim=c["embed_dim"], depth=c["depth"],
                             num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], num_classes=0, class_token=False,
                             global_pool="avg", embed_layer=partial(HybridEmbed, backbone=torch.nn.Sequential(*layers)))


def load_dino_tiny(checkpoint: str | Path | None = None, device: str = "cpu", fold: int = 0) -> torch.nn.Module:
    """DINO-Tiny in eval mode: the shipped weights of ``fold``, or ``checkpoint`` (weights or a training checkpoint)."""
    path = Path(checkpoint) if checkpoint is not None else dino_tiny_files(fold)[0]
    if checkpoint is None and not path.is_file():
        raise CheckpointError(f"{path}: no DINO-Tiny ships for fold {fold}; train one with "
                              f"prmagic train-dino-tiny --fold {fold} and pass its dino_tiny.pt as the checkpoint")
    state = read_state_dict(path)
    model = build_dino_tiny()
    problem = _mismatch({k: v.shape for k, v in model.state_dict().items()}, state)
    if problem:
        raise CheckpointError(f"{path}: not a DINO-Tiny checkpoint: {problem}")
    model.load_state_dict(state)
    return model.eval().to(resolve_device(device))
