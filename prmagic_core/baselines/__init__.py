"""Baselines PR-MaGIC wraps, each behind the interface of :mod:`.base`."""
from .base import Baseline, Prompter
from .gfsam import GFSAM
from .matcher import KIND_PRESETS, Matcher
from .persam import PerSAM, PerSAMF

BASELINES = ("persam", "persam_f", "matcher", "gfsam")
# Prompt points per task, as in the paper (semantic / part segmentation).
PERSAM_F_POINTS = {"object": 5, "part": 3}


def make_baseline(name: str, kind: str = "object", released_point_order: bool = False, train_iters: int = 1000,
                  variant: str = "released", dinov2_checkpoint=None, preset: str | None = None) -> Baseline:
    """A baseline by name with the paper's per-task settings (Matcher: ``preset`` overrides the task's;
    GF-SAM has one setting for every task and takes ``variant`` and ``dinov2_checkpoint`` as Matcher does)."""
    if name == "persam":
        return PerSAM()
    if name == "persam_f":
        return PerSAMF(points=PERSAM_F_POINTS[kind], train_iters=train_iters, released_point_order=released_point_order)
    if name == "matcher":
        return Matcher(preset or KIND_PRESETS[kind], variant=variant, dinov2_checkpoint=dinov2_checkpoint)
    if name == "gfsam":
        return GFSAM(variant=variant, dinov2_checkpoint=dinov2_checkpoint)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "Baseline", "GFSAM", "Matcher", "PerSAM", "PerSAMF", "Prompter", "make_baseline"]
