"""The ``prmagic`` command: info, train-tiny, evaluate-tiny, evaluate."""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path


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
        for key, value in info.items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_train_tiny(args) -> int:
    """Train, then evaluate on held-out episodes and write the weights' card beside them."""
    import torch

    from .models.loading import load_sam
    from .models.quality import evaluate_tiny
    from .models.training import TrainConfig, train, write_card

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, scenes=args.scenes, seed=args.seed)
    out_dir = Path(args.out_dir)
    summary = train(cfg, out_dir, resume=args.resume)
    evaluation = evaluate_tiny(load_sam("tiny", out_dir / "sam_tiny.pt"), episodes=args.eval_episodes)
    command = "prmagic train-tiny " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train-tiny"] else "prmagic train-tiny"
    card = write_card(out_dir / "sam_tiny.json", summary, evaluation, command)
    print(json.dumps(card["evaluation"]))
    return 0


def cmd_evaluate_tiny(args) -> int:
    from .models.loading import load_sam
    from .models.quality import evaluate_tiny

    sam = load_sam("tiny", args.checkpoint)
    result = evaluate_tiny(sam, episodes=args.episodes, seed=args.seed, progress=not args.json)
    if args.json:
        _print_json_last(result)
    else:
        for key in ("point_miou", "part_point_miou", "box_miou"):
            print(f"{key:>16}: {result[key]:.4f}   ({result['metric']}, {args.episodes} episodes, seed {args.seed})")
    return 0


def _load_episodes(args, size: int):
    """The episodes named by --dataset/--data: ShapeWorld, a folder of episodes, or a real benchmark."""
    if args.dataset == "shapeworld" and args.data is None:
        from .data import shapeworld

        return shapeworld.episodes(args.episodes or 100, seed=args.seed, kind=args.kind, shots=args.shots, size=size)
    from .data.sources import load_source

    if args.data is not None:
        return load_source("folder", args.data)
    return load_source(args.dataset, args.data_root, fold=args.fold, shots=args.shots, seed=args.seed)


