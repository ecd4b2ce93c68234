"""Matcher (Liu et al., ICLR 2024) as a PR-MaGIC baseline; see :mod:`.prompter` for the whole picture.

    Matcher("fss", variant="released")                                  # SAM-Tiny: SAM features match
    Matcher("coco", variant="transport", dinov2_checkpoint="dinov2_vitl14_pretrain.pth")
"""
from .presets import BENCHMARK_PRESETS, KIND_PRESETS, LAUNCHER_PRESETS, PRESETS, MatcherPreset, get_preset, \
    settings_preset
from .prompter import Matcher, MatcherPrompter, MatcherPrompts
from .steps import VARIANTS

__all__ = ["BENCHMARK_PRESETS", "KIND_PRESETS", "LAUNCHER_PRESETS", "PRESETS", "VARIANTS", "Matcher", "MatcherPreset",
           "MatcherPrompter", "MatcherPrompts", "get_preset", "settings_preset"]
