"""Baselines PR-MaGIC wraps, each behind the interface of :mod:`.base`."""
from .base import Baseline, Prompter
from ..presets import Preset, get_preset
from .gfsam import GFSAM
from .matcher import Matcher, settings_preset
from .persam import PerSAM, PerSAMF

BASELINES = ("persam", "persam_f", "matcher", "gfsam")
# Prompt points per task, as in the paper (semantic / part segmentation).
PERSAM_F_POINTS = {"object": 5, "part": 3}


def task_kind(kind: str, benchmark: str | None, settings: Preset) -> str:
    """The kind whose settings a task runs with: a benchmark the preset treats as part-like (the
    release runs DIS5K so) takes the part settings (eta 1e-4, 3 PerSAM-F points)."""
    return "part" if benchmark in settings.part_like else kind


def make_baseline(name: str, kind: str = "object", released_point_order: bool = False, train_iters: int = 1000,
                  variant: str = "released", dinov2_checkpoint=None, matcher_preset: str | None = None,
                  settings: Preset | str | None = None, benchmark: str | None = None,
                  matching_encoder: str | None = None, dino_tiny_fold: int = 0) -> Baseline:
    """A baseline by name with the paper's per-task settings, behaving as the preset ``settings``
    (default ``release``) says; ``benchmark`` picks Matcher's per-benchmark settings (``matcher_preset``
    names one outright; ``matching_encoder`` the features Matcher and GF-SAM match with (``dino-tiny``:
    the one trained on ``dino_tiny_fold``'s base classes); GF-SAM has one
    setting for every task and takes ``variant`` and ``dinov2_checkpoint`` as Matcher does)."""
    settings = get_preset(settings)
    kind = task_kind(kind, benchmark, settings)
    if name == "persam":
        return PerSAM(settings=settings)
    if name == "persam_f":
        return PerSAMF(points=PERSAM_F_POINTS[kind], train_iters=train_iters, released_point_order=released_point_order,
                       settings=settings)
    if name == "matcher":
        return Matcher(matcher_preset or settings_preset(settings.matcher_settings, kind, benchmark), variant=variant,
                       dinov2_checkpoint=dinov2_checkpoint, settings=settings, matching=matching_encoder,
                       dino_tiny_fold=dino_tiny_fold)
    if name == "gfsam":
        return GFSAM(variant=variant, dinov2_checkpoint=dinov2_checkpoint, matching=matching_encoder,
                     dino_tiny_fold=dino_tiny_fold)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "Baseline", "GFSAM", "Matcher", "PerSAM", "PerSAMF", "Prompter", "make_baseline", "task_kind"]
