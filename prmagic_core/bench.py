"""``prmagic bench``: what PR-MaGIC costs next to its baseline, measured in one run.

Per episode, each method runs from a cold encoder cache (so its encoder passes are its own):

- ``baseline``: the baseline's own mask (prepare + one decode: candidate 0);
- ``prmagic_<selector>``: T refinement steps + the selector, for pooled, masked-image, crop-pool;
- ``eta_sweep4``: four eta values on one prepared episode (shared encodings, baseline
  preparation and decodes on z0, as ``experiments.py`` sweeps do), against ``eta_sweep1``:
  one eta value.

Times are wall seconds summed over episodes (one untimed warm-up episode first); encoder
passes are counted by the :class:`Encoder`. The last line is a JSON object with the ratios.
"""
from __future__ import annotations

import json
import resource

import torch

from .timing import clock

SELECTORS = ("pooled", "masked-image", "crop-pool")
SWEEP_ETAS = (1e-2, 1e-3, 1e-4, 1e-5)


def add_arguments(parser) -> None:
    parser.add_argument("--backend", default="tiny", choices=["tiny", "sam"])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--baseline", default="persam_f", choices=["persam", "persam_f", "gfsam"])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


class Meter:
    """Seconds, encoder passes and (on CUDA) peak memory of one method, summed over episodes."""

    def __init__(self):
        self.seconds, self.passes, self.peak_mb = 0.0, 0, 0.0


def _measure(meter: Meter, device, encoder, work) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, passes = clock(device), encoder.passes
    work()
    meter.seconds += clock(device) - start
    meter.passes += encoder.passes - passes
    if device.type == "cuda":
        meter.peak_mb = max(meter.peak_mb, torch.cuda.max_memory_allocated(device) / 2**20)


def _methods(baseline, episode, steps: int, seed: int) -> dict:
    """Each method as a callable on a fresh :class:`Encoder` (a cold cache, so passes are its own)."""
    from .flow import FlowConfig
    from .pipeline import run_prepared
    from .refine import DecodeMemo

    def prepare(encoder):
        return baseline.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)

    def baseline_only(encoder):
        prompter = prepare(encoder)
        similarity = prompter.similarity(prompter.query.embedding)
        prompts = prompter.sample_prompts(similarity, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            prompter.decode(prompter.query.embedding, prompts, similarity)

    def prmagic(selector: str, etas: tuple):
        def work(encoder):
            prompter = prepare(encoder)
            memo = DecodeMemo(prompter)
            for eta in etas:
                run_prepared(prompter, encoder, episode, steps, FlowConfig(eta=eta), selector, seed, memo=memo)
        return work

    methods = {"baseline": baseline_only}
    methods.update({f"prmagic_{s}": prmagic(s, (1e-3,)) for s in SELECTORS})
    methods["eta_sweep1"] = prmagic("pooled", (1e-3,))
    methods["eta_sweep4"] = prmagic("pooled", SWEEP_ETAS)
    methods["eta_sweep1_masked_image"] = prmagic("masked-image", (1e-3,))
    methods["eta_sweep4_masked_image"] = prmagic("masked-image", SWEEP_ETAS)
    return methods


def run(args) -> int:
    from tqdm.auto import tqdm

    from .baselines import make_baseline
    from .data import shapeworld
    from .models.encoding import Encoder
    from .models.loading import load_sam, resolve_device

    device = resolve_device(args.device)
    model_type = "tiny" if args.backend == "tiny" else args.model_type
    sam = load_sam(model_type, args.checkpoint, device=str(device))
    baseline = make_baseline(args.baseline)
    episodes = shapeworld.episodes(args.episodes + 1, seed=args.seed, size=sam.image_encoder.img_size)
    meters = {}
    for index, episode in enumerate(tqdm(episodes, desc="bench")):
        for name, work in _methods(baseline, episode, args.steps, args.seed).items():
            encoder = Encoder(sam)
            if index == 0:  # warm-up: first calls pay for allocation and kernel selection
                work(encoder)
                continue
            _measure(meters.setdefault(name, Meter()), device, encoder, lambda: work(encoder))
    n = len(episodes) - 1
    base = meters["baseline"].seconds
    report = {
        "ratio_pooled": meters["prmagic_pooled"].seconds / base,
        "ratio_masked_image": meters["prmagic_masked-image"].seconds / base,
        "ratio_crop_pool": meters["prmagic_crop-pool"].seconds / base,
        "ratio_eta_sweep4": meters["eta_sweep4"].seconds / meters["eta_sweep1"].seconds,
        "ratio_eta_sweep4_masked_image": meters["eta_sweep4_masked_image"].seconds
        / meters["eta_sweep1_masked_image"].seconds,
        "encoder_passes": {k: m.passes / n for k, m in meters.items()},
        "seconds_per_episode": {k: round(m.seconds / n, 4) for k, m in meters.items()},
        "peak_cuda_mb": {k: round(m.peak_mb, 1) for k, m in meters.items()} if device.type == "cuda" else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "settings": dict(backend=args.backend, model_type=model_type, baseline=args.baseline, episodes=n,
                         steps=args.steps, seed=args.seed, device=str(device), sweep_etas=list(SWEEP_ETAS)),
    }
    for key in ("ratio_pooled", "ratio_masked_image", "ratio_crop_pool", "ratio_eta_sweep4",
                "ratio_eta_sweep4_masked_image"):
        report[key] = round(report[key], 3)
    width = max(map(len, meters))
    for name, meter in meters.items():
        print(f"{name:>{width}}: {meter.seconds / n:8.3f} s/episode  {meter.passes / n:5.1f} encoder passes/episode")
    print(json.dumps(report, sort_keys=True))
    return 0