def cmd_evaluate(args) -> int:
    from . import distributed
    from .baselines import make_baseline
    from .data.sources import kind_of
    from .evaluation import accumulate, episode_ids, evaluate, in_protocol_order, shard_path, summarise
    from .flow import FlowConfig
    from .models.encoding import Encoder
    from .models.loading import load_sam, resolve_device
    from .results import ResultsFile

    model_type = "tiny" if args.backend == "tiny" else args.model_type
    if args.backend == "sam" and args.checkpoint is None:
        raise ValueError("--backend sam needs --checkpoint PATH to an official SAM checkpoint")
    if args.persam_f_iters < 1:
        raise ValueError(f"--persam-f-iters must be at least 1, got {args.persam_f_iters}")
    rank, world, device = distributed.setup(resolve_device(args.device))
    try:
        sam = load_sam(model_type, args.checkpoint, device=str(device))
        # --episode-seed samples the episodes; --seed drives PR-MaGIC's noise only
        episodes = _load_episodes(argparse.Namespace(**{**vars(args), "seed": args.episode_seed}),
                                  sam.image_encoder.img_size)
        kind = kind_of(episodes, args.kind)
        eta = args.eta if args.eta is not None else (1e-3 if kind == "object" else 1e-4)
        flow = FlowConfig(eta=eta, gamma=args.gamma, clip=None if args.clip <= 0 else args.clip,
                          reduction=args.reduction, grad_at=args.grad_at, divergence=args.divergence)
        from .baselines.matcher import BENCHMARK_PRESETS

        baseline = make_baseline(args.baseline, kind=kind, released_point_order=args.released_point_order,
                                 train_iters=args.persam_f_iters, variant=args.matcher_variant,
                                 dinov2_checkpoint=args.dinov2_checkpoint, preset=BENCHMARK_PRESETS.get(args.dataset))
        baseline_settings = {}
        if args.baseline == "persam_f":
            baseline_settings = {"persam_f_iters": args.persam_f_iters}
        elif args.baseline == "matcher":
            baseline_settings = {"matcher_variant": args.matcher_variant, "matcher_preset": baseline.preset.name,
                                 "dinov2_checkpoint": str(args.dinov2_checkpoint or "")}
        elif args.baseline == "gfsam":
            baseline_settings = {"matcher_variant": args.matcher_variant,
                                 "dinov2_checkpoint": str(args.dinov2_checkpoint or ""),
                                 "matching_features": baseline.features(Encoder(sam)).name}
        limit = min(len(episodes), args.episodes or len(episodes))
        settings = dict(
            baseline=args.baseline, backend=args.backend, model_type=model_type,
            checkpoint=str(args.checkpoint) if args.checkpoint else "shipped tiny weights",
            dataset="folder" if args.data else args.dataset, data=str(args.data or args.data_root or ""),
            kind=kind, fold=args.fold, shots=args.shots, episodes=limit, episode_seed=args.episode_seed,
            steps=args.steps, selector=args.selector, seed=args.seed, resampling=args.resampling,
            released_point_order=args.released_point_order, **baseline_settings, **flow.as_dict(),
        )
        # Under torchrun each rank resumes from its own shard file; rank 0 also keeps the merged
        # table at --out, whose settings are checked before any work.
        sharded_out = args.out is not None and world > 1
        merged = ResultsFile(args.out, settings) if sharded_out and rank == 0 else None
        rows = evaluate(baseline, Encoder(sam), episodes, steps=args.steps, flow=flow, selector=args.selector,
                        seed=args.seed, resampling=args.resampling, settings=settings, limit=limit,
                        out=shard_path(args.out, rank, world) if sharded_out else args.out,
                        shard=(rank, world), progress=not args.json and rank == 0)
        if world > 1:
            rows = in_protocol_order(distributed.gather_rows(rows), episode_ids(episodes, limit))
        if merged is not None:
            merged.append([row for row in rows if not merged.done(row["episode"])])
    finally:
        distributed.teardown()
    summary = summarise(accumulate(rows), settings)
    summary["device"] = str(device)
    code = 0 if summary["episodes"] else 1
    if rank != 0:
        return code
    table = sys.stderr if args.json else sys.stdout
    print(f"{'':>10} {'mIoU':>8} {'FB-IoU':>8} {'ep-FB-mIoU':>11}   ({summary['episodes']} episodes, "
          f"{summary['failed_episodes']} failed)", file=table)
    for v, label in (("baseline", "B"), ("top1", "T"), ("oracle", "O")):
        print(f"{label + ' ' + v:>10} {summary[v + '_miou']:8.2f} {summary[v + '_fb_iou']:8.2f} "
              f"{summary[v + '_episode_fb_miou']:11.2f}", file=table)
    if args.json:
        _print_json_last(summary)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prmagic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, weights, which backends can run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train-tiny", help="train SAM-Tiny on ShapeWorld (checkpoints, --resume)")
    p.add_argument("--out-dir", default="runs/train-tiny")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-episodes", type=int, default=200, help="held-out episodes for the card")
    p.set_defaults(func=cmd_train_tiny)

    p = sub.add_parser("evaluate-tiny", help="SAM-Tiny's point/box quality on held-out ShapeWorld")
    p.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_tiny)

    p = sub.add_parser("evaluate", help="B / T / O of a baseline with PR-MaGIC over episodes")
    p.add_argument("--baseline", default="persam_f", choices=["persam", "persam_f", "matcher", "gfsam"])
    p.add_argument("--matcher-variant", default="released", choices=["released", "transport"],
                   help="how the SAM-space step reaches Matcher's (and GF-SAM's) matching features")
    p.add_argument("--dinov2-checkpoint", default=None,
                   help="Matcher / GF-SAM on the sam backend: a local DINOv2 ViT-L/14 checkpoint "
                        "(pip install '.[matcher-sam]')")
    p.add_argument("--backend", default="tiny", choices=["tiny", "sam"])
    p.add_argument("--checkpoint", default=None, help="official SAM checkpoint (sam backend)")
    p.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--dataset", default="shapeworld",
                   choices=["shapeworld", "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"])
    p.add_argument("--data", default=None, help="a folder of episodes (folder format)")
    p.add_argument("--data-root", default=None, help="root of a benchmark's standard layout")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--kind", default="object", choices=["object", "part"], help="ShapeWorld episodes")
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--episodes", type=int, default=None, help="ShapeWorld: how many (default 100); others: at most")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--eta", type=float, default=None, help="default 1e-3 (objects) / 1e-4 (parts)")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=0.1, help="0 turns clipping off")
    p.add_argument("--reduction", default="sum", choices=["sum", "mean", "foreground"])
    p.add_argument("--grad-at", default="z0", choices=["z0", "zt"])
    p.add_argument("--divergence", default="kl", choices=["kl", "logd", "js"])
    p.add_argument("--selector", default="masked-image", choices=["masked-image", "crop-pool", "pooled"])
    p.add_argument("--resampling", default="fixed", choices=["fixed", "fresh"])
    p.add_argument("--released-point-order", action="store_true", help="PerSAM-F: the release's (row, col) quirk")
    p.add_argument("--persam-f-iters", type=int, default=1000, help="PerSAM-F's fine-tuning iterations")
    p.add_argument("--seed", type=int, default=0, help="PR-MaGIC's noise (the release averages 42..46)")
    p.add_argument("--episode-seed", type=int, default=0, help="episode sampling (benchmarks, ShapeWorld)")
    p.add_argument("--device", default="auto", help="under torchrun: cuda:LOCAL_RANK or cpu per rank")
    p.add_argument("--out", default=None,
                   help="results CSV, written per episode, resumable; under torchrun also one file per rank beside it")
    p.add_argument("--json", action="store_true", help="last line: a JSON object with the results and settings")
    p.set_defaults(func=cmd_evaluate)

    # Commands that live in their own module: each provides add_arguments(parser) and run(args) -> int.
    for name, module, help_text in (
        ("figures", "figures", "run the notebooks with papermill and regenerate every figure"),
        ("bench", "bench", "time the baseline and PR-MaGIC with each selector; count encoder passes"),
    ):
        p = sub.add_parser(name, help=help_text)
        command = importlib.import_module(f"{__package__}.{module}")
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"prmagic {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
