"""PR-MaGIC on one episode, end to end: prepare the baseline, refine, select, score.

    result = run_episode(PerSAMF(), Encoder(load_sam("tiny")), episode, steps=5)
    result.top1_mask, result.ious      # the chosen mask; IoU of every candidate

Candidate 0 is the baseline's own mask ("B"); the selector's pick is "T"; the candidate of
highest IoU with the ground truth is the oracle "O".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .baselines.base import Baseline, Prompter
from .data.episode import Episode
from .flow import FlowConfig
from .models.encoding import Encoder
from .refine import DecodeMemo, Trajectory, refine
from .select import choose, oracle, rule
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


def run_episode(baseline: Baseline, encoder: Encoder, episode: Episode, steps: int = 5,
                flow: FlowConfig = FlowConfig(), selector: str = "masked-image", seed: int = 0,
                resampling: str = "fixed") -> EpisodeResult:
    """Refine one episode with ``steps`` flow steps and pick the final mask with ``selector``."""
    t0 = clock(encoder.device)
    prompter = baseline.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)
    prepared = clock(encoder.device) - t0
    result = run_prepared(prompter, encoder, episode, steps, flow, selector, seed, resampling)
    result.seconds["prepare"] = prepared
    return result


def run_prepared(prompter: Prompter, encoder: Encoder, episode: Episode, steps: int = 5,
                 flow: FlowConfig = FlowConfig(), selector: str = "masked-image", seed: int = 0,
                 resampling: str = "fixed", memo: DecodeMemo | None = None) -> EpisodeResult:
    """:func:`run_episode` with the baseline already prepared: a sweep over flow settings
    prepares each episode once (PerSAM-F's fine-tuning, the encodings) and reuses it, and
    with one ``memo`` shares the decodes on z0 too."""
    generator = torch.Generator().manual_seed(seed)
    t1 = clock(encoder.device)
    trajectory = refine(prompter, steps, flow, generator, resampling, memo)
    t2 = clock(encoder.device)
    # Any selector of the family; the random reference draws from the episode's seed.
    constants = {"seed": seed} if "seed" in rule(selector).constants else {}
    chosen = choose(selector, trajectory, encoder, prompter.query, episode.support_images, episode.support_masks,
                    truth=episode.query_mask, **constants)
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
