"""Where one PR-MaGIC episode's time goes, at a chosen ShapeWorld size (SAM-Tiny).

    python scripts/profile_trajectory.py --baseline matcher --size 512 --episodes 2

Runs one untimed episode, then ``--episodes`` episodes (T = ``--steps``, the ``pooled`` selector,
so the selector adds no encoder pass) under cProfile, one torch thread. Prints each episode's
split as the pipeline records it (prepare, refine, select, and the prompter's own: Matcher's
matching, decoding, scoring), the seconds per episode, and the functions of largest cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from prmagic_core.baselines import make_baseline
from prmagic_core.data import shapeworld
from prmagic_core.models.encoding import Encoder
from prmagic_core.models.loading import load_sam
from prmagic_core.pipeline import run_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="matcher", choices=["persam", "persam_f", "matcher"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sam = load_sam("tiny")
    baseline = make_baseline(args.baseline)
    warmup, *episodes = shapeworld.episodes(args.episodes + 1, seed=0, size=args.size)
    run_episode(baseline, Encoder(sam), warmup, steps=args.steps, selector="pooled")
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for episode in episodes:
        result = run_episode(baseline, Encoder(sam), episode, steps=args.steps, selector="pooled")
        print(episode.name, {k: round(v, 3) for k, v in result.seconds.items()})
    profile.disable()
    print(f"{(time.perf_counter() - start) / len(episodes):.3f} s per episode ({args.baseline}, {args.size} px, "
          f"T = {args.steps})")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
