"""PR-MaGIC on one episode, end to end: prepare the baseline, refine, select, score.

    result = run_episode(PerSAMF(), Encoder(load_sam("tiny")), episode, steps=5)
    result.top1_mask, result.ious      # the chosen mask; IoU of every candidate

A preset (:mod:`.presets`, default ``release``) sets the loop's resampling and how the
selector scores (:func:`select_final`); the baseline's own behaviour is its ``settings``.

Candidate 0 is the baseline's own mask ("B"); the selector's pick is "T"; the candidate of
highest IoU with the ground truth is the oracle "O".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .baselines.base import Baseline, EmptySupportWarning, Prompter
from .data.episode import Episode
from .flow import FlowConfig
from .models.encoding import Encoder
from .presets import Preset, get_preset
from .refine import DecodeMemo, Trajectory, refine
from .select import SELECTORS, Selection, choose, oracle, rule, select
from .timing import clock


@dataclass
class EpisodeResult:
    name: str
    class_name: str
    trajectory: Trajectory
    top1_index: int
    selector_scores: tuple
    ious: tuple | None
    oracle_index: int | None
    seconds: dict = field(default_factory=dict)

    @property
    def candidates(self) -> list:
        return self.trajectory.candidates

    @property
    def baseline_mask(self) -> np.ndarray:
        return self.candidates[0]

    @property
    def top1_mask(self) -> np.ndarray:
        return self.candidates[self.top1_index]


def selector_encoder(prompter: Prompter, encoder: Encoder, selector: str, preset: Preset):
    """The encoder the selector re-encodes with: the baseline's matching encoder when it has one
    (Matcher's, for the masked-image selector under ``selector_encoder="matching"``), else SAM's."""
    own = getattr(prompter, "selector_encoder", None)
    if own is not None and selector == "masked-image" and preset.selector_encoder == "matching":
        return own
    return encoder


def select_final(selector: str, trajectory: Trajectory, prompter: Prompter, encoder: Encoder, episode: Episode,
                 preset: Preset | str | None = None, seed: int = 0) -> Selection:
    """``selector``'s pick among the trajectory's candidates as ``preset`` has it: the masks and
    terms the decodes handed over (SelectorEvidence), the support's first shot or all, the encoder.

    The release's selectors (:data:`~prmagic_core.select.SELECTORS`) score as the preset says;
    any other selector of :data:`~prmagic_core.select.FAMILY` applies its own rule (its constants'
    defaults; the random reference draws from ``seed``) on the same support and encoder.
    """
    preset = get_preset(preset)
    shots = 1 if preset.selector_support == "first" else len(episode.support_images)
    chosen_encoder = selector_encoder(prompter, encoder, selector, preset)
    support = episode.support_images[:shots], episode.support_masks[:shots]
    if selector in SELECTORS:
        return select(selector, trajectory.candidates, chosen_encoder, prompter.query, *support,
                      evidence=trajectory.evidence, alpha_s=preset.alpha_s, beta_s=preset.beta_s)
    constants = {"seed": seed} if "seed" in rule(selector).constants else {}
    return choose(selector, trajectory, chosen_encoder, prompter.query, *support, truth=episode.query_mask,
                  **constants)


def prepare_episode(baseline: Baseline, encoder: Encoder, episode: Episode) -> Prompter:
    """``baseline.prepare`` on ``episode``; a fallback for an empty support is announced with the episode's name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptySupportWarning)
        prompter = baseline.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)
    for warning in caught:
        if issubclass(warning.category, EmptySupportWarning):
            warnings.warn(f"episode {episode.name or '(unnamed)'}: {warning.message}", EmptySupportWarning,
                          stacklevel=3)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return prompter


def run_episode(baseline: Baseline, encoder: Encoder, episode: Episode, steps: int = 5,
                flow: FlowConfig = FlowConfig(), selector: str = "masked-image", seed: int = 0,
                resampling: str | None = None, preset: Preset | str | None = None) -> EpisodeResult:
    """Refine one episode with ``steps`` flow steps and pick the final mask with ``selector``.

    ``preset`` (default ``release``) sets the loop's and the selector's behaviour (``resampling``
    overrides its resampling); the baseline's own behaviour is the baseline's ``settings``.
    """
    t0 = clock(encoder.device)
    prompter = prepare_episode(baseline, encoder, episode)
    prepared = clock(encoder.device) - t0
    result = run_prepared(prompter, encoder, episode, steps, flow, selector, seed, resampling, preset=preset)
    result.seconds["prepare"] = prepared
    return result


def run_prepared(prompter: Prompter, encoder: Encoder, episode: Episode, steps: int = 5,
                 flow: FlowConfig = FlowConfig(), selector: str = "masked-image", seed: int = 0,
                 resampling: str | None = None, memo: DecodeMemo | None = None,
                 preset: Preset | str | None = None) -> EpisodeResult:
    """:func:`run_episode` with the baseline already prepared: a sweep over flow settings
    prepares each episode once (PerSAM-F's fine-tuning, the encodings) and reuses it, and
    with one ``memo`` shares the decodes on z0 too."""
    preset = get_preset(preset)
    generator = torch.Generator().manual_seed(seed)
    t1 = clock(encoder.device)
    trajectory = refine(prompter, steps, flow, generator, resampling or preset.resampling, memo)
    t2 = clock(encoder.device)
    chosen = select_final(selector, trajectory, prompter, encoder, episode, preset, seed)
    t3 = clock(encoder.device)
    best = oracle(trajectory.candidates, episode.query_mask) if episode.query_mask is not None else None
    return EpisodeResult(
        name=episode.name,
        class_name=episode.class_name,
        trajectory=trajectory,
        top1_index=chosen.index,
        selector_scores=chosen.scores,
        ious=best.scores if best else None,
        oracle_index=best.index if best else None,
        # A prompter may split its own time further (Matcher: features, matching, decoding, scoring).
        seconds={"refine": t2 - t1, "select": t3 - t2, **getattr(prompter, "timings", {})},
    )
