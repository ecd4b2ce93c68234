"""The ``prmagic`` command. ``prmagic COMMAND --help`` describes each command and its flags."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import shlex
import sys
import warnings
from pathlib import Path

from .errors import InputWarning, UserError


def _print_json_last(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True))


def cmd_info(args) -> int:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from . import __version__
    from .models.tiny import TINY_CARD, TINY_WEIGHTS

    def installed(distribution: str) -> str:
        try:
            return version(distribution)
        except PackageNotFoundError:
            return "not installed"

    info = {
        "prmagic": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "segment_anything": installed("segment-anything"),
        "timm": installed("timm"),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "tiny_weights": str(TINY_WEIGHTS),
        "tiny_weights_present": TINY_WEIGHTS.is_file(),
        "backends": {
            "tiny": "ready" if TINY_WEIGHTS.is_file() else "missing weights: run prmagic train-tiny",
            "sam": "needs --checkpoint PATH to an official sam_vit_{b,l,h} file"
            + ("" if torch.cuda.is_available() else " (CPU only here: ~17 s per vit_b encode)"),
        },
    }
    if TINY_CARD.is_file():
        info["tiny_card"] = json.loads(TINY_CARD.read_text())
    if args.json:
        _print_json_last(info)
    else:
        card = info.pop("tiny_card", None)
        for key, value in info.items():
            if isinstance(value, dict):
                value = "; ".join(f"{k}: {v}" for k, v in value.items())
            print(f"{key:>22}: {value}")
        if card is not None:
            print(card_lines(card))
    return 0


def card_lines(card: dict) -> str:
    """SAM-Tiny's weights card in a few readable lines (``--json`` keeps the whole card)."""
    evaluation, arch = card.get("evaluation", {}), card.get("architecture", {})
    quality = ", ".join(f"{k} {evaluation[k]:.3f}" for k in ("point_miou", "part_point_miou", "box_miou") if k in evaluation)
    return "\n".join([
        f"{'tiny weights card':>22}: {card.get('command', '?')} (seed {card.get('seed', '?')}, "
        f"{card.get('steps', '?')} steps, {card.get('wall_seconds', 0) / 60:.0f} min wall time, final loss "
        f"{card.get('final_loss', float('nan')):.3f})",
        f"{'':>22}  {arch.get('img_size', '?')} px input, patch {arch.get('patch_size', '?')}, "
        f"encoder {arch.get('encoder_dim', '?')}-d x {arch.get('encoder_depth', '?')} blocks, "
        f"decoder {arch.get('embed_dim', '?')}-d x {arch.get('decoder_depth', '?')} blocks",
        f"{'':>22}  quality on {evaluation.get('episodes', '?')} held-out ShapeWorld episodes "
        f"({evaluation.get('metric', '')}): {quality}",
    ])


def cmd_train_tiny(args) -> int:
    """Train, then evaluate on held-out episodes and write the weights' card beside them."""
    import torch

    from .models.loading import load_sam
    from .models.quality import evaluate_tiny
    from .models.training import TrainConfig, train, write_card

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, scenes=args.scenes, seed=args.seed)
    out_dir = Path(args.out_dir)
    summary = train(cfg, out_dir, resume=args.resume, overwrite=args.overwrite)
    evaluation = evaluate_tiny(load_sam("tiny", out_dir / "sam_tiny.pt"), episodes=args.eval_episodes)
    card = write_card(out_dir / "sam_tiny.json", summary, evaluation, _command_line(args))
    print(json.dumps(card["evaluation"]))
    return 0


def _command_line(args) -> str:
    """The command as given to :func:`main` (from a shell or from Python), for a weights card."""
    return shlex.join(["prmagic", *args.argv])


