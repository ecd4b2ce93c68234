"""DINOv2 ViT-L/14 for Matcher's matching features, through ``timm``, from a local checkpoint.

The official ``dinov2_vitl14_pretrain.pth`` (the state dict Meta publishes) is loaded into
timm's ``vit_large_patch14_dinov2.lvd142m`` built without pretrained weights at 518 px;
timm's own checkpoint filter renames the official keys (and drops the unused mask token).
Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .loading import CheckpointError, read_state_dict, resolve_device

ARCHITECTURE = "vit_large_patch14_dinov2.lvd142m"
INPUT_SIDE = 518  # 37 x 37 patches of 14 px, as Matcher runs it
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _timm():
    try:
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError:
        raise ImportError("Matcher on official SAM needs timm for DINOv2: pip install timm") from None
    return timm, checkpoint_filter_fn


def load_dinov2(checkpoint: str | Path, device: str = "cpu", architecture: str = ARCHITECTURE,
                img_size: int = INPUT_SIDE) -> torch.nn.Module:
    """A DINOv2 ViT in eval mode with the weights of ``checkpoint`` (official DINOv2 or timm key names)."""
    timm, checkpoint_filter_fn = _timm()
    state = read_state_dict(Path(checkpoint))
    model = timm.create_model(architecture, pretrained=False, img_size=img_size, num_classes=0)
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(state, model), strict=False)
    problems = [f"{len(keys)} {what} keys (e.g. {keys[0]})"
                for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    if problems:
        raise CheckpointError(f"{checkpoint}: not a {architecture} checkpoint: {'; '.join(problems)}")
    return model.eval().to(resolve_device(device))


@torch.no_grad()
def patch_tokens(model: torch.nn.Module, image: np.ndarray, block: int = -1) -> torch.Tensor:
    """(C, h, w) patch tokens of an HxWx3 uint8 image: stretched to the model's square input,
    ImageNet-normalised, the output of ``block`` (the last, as Matcher reads; negative counts from
    the end) before the final norm, prefix tokens dropped."""
    device = next(model.parameters()).device
    side = model.patch_embed.img_size
    x = torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, side, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    (tokens,) = model.forward_intermediates((x - mean) / std, indices=[block], norm=False, output_fmt="NCHW",
                                            intermediates_only=True)
    return tokens[0]
