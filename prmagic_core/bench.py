"""``prmagic bench``: what PR-MaGIC costs next to its baseline, measured in one run.

Per episode, each method runs from a cold encoder cache (so its encoder passes are its own):

- ``baseline``: the baseline's own mask (prepare + one decode: candidate 0);
- ``prmagic_<selector>``: T refinement steps + the selector, for pooled, masked-image, crop-pool;
- ``eta_sweep4``: four eta values on one prepared episode (shared encodings, baseline
  preparation and decodes on z0, as ``experiments.py`` sweeps do), against ``eta_sweep1``:
  one eta value.

Times are wall seconds summed over episodes (one untimed warm-up episode first), with one torch
thread on a CPU unless ``--threads`` says otherwise (evaluate's workers run that way); encoder
passes are counted by the :class:`Encoder`; peak memory is per method (CUDA peak on a GPU, the
process's peak RSS on a CPU, its high-water mark reset before each method).

Besides: ``persamf_fit_s``, PerSAM-F's weight fit per episode (and, on the first episode, the
plain autograd loop and the fit with every pixel kept, for their ratios), and ``workers_speedup``,
episodes per second of ``prmagic evaluate``'s loop with 2 worker processes over 1 (one thread
each). The last line is a JSON object with the ratios.
"""
from __future__ import annotations

import json
import resource

import torch

from .timing import clock

SELECTORS = ("pooled", "masked-image", "crop-pool")
SWEEP_ETAS = (1e-2, 1e-3, 1e-4, 1e-5)


def add_arguments(parser) -> None:
    parser.add_argument("--backend", default="tiny", choices=["tiny", "sam"], help="SAM-Tiny or an official checkpoint")
    parser.add_argument("--checkpoint", default=None, help="official SAM checkpoint (sam backend)")
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"],
                        help="which official SAM --checkpoint is")
    parser.add_argument("--baseline", default="persam_f", choices=["persam", "persam_f", "matcher", "gfsam"],
                        help="the baseline to time")
    parser.add_argument("--episodes", type=int, default=4, help="ShapeWorld episodes timed")
    parser.add_argument("--steps", type=int, default=5, help="refinement steps T")
    parser.add_argument("--seed", type=int, default=0, help="episodes and PR-MaGIC's noise")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--image-size", type=int, default=None,
                        help="ShapeWorld's side in px (default: the model's input side)")
    parser.add_argument("--encode-batch", type=int, default=None,
                        help="images per encoder call (default: from a memory budget)")
    parser.add_argument("--speedup-episodes", type=int, default=12,
                        help="episodes run with 1 and with 2 workers for workers_speedup (0 skips it; few "
                             "episodes measure the load imbalance of the last ones, not the throughput)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads while timing (1: as evaluate's worker processes run)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed episodes first (0 on a slow backend)")
    parser.add_argument("--skip-fit-steps", action="store_true",
                        help="do not time the plain autograd fit beside the fast one (minutes at 1024 px)")


class Meter:
    """Seconds, encoder passes and peak memory of one method, summed (peak: maxed) over episodes."""

    def __init__(self):
        self.seconds, self.passes, self.peak_mb = 0.0, 0, 0.0


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # then the peak is the process's since it started


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(meter: Meter, device, encoder, work) -> None:
    _reset_peak(device)
    start, passes = clock(device), encoder.passes
    work()
    meter.seconds += clock(device) - start
    meter.passes += encoder.passes - passes
    meter.peak_mb = max(meter.peak_mb, _peak_mb(device))


def _fit_seconds(sam, encoder, episode, reference: bool) -> dict:
    """Seconds of PerSAM-F's weight fit (the default preset's) on one episode's support; with ``reference``
    also of the plain autograd loop and of the fit with every pixel kept, and the largest weight
    difference to the plain loop."""
    import math

    import numpy as np

    from .baselines import make_baseline, mixing_fit
    from .baselines.persam import encode_episode, fit_mask_weights, prepared_target
    from .models import decoding
    from .models.encoding import to_image_frame

    persam_f = make_baseline("persam_f")
    supports, _ = encode_episode(encoder, episode.support_images, episode.query_image)
    target = prepared_target(encoder, supports, episode.support_masks, persam_f.prototype, persam_f.settings)
    prompts = persam_f.fit_prompts(sam, supports[0], target)
    start = clock(encoder.device)
    fit_mask_weights(sam, supports[0], episode.support_masks[0], prompts, 1000)
    times = {"persamf_fit_s": clock(encoder.device) - start}
    if not reference:
        return times
    # the fit's own inputs, as fit_mask_weights builds them
    with torch.no_grad():
        outputs = to_image_frame(decoding.decode(sam, supports[0].embedding, supports[0], prompts).logits, supports[0])
    truth = torch.as_tensor(np.asarray(episode.support_masks[0], dtype=bool))
    results = {}
    for name, fit in (("persamf_fit_plain_s", mixing_fit.autograd_fit),
                      ("persamf_fit_every_pixel_s", lambda o, t, n: mixing_fit.fit_mixing_weights(o, t, n, math.inf)),
                      ("persamf_fit_fast_s", mixing_fit.fit_mixing_weights)):
        start = clock(encoder.device)
        results[name] = fit(outputs, truth, 1000)[0]
        times[name] = clock(encoder.device) - start
    times["persamf_fit_max_weight_difference"] = float(
        (results["persamf_fit_fast_s"] - results["persamf_fit_plain_s"]).abs().max())
    return times


