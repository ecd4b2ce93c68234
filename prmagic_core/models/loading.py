"""Loading SAM: official checkpoints from a path the user gives, or the shipped SAM-Tiny.

Weights are never downloaded. Every load uses ``torch.load(..., weights_only=True)`` and
every failure is one line naming the file and the problem.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from ..errors import UserError
from .attention import use_short_key_attention
from .tiny import TINY_WEIGHTS, build_sam_tiny

OFFICIAL_TYPES = ("vit_b", "vit_l", "vit_h")
MODEL_TYPES = OFFICIAL_TYPES + ("tiny",)


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or for another architecture."""


def _builder(model_type: str):
    if model_type == "tiny":
        return build_sam_tiny
    if model_type in OFFICIAL_TYPES:
        return lambda: sam_model_registry[model_type](checkpoint=None)
    raise CheckpointError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")


def read_checkpoint(path: Path):
    """What a checkpoint file holds, loaded with ``weights_only=True`` (so it cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # torch warns about pickle protocols on the way to refusing a file; the refusal is what counts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or one holding Python objects besides tensors "
                              "(refused: loading them could run code)") from None
    except Exception as err:  # torch raises many types for a non-checkpoint file
        first_line = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {first_line})") from None


def read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint file; a training checkpoint's ``model`` entry is accepted too."""
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensors hold NaN or infinite values (e.g. {broken[0]})")
    return state


def _shapes(model_type: str) -> dict:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in _builder(model_type)().state_dict().items()}


def guess_model_type(state: dict) -> str | None:
    """The model type whose parameter names and shapes match ``state`` exactly, if any."""
    found = {k: tuple(v.shape) for k, v in state.items()}
    for model_type in MODEL_TYPES:
        if _shapes(model_type) == found:
            return model_type
    return None


def _mismatch(expected: dict, found: dict) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k].shape))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: expected {tuple(expected[k])}, found {tuple(found[k].shape)})")
    return "; ".join(parts)


def load_sam(model_type: str = "tiny", checkpoint: str | Path | None = None, device: str = "cpu") -> Sam:
    """A SAM in eval mode. ``model_type`` is vit_b, vit_l, vit_h or tiny.

    Official types need ``checkpoint`` (a path, never downloaded); ``tiny`` defaults to the
    weights shipped with the package. A checkpoint of another type is an error that names
    the type it fits, or the keys and shapes that do not match. The decoder's attention runs as
    :class:`.attention.ShortKeyAttention` (SAM's result up to float rounding, faster on a CPU).
    """
    build = _builder(model_type)
    if checkpoint is None:
        if model_type != "tiny":
            raise CheckpointError(f"model type {model_type} needs --checkpoint PATH (official weights are never downloaded)")
        checkpoint = TINY_WEIGHTS
    state = read_state_dict(Path(checkpoint))
    model = build()
    expected = model.state_dict()
    problem = _mismatch({k: v.shape for k, v in expected.items()}, state)
    if problem:
        fits = guess_model_type(state)
        hint = f"; it is a {fits} checkpoint, use model type {fits}" if fits else ""
        raise CheckpointError(f"{checkpoint}: not a {model_type} checkpoint: {problem}{hint}")
    model.load_state_dict(state)
    return use_short_key_attention(model).eval().to(resolve_device(device))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an error, not a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device (e.g. auto, cpu, cuda, cuda:1)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r} asked for but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"--device {device!r} asked for but this machine has {torch.cuda.device_count()} CUDA devices")
    return resolved