def cmd_evaluate_tiny(args) -> int:
    from .models.loading import load_sam
    from .models.quality import evaluate_tiny

    sam = load_sam("tiny", args.checkpoint)
    result = evaluate_tiny(sam, episodes=args.episodes, seed=args.seed, size=args.image_size, progress=not args.json)
    if args.json:
        _print_json_last(result)
    else:
        for key in ("point_miou", "part_point_miou", "box_miou"):
            print(f"{key:>16}: {result[key]:.4f}   ({result['metric']}, {args.episodes} episodes of "
                  f"{result['image_size']} px, seed {args.seed})")
    return 0


def cmd_train_dino_tiny(args) -> int:
    """Train DINO-Tiny on a fold's base classes, evaluate it on the fold's novel classes, write its card."""
    import torch

    from .models.dino_quality import evaluate_dino_tiny
    from .models.dino_tiny import load_dino_tiny
    from .models.dino_training import DinoTrainConfig, train
    from .models.training import write_card

    torch.set_num_threads(args.threads)
    cfg = DinoTrainConfig(fold=args.fold, steps=args.steps, scenes=args.scenes, batch=args.batch, seed=args.seed,
                          contrastive_weight=args.contrastive_weight,
                          factor_contrastive_weight=args.factor_contrastive_weight, object_weight=args.object_weight,
                          shuffle_fraction=args.shuffle_fraction, flat_fraction=args.flat_fraction,
                          context_weight=args.context_weight, context_pairs=args.context_pairs,
                          patch_contrastive_weight=args.patch_contrastive_weight,
                          shuffled_shape_weight=args.shuffled_shape_weight,
                          object_head_temperature=args.object_head_temperature, tile=args.tile,
                          render_scales=tuple(args.render_scales), lr=args.lr)
    out_dir = Path(args.out_dir)
    summary = train(cfg, out_dir, resume=args.resume)
    evaluation = evaluate_dino_tiny(load_dino_tiny(out_dir / "dino_tiny.pt"), episodes=args.eval_episodes,
                                    fold=args.fold, size=args.image_size)
    card = write_card(out_dir / "dino_tiny.json", summary, evaluation, _command_line(args), architecture="dino-tiny")
    print(json.dumps(card["evaluation"]))
    return 0


def cmd_evaluate_dino_tiny(args) -> int:
    import torch

    from .models.dino_quality import evaluate_dino_tiny
    from .models.dino_tiny import load_dino_tiny

    torch.set_num_threads(args.threads)
    result = evaluate_dino_tiny(load_dino_tiny(args.checkpoint, fold=args.fold), episodes=args.episodes, fold=args.fold,
                                seed=args.seed, size=args.image_size, progress=not args.json, block=args.block)
    if args.json:
        _print_json_last(result)
    else:
        for key in ("novel_class_accuracy", "patch_foreground_match"):
            print(f"{key:>24}: {result[key]:.4f}   ({args.episodes} novel-class episodes of fold {args.fold}, "
                  f"{args.image_size} px, seed {args.seed})")
    return 0


def _load_episodes(args, size: int):
    """The episodes named by --dataset/--data: ShapeWorld, a folder of episodes, or a real benchmark."""
    if args.dataset == "shapeworld" and args.data is None:
        from .data import shapeworld

        return shapeworld.episodes(args.episodes or 100, seed=args.seed, kind=args.kind, shots=args.shots, size=size,
                                   fold=args.fold)
    from .data.sources import load_source

    if args.data is not None:
        return load_source("folder", args.data)
    return load_source(args.dataset, args.data_root, fold=args.fold, shots=args.shots, seed=args.seed)


TINY_ONLY_SHAPEWORLD = ("prmagic evaluate: warning: SAM-Tiny (--backend tiny) was trained on ShapeWorld only, so its masks "
                        "of other images mean little; pass an official checkpoint: --backend sam --model-type vit_h "
                        "--checkpoint /path/to/sam_vit_h_4b8939.pth")


def looks_like_shapeworld(args, episodes) -> bool:
    """Generated ShapeWorld, or folder episodes of ShapeWorld's 128-px square images (data_samples/shapeworld)."""
    if args.data is None:
        return args.dataset == "shapeworld"
    return all(episode.query_image.shape[:2] == (128, 128) for episode in episodes)


