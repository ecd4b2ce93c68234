"""Baselines PR-MaGIC wraps, each behind the interface of :mod:`.base`."""
from .base import Baseline, Prompter
from .persam import PerSAM, PerSAMF

BASELINES = ("persam", "persam_f")
# Prompt points per task, as in the paper (semantic / part segmentation).
PERSAM_F_POINTS = {"object": 5, "part": 3}


def make_baseline(name: str, kind: str = "object", released_point_order: bool = False) -> Baseline:
    """A baseline by name with the paper's per-task settings."""
    if name == "persam":
        return PerSAM()
    if name == "persam_f":
        return PerSAMF(points=PERSAM_F_POINTS[kind], released_point_order=released_point_order)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


__all__ = ["BASELINES", "Baseline", "PerSAM", "PerSAMF", "Prompter", "make_baseline"]