def _episodes_per_second(baseline, sam, episodes, steps: int, seed: int, workers: int, encode_batch) -> float:
    """Episodes per second of ``prmagic evaluate``'s loop (masked-image selector), one torch thread per process."""
    from .evaluation import evaluate
    from .models.encoding import Encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = clock(sam.device)
        evaluate(baseline, Encoder(sam, batch_size=encode_batch), episodes, steps=steps, seed=seed, progress=False,
                 workers=workers)
        return len(episodes) / (clock(sam.device) - start)
    finally:
        torch.set_num_threads(threads)


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
    torch.set_num_threads(args.threads)
    model_type = "tiny" if args.backend == "tiny" else args.model_type
    sam = load_sam(model_type, args.checkpoint, device=str(device))
    baseline = make_baseline(args.baseline)
    size = args.image_size or sam.image_encoder.img_size
    episodes = shapeworld.episodes(args.episodes + args.warmup, seed=args.seed, size=size)
    meters, fits = {}, []
    for index, episode in enumerate(tqdm(episodes, desc="bench")):
        for name, work in _methods(baseline, episode, args.steps, args.seed).items():
            encoder = Encoder(sam, batch_size=args.encode_batch)
            if index < args.warmup:  # warm-up: first calls pay for allocation and kernel selection
                work(encoder)
                continue
            _measure(meters.setdefault(name, Meter()), device, encoder, lambda: work(encoder))
        if index >= args.warmup:
            first = index == args.warmup and not args.skip_fit_steps
            fits.append(_fit_seconds(sam, Encoder(sam, batch_size=args.encode_batch), episode, reference=first))
    n = args.episodes
    speedup = None
    if args.speedup_episodes > 0 and device.type == "cpu":
        extra = shapeworld.episodes(args.speedup_episodes, seed=args.seed + 1, size=size)
        rates = [_episodes_per_second(baseline, sam, extra, args.steps, args.seed, w, args.encode_batch) for w in (1, 2)]
        speedup = round(rates[1] / rates[0], 3)
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
        "peak_rss_mb": {k: round(m.peak_mb, 1) for k, m in meters.items()} if device.type != "cuda" else None,
        "persamf_fit_s": round(sum(f["persamf_fit_s"] for f in fits) / n, 4),
        "persamf_fit_steps": {k: round(v, 4) if k.endswith("_s") else v for k, v in fits[0].items()},
        "workers_speedup": speedup,
        "settings": dict(backend=args.backend, model_type=model_type, baseline=args.baseline, episodes=n,
                         steps=args.steps, seed=args.seed, device=str(device), sweep_etas=list(SWEEP_ETAS),
                         warmup=args.warmup, image_size=size,
                         encode_batch=Encoder(sam, batch_size=args.encode_batch).batch_size,
                         speedup_episodes=args.speedup_episodes, torch_threads=torch.get_num_threads()),
    }
    if not args.skip_fit_steps:
        plain = fits[0]["persamf_fit_plain_s"]
        report["persamf_fit_steps"]["ratio_every_pixel_vs_plain"] = round(fits[0]["persamf_fit_every_pixel_s"] / plain, 3)
        report["persamf_fit_steps"]["ratio_fast_vs_plain"] = round(fits[0]["persamf_fit_fast_s"] / plain, 3)
    for key in ("ratio_pooled", "ratio_masked_image", "ratio_crop_pool", "ratio_eta_sweep4",
                "ratio_eta_sweep4_masked_image"):
        report[key] = round(report[key], 3)
    width = max(map(len, meters))
    memory = "CUDA peak" if device.type == "cuda" else "peak RSS"
    for name, meter in meters.items():
        print(f"{name:>{width}}: {meter.seconds / n:8.3f} s/episode  {meter.passes / n:5.1f} encoder passes/episode"
              f"  {memory} {meter.peak_mb:8.1f} MB")
    print(f"PerSAM-F fit: {report['persamf_fit_s']:.3f} s/episode; steps on episode 1: {report['persamf_fit_steps']}")
    print(f"workers_speedup (2 workers over 1): {speedup}")
    print(json.dumps(report, sort_keys=True))
    return 0