def _check_unseen_by_dino_tiny(args) -> None:
    """ShapeWorld episodes of fold K are matched by fold K's DINO-Tiny, which never saw their classes."""
    from .baselines.matcher.features import matching_encoder_name

    if args.baseline not in ("matcher", "gfsam") or args.dataset != "shapeworld" or args.data is not None:
        return
    if matching_encoder_name(args.matching_encoder, args.backend == "tiny", args.dinov2_checkpoint) != "dino-tiny":
        return
    from .models.dino_tiny import dino_tiny_files

    if not dino_tiny_files(args.fold)[0].is_file():
        raise ValueError(f"--fold {args.fold}: no DINO-Tiny ships for fold {args.fold}, and every other fold's saw "
                         f"its novel classes; train one (prmagic train-dino-tiny --fold {args.fold}) "
                         "or use --matching-encoder sam-tiny")


def cmd_evaluate(args) -> int:
    from . import distributed
    from .baselines import make_baseline, task_kind
    from .data.sources import kind_of
    from .evaluation import accumulate, bto_table, episode_ids, evaluate, failure_lines, in_protocol_order, shard_path, summarise
    from .flow import FlowConfig
    from .models.dino_tiny import matching_fold
    from .models.encoding import Encoder
    from .models.loading import load_sam, resolve_device
    from .presets import get_preset, parse_assignments
    from .results import ResultsFile
    from .select import rule
    from .workers import resolve_workers

    rule(args.selector)  # an unknown name fails here, before any model is loaded
    model_type = "tiny" if args.backend == "tiny" else args.model_type
    if args.backend == "sam" and args.checkpoint is None:
        raise ValueError("--backend sam needs --checkpoint PATH to an official SAM checkpoint")
    if args.persam_f_iters < 1:
        raise ValueError(f"--persam-f-iters must be at least 1, got {args.persam_f_iters}")
    _check_unseen_by_dino_tiny(args)
    overrides = {"resampling": args.resampling, "point_order": "row_col" if args.released_point_order else None,
                 **parse_assignments(args.set)}
    preset = get_preset(args.preset).override(**overrides)
    rank, world, device = distributed.setup(resolve_device(args.device))
    try:
        sam = load_sam(model_type, args.checkpoint, device=str(device))
        # --episode-seed samples the episodes; --seed drives PR-MaGIC's noise only
        episodes = _load_episodes(argparse.Namespace(**{**vars(args), "seed": args.episode_seed}), args.image_size)
        benchmark = None if args.data else args.dataset
        kind = task_kind(kind_of(episodes, args.kind), benchmark, preset)
        if args.backend == "tiny" and not looks_like_shapeworld(args, episodes):
            print(TINY_ONLY_SHAPEWORLD, file=sys.stderr)
        eta = args.eta if args.eta is not None else (1e-3 if kind == "object" else 1e-4)
        flow = FlowConfig(eta=eta, gamma=args.gamma, clip=None if args.clip <= 0 else args.clip,
                          reduction=args.reduction, grad_at=args.grad_at, divergence=args.divergence)
        baseline = make_baseline(args.baseline, kind=kind, train_iters=args.persam_f_iters,
                                 variant=args.matcher_variant, dinov2_checkpoint=args.dinov2_checkpoint,
                                 settings=preset, benchmark=benchmark, matching_encoder=args.matching_encoder,
                                 dino_tiny_fold=matching_fold("folder" if args.data else args.dataset, args.fold))
        baseline_settings = {}
        if args.baseline == "persam_f":
            baseline_settings = {"persam_f_iters": args.persam_f_iters, "persam_f_points": baseline.points}
        elif args.baseline == "matcher":
            baseline_settings = {"matcher_variant": args.matcher_variant, "matcher_preset": baseline.preset.name,
                                 "dinov2_checkpoint": str(args.dinov2_checkpoint or ""),
                                 "matching_encoder": baseline.features(Encoder(sam)).name}
        elif args.baseline == "gfsam":
            baseline_settings = {"matcher_variant": args.matcher_variant,
                                 "dinov2_checkpoint": str(args.dinov2_checkpoint or ""),
                                 "matching_encoder": baseline.features(Encoder(sam)).name}
        limit = min(len(episodes), args.episodes or len(episodes))
        settings = dict(
            baseline=args.baseline, backend=args.backend, model_type=model_type,
            checkpoint=str(args.checkpoint) if args.checkpoint else "shipped tiny weights",
            dataset="folder" if args.data else args.dataset, data=str(args.data or args.data_root or ""),
            kind=kind, fold=args.fold, image_size=args.image_size, shots=args.shots, episodes=limit, episode_seed=args.episode_seed,
            steps=args.steps, selector=args.selector, seed=args.seed, preset=preset.name,
            preset_settings=preset.as_dict(), **baseline_settings, **flow.as_dict(),
        )
        # Under torchrun each rank resumes from its own shard file; rank 0 also keeps the merged
        # table at --out, whose settings are checked before any work.
        sharded_out = args.out is not None and world > 1
        merged = ResultsFile(args.out, settings) if sharded_out and rank == 0 else None
        rows = evaluate(baseline, Encoder(sam, batch_size=args.encode_batch), episodes, steps=args.steps, flow=flow,
                        selector=args.selector, seed=args.seed, preset=preset, settings=settings, limit=limit,
                        out=shard_path(args.out, rank, world) if sharded_out else args.out,
                        shard=(rank, world), progress=not args.json and rank == 0, save_masks=args.save_masks,
                        workers=resolve_workers(args.workers, device, world))
        if world > 1:
            rows = in_protocol_order(distributed.gather_rows(rows), episode_ids(episodes, limit))
        if merged is not None:
            merged.append([row for row in rows if not merged.done(row["episode"])])
    finally:
        distributed.teardown()
    summary = summarise(accumulate(rows), settings, rows)
    summary["device"] = str(device)
    summary["preset"] = preset.name
    code = 0 if summary["episodes"] else 1
    if rank != 0:
        return code
    for line in failure_lines(rows):
        print(f"prmagic evaluate: {line}", file=sys.stderr)
    print(bto_table(summary), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json_last(summary)
    return code


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its help, except where there is none to show (None, off, empty);
    a help column wide enough that every command's line starts beside its name."""

    def __init__(self, prog, indent_increment=2, max_help_position=32, width=None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def add_argument(self, action):
        super().add_argument(action)
        # argparse sizes the help column without the subcommands' extra indent, so a long command name
        # would push its help onto the next line
        if action.help is not argparse.SUPPRESS and hasattr(action, "_get_subactions"):
            longest = max((len(self._format_action_invocation(a)) for a in action._get_subactions()), default=0)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + self._indent_increment)

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """prmagic's parser; its subcommands' parsers are of the same class, so every help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="prmagic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, weights, which backends can run")
    p.add_argument("--json", action="store_true", help="one JSON line instead of readable lines")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train-tiny", help="train SAM-Tiny on ShapeWorld (checkpoints, --resume)")
    p.add_argument("--out-dir", default="runs/train-tiny", help="checkpoints, weights and their card")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    p.add_argument("--scenes", type=int, default=4000, help="pre-drawn ShapeWorld training scenes")
    p.add_argument("--seed", type=int, default=0, help="scenes, initialisation and batches")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out-dir")
    p.add_argument("--overwrite", action="store_true", help="start over in a folder holding an earlier run")
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out episodes for the card")
    p.set_defaults(func=cmd_train_tiny)

    p = sub.add_parser("evaluate-tiny", help="SAM-Tiny's point/box quality on held-out ShapeWorld")
    p.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    p.add_argument("--episodes", type=int, default=200, help="held-out episodes of each kind")
    p.add_argument("--seed", type=int, default=1000, help="evaluation seed (never shared with training scenes)")
    p.add_argument("--image-size", type=int, default=None,
                   help="render size of the episodes (default: SAM-Tiny's input, 128; SAM resizes any size to it)")
    p.add_argument("--json", action="store_true", help="last line: a JSON object with the numbers")
    p.set_defaults(func=cmd_evaluate_tiny)

    p = sub.add_parser("train-dino-tiny", help="train DINO-Tiny on a ShapeWorld fold's base classes (--resume)")
    p.add_argument("--out-dir", default="runs/train-dino-tiny", help="checkpoints, weights and their card")
    p.add_argument("--fold", type=int, default=0, help="train on this fold's base classes only")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps")
    p.add_argument("--scenes", type=int, default=600, help="pre-drawn ShapeWorld training scenes")
    p.add_argument("--batch", type=int, default=32, help="scenes per step")
    p.add_argument("--contrastive-weight", type=float, default=0.5, help="weight of the instance-contrastive term")
    p.add_argument("--factor-contrastive-weight", type=float, default=0.0,
                   help="weight of the factor-contrastive terms: shape on the pooled features' first half, texture on the second")
    p.add_argument("--object-weight", type=float, default=1.0, help="weight of the pooled objects' shape and texture heads")
    p.add_argument("--shuffle-fraction", type=float, default=0.5,
                   help="share of each batch with its tiles shuffled (texture without shape)")
    p.add_argument("--tile", type=int, default=16, help="side in input pixels of the tiles a shuffled image is cut into")
    p.add_argument("--render-scales", type=int, nargs="+", default=[1, 1, 2], metavar="K",
                   help="scenes are rendered at K times the input in turn and reduced to it (default: 1 1 2)")
    p.add_argument("--flat-fraction", type=float, default=0.0,
                   help="share of each batch with its objects painted flat (shape without texture)")
    p.add_argument("--context-weight", type=float, default=0.0,
                   help="weight of the context term: an object pooled in its own scene and pasted into another "
                        "should look the same")
    p.add_argument("--context-pairs", type=int, default=8, help="objects per step shown in two contexts")
    p.add_argument("--patch-contrastive-weight", type=float, default=0.0,
                   help="weight of the patch-contrastive term: a foreground patch near the patches of its class "
                        "in the other images")
    p.add_argument("--shuffled-shape-weight", type=float, default=0.0,
                   help="weight of the shape heads asked for no shape on the tile-shuffled view (a texture alone "
                        "names no shape)")
    p.add_argument("--object-head-temperature", type=float, default=0.0,
                   help="> 0: the object heads are cosine classifiers at this temperature (0: linear)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="scenes, initialisation and batches")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out-dir")
    p.add_argument("--eval-episodes", type=int, default=300, help="held-out novel-class episodes for the card")
    p.add_argument("--image-size", type=int, default=512, help="evaluation episodes' render size")
    p.set_defaults(func=cmd_train_dino_tiny)

    p = sub.add_parser("evaluate-dino-tiny", help="DINO-Tiny's class accuracy and patch matching on novel classes")
    p.add_argument("--checkpoint", default=None, help="default: the weights shipped for --fold")
    p.add_argument("--fold", type=int, default=0, help="episodes of this fold's novel classes")
    p.add_argument("--episodes", type=int, default=300, help="held-out novel-class episodes")
    p.add_argument("--seed", type=int, default=1000, help="evaluation seed (never shared with training scenes)")
    p.add_argument("--image-size", type=int, default=512, help="episodes' render size")
    p.add_argument("--block", type=int, default=-1,
                   help="read this block's tokens (default -1, the last, which Matcher matches with)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="last line: a JSON object with the numbers")
    p.set_defaults(func=cmd_evaluate_dino_tiny)

    p = sub.add_parser("evaluate", help="B / T / O of a baseline with PR-MaGIC over episodes")
    p.add_argument("--baseline", default="persam_f", choices=["persam", "persam_f", "matcher", "gfsam"],
                   help="the few-shot segmenter PR-MaGIC wraps")
    p.add_argument("--matcher-variant", default="released", choices=["released", "transport"],
                   help="how the SAM-space step reaches Matcher's (and GF-SAM's) matching features")
    p.add_argument("--matching-encoder", default=None, choices=["dino-tiny", "sam-tiny", "dinov2"],
                   help="what Matcher and GF-SAM match with (default: dinov2 with --dinov2-checkpoint, else dino-tiny)")
    p.add_argument("--dinov2-checkpoint", default=None,
                   help="Matcher / GF-SAM on the sam backend: a local DINOv2 ViT-L/14 checkpoint")
    p.add_argument("--backend", default="tiny", choices=["tiny", "sam"],
                   help="tiny: the shipped SAM-Tiny (knows only ShapeWorld); sam: an official checkpoint")
    p.add_argument("--checkpoint", default=None, help="official SAM checkpoint (sam backend)")
    p.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"],
                   help="which official SAM --checkpoint is")
    p.add_argument("--dataset", default="shapeworld",
                   choices=["shapeworld", "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"],
                   help="episodes: generated ShapeWorld, a folder (--data) or a benchmark (--data-root)")
    p.add_argument("--data", default=None,
                   help="the folder that holds episode folders (<DIR>/<episode>/support.jpg, support_mask.png, query.jpg)")
    p.add_argument("--data-root", default=None, help="root of a benchmark's standard layout")
    p.add_argument("--fold", type=int, default=0,
                   help="a benchmark's fold; ShapeWorld: episodes of this fold's novel classes only")
    p.add_argument("--kind", default="object", choices=["object", "part"], help="ShapeWorld episodes")
    p.add_argument("--image-size", type=int, default=512, help="ShapeWorld episodes' render size (SAM resizes it)")
    p.add_argument("--shots", type=int, default=1, help="support images per episode")
    p.add_argument("--episodes", type=int, default=None, help="ShapeWorld: how many (default 100); others: at most")
    p.add_argument("--steps", type=int, default=5, help="refinement steps T (T + 1 candidates)")
    p.add_argument("--eta", type=float, default=None,
                   help="default 1e-3 (objects) / 1e-4 (parts, and the benchmarks the preset runs as parts)")
    p.add_argument("--gamma", type=float, default=0.1, help="noise scale: std sqrt(2 eta gamma) per step")
    p.add_argument("--clip", type=float, default=0.1, help="clip of the gradient's elements; 0 turns clipping off")
    p.add_argument("--reduction", default="sum", choices=["sum", "mean", "foreground"],
                   help="d_phi from the decoder's logits: sum (released), mean, or foreground pixels only")
    p.add_argument("--grad-at", default="z0", choices=["z0", "zt"],
                   help="gradient at the original embedding (released) or the moved one (the paper's equation)")
    p.add_argument("--divergence", default="kl", choices=["kl", "logd", "js"], help="f-divergence: sets the drift weight")
    p.add_argument("--selector", default="masked-image",
                   help="top-1 selector, any of select.FAMILY: the release's (masked-image, masked-image-iou-margin, "
                        "crop-pool, pooled), the fork's (guarded, rank-sum, median-rank, consensus), ours "
                        "(contrastive, centred, prototype-iou, purity, vote), references (random, fixed-step, oracle)")
    p.add_argument("--preset", default="release", choices=["release", "release-v1", "corrected", "principled"],
                   help="which behaviour every component has (README: presets); flags below override it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one preset setting, e.g. --set cascade_box=each --set alpha_s=0.25 (repeatable)")
    p.add_argument("--resampling", default=None, choices=["fixed", "fresh"],
                   help="fixed: the same random prompt choices every step; fresh: new ones (as released); "
                        "default: the preset's")
    p.add_argument("--released-point-order", action="store_true",
                   help="PerSAM-F: the first release's (row, col) extra points (= --set point_order=row_col)")
    p.add_argument("--persam-f-iters", type=int, default=1000, help="PerSAM-F's fine-tuning iterations")
    p.add_argument("--seed", type=int, default=0, help="PR-MaGIC's noise (the release averages 42..46)")
    p.add_argument("--episode-seed", type=int, default=0, help="episode sampling (benchmarks, ShapeWorld)")
    p.add_argument("--device", default="auto", help="under torchrun: cuda:LOCAL_RANK or cpu per rank")
    p.add_argument("--out", default=None,
                   help="results CSV, written per episode, resumable; under torchrun also one file per rank beside it")
    p.add_argument("--save-masks", default=None, metavar="DIR",
                   help="draw B, T, O and every candidate on each query image: DIR/<episode>/{B,T,O,candidate_<t>}.png")
    p.add_argument("--json", action="store_true", help="last line: a JSON object with the results and settings")
    p.add_argument("--workers", type=int, default=None,
                   help="CPU worker processes, one thread each (default: every core; 1 on a GPU or under torchrun)")
    p.add_argument("--encode-batch", type=int, default=None,
                   help="images per SAM encoder call (default: as many as a memory budget allows)")
    p.set_defaults(func=cmd_evaluate)

    # Commands that live in their own module: each provides add_arguments(parser) and run(args) -> int.
    for name, module, help_text in (
        ("figures", "figures", "run the notebooks with papermill; write every figure"),
        ("bench", "bench", "seconds and encoder passes: baseline vs PR-MaGIC"),
    ):
        p = sub.add_parser(name, help=help_text)
        command = importlib.import_module(f"{__package__}.{module}")
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


# Checked before any work, so that a bad value is one line naming its argument: dest -> (test, what it must be).
ARGUMENT_RULES = {
    "eta": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "gamma": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "clip": (math.isfinite, "a finite number (0 or less turns clipping off)"),
    "episodes": (lambda v: v >= 1, "at least 1"),
    "eval_episodes": (lambda v: v >= 1, "at least 1"),
    "steps": (lambda v: v >= 0, "at least 0"),
    "scenes": (lambda v: v >= 1, "at least 1"),
    "threads": (lambda v: v >= 1, "at least 1"),
    "shots": (lambda v: v >= 1, "at least 1"),
    "fold": (lambda v: v >= 0, "at least 0"),
    "seed": (lambda v: v >= 0, "at least 0"),
    "episode_seed": (lambda v: v >= 0, "at least 0"),
    "workers": (lambda v: v >= 1, "at least 1"),
    "encode_batch": (lambda v: v >= 1, "at least 1"),
    "image_size": (lambda v: v >= 16, "at least 16"),
    "speedup_episodes": (lambda v: v >= 0, "at least 0"),
    "warmup": (lambda v: v >= 0, "at least 0"),
}


def check_arguments(args) -> None:
    """Raise a UserError naming the first numeric argument that breaks its rule in ARGUMENT_RULES."""
    for dest, (valid, what) in ARGUMENT_RULES.items():
        value = getattr(args, dest, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not valid(value):
            raise UserError(f"--{dest.replace('_', '-')} must be {what}, got {value}")


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def _warning_printer(command: str, show_other):
    """A ``warnings.showwarning`` that prints an InputWarning as one line, and others as before."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"prmagic {command}: warning: {_one_line(message)}", file=sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


def main(argv=None) -> int:
    """Run one command. A user's mistake (any ValueError, UserError included, an OSError or a
    non-finite flow) is one line on stderr and exit code 2; anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputWarning)
        warnings.showwarning = _warning_printer(args.command, warnings.showwarning)
        try:
            check_arguments(args)
            return args.func(args)
        except (ValueError, OSError, FloatingPointError) as err:
            print(f"prmagic {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # Results and checkpoints are written atomically: a rerun (with --resume for train-tiny) continues.
            print(f"prmagic {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
