"""GF-SAM (Zhang et al., NeurIPS 2024) as a PR-MaGIC baseline; see :mod:`.prompter` for the whole picture.

    GFSAM()                                                               # SAM-Tiny: SAM features match
    GFSAM("transport", dinov2_checkpoint="dinov2_vitl14_pretrain.pth")    # official SAM
"""
from .prompter import GFSAM, Decision, GFSAMPrompter, GFSAMPrompts

__all__ = ["GFSAM", "Decision", "GFSAMPrompter", "GFSAMPrompts"]
