"""The paper's table: PerSAM-F and Matcher, with PR-MaGIC, on the six benchmarks (SPEC sections 6 and 7).

    python scripts/paper_table.py --out-dir runs/paper --data-root /data --dry-run
    python scripts/paper_table.py --out-dir runs/paper --data-root /data --measure 20 \\
        --evaluate-args "--backend sam --model-type vit_h --checkpoint /ckpt/sam_vit_h_4b8939.pth"
    python scripts/paper_table.py --out-dir runs/paper --data-root /data \\
        --evaluate-args "--backend sam --model-type vit_h --checkpoint /ckpt/sam_vit_h_4b8939.pth" \\
        --launcher "torchrun --standalone --nproc_per_node 8"

``--data-root`` holds one folder per benchmark, named fss, coco, lvis, paco, pascal_part and
dis5k, each in its standard layout (``--root NAME=PATH`` points one elsewhere); a benchmark
without a folder is skipped and listed. A cell is one (baseline, benchmark, fold, seed) and runs
as ``prmagic evaluate ... --out OUT_DIR/cells/<baseline>/<benchmark>-fold<f>-seed<s>.csv``, so
a killed sweep resumes down to the episode. Protocol: 1-shot, episodes sampled with seed 0,
seeds 42..46 for PR-MaGIC's noise (the release averages them), T = 5, eta 1e-3 on semantic and
1e-4 on part benchmarks, the masked-image selector.

Writes OUT_DIR/cells.csv (one row per cell), OUT_DIR/table.csv (tidy: per baseline, benchmark,
metric and variant, the mean over seeds of the mean over folds, and its std over seeds) and
OUT_DIR/table.md (the paper's layout: B / T / O per benchmark, one block per metric, the paper's
mIoU beside). A benchmark's entry needs every fold of a seed; missing seeds are left out and
counted.

``--dry-run`` prints the plan (cells, episodes, what is done) and a GPU-hour estimate, from
per-episode seconds measured by ``--measure N`` (N episodes of fold 0 per baseline and benchmark,
saved in OUT_DIR/measure/seconds.json and used by later dry runs) or else from the stated
assumptions of COST_MODEL.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prmagic_core.data.benchmarks import BENCHMARKS, load_benchmark
from prmagic_core.evaluation import VARIANTS, accumulate
from prmagic_core.metrics import METRIC_NAMES

SEEDS = (42, 43, 44, 45, 46)
EPISODE_SEED = 0
ETA = {"object": 1e-3, "part": 1e-4}
LABELS = {"persam": "PerSAM", "persam_f": "PerSAM-F", "matcher": "Matcher", "gfsam": "GF-SAM"}
METRICS = ("miou", "fb_iou", "episode_fb_miou")
# SPEC section 6: the paper's 1-shot mIoU %, B / T / O.
PAPER = {
    "persam_f": {"fss": (58.41, 67.19, 72.45), "coco": (44.64, 46.83, 51.74), "lvis": (42.37, 44.48, 47.29),
                 "paco": (39.60, 40.72, 43.39), "pascal_part": (42.72, 43.87, 46.43), "dis5k": (46.82, 49.99, 53.46)},
    "matcher": {"fss": (92.08, 92.06, 93.55), "coco": (69.53, 71.23, 76.14), "lvis": (59.39, 61.52, 64.75),
                "paco": (50.27, 54.08, 56.71), "pascal_part": (54.76, 58.28, 61.13), "dis5k": (46.65, 55.08, 58.10)},
}
# Seconds per episode when nothing was measured. Assumptions, not measurements: SAM vit_h's
# encoder takes about 0.45 s per image on an A100-class GPU, and a 1-shot episode with T = 5 and
# the masked-image selector encodes up to 9 images (support, query, masked support, 6 masked
# candidates); the rest is PerSAM-F's 1000-iteration mask-weight fit plus ~18 decoder calls and
# 5 decoder backward passes (~1.5 s), and for Matcher its DINOv2 ViT-L/14 features and its
# prompt-subset decoding at each of the 6 candidates (~5 s, a guess: measure it); GF-SAM decodes up
# to 128 single-point prompts per candidate and back-propagates through its merged ones (~8 s, a guess).
ENCODER_SECONDS, ENCODES_PER_EPISODE = 0.45, 9
COST_MODEL = {"persam_f": ENCODES_PER_EPISODE * ENCODER_SECONDS + 1.5,
              "matcher": ENCODES_PER_EPISODE * ENCODER_SECONDS + 5.0,
              "gfsam": ENCODES_PER_EPISODE * ENCODER_SECONDS + 8.0}


@dataclass(frozen=True)
class Cell:
    baseline: str
    benchmark: str
    root: Path
    fold: int
    seed: int
    episodes: int

    def path(self, base: Path) -> Path:
        return base / self.baseline / f"{self.benchmark}-fold{self.fold}-seed{self.seed}.csv"

    def argv(self, extra: list) -> list:
        """The ``prmagic`` arguments of this cell (``--out`` aside)."""
        return ["evaluate", "--baseline", self.baseline, "--dataset", self.benchmark, "--data-root", str(self.root),
                "--fold", str(self.fold), "--shots", "1", "--seed", str(self.seed),
                "--episode-seed", str(EPISODE_SEED), "--eta", str(ETA[BENCHMARKS[self.benchmark].kind]),
                "--episodes", str(self.episodes), *extra]


def default_baselines() -> list:
    """PerSAM-F, and Matcher when its module imports."""
    try:
        importlib.import_module("prmagic_core.baselines.matcher")
    except ImportError:
        return ["persam_f"]
    return ["persam_f", "matcher"]


def roots(data_root, overrides: list, benchmarks: list) -> tuple[dict, dict]:
    """(benchmark -> root folder, benchmark -> why it is skipped)."""
    given = {name: Path(data_root) / name for name in benchmarks} if data_root else {}
    for item in overrides:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS:
            raise ValueError(f"--root wants NAME=PATH with NAME one of {', '.join(BENCHMARKS)}, got {item!r}")
        given[name] = Path(path)
    found, skipped = {}, {}
    for name in benchmarks:
        if name not in given:
            skipped[name] = "no --data-root or --root"
        elif not given[name].is_dir():
            skipped[name] = f"{given[name]} is not a folder"
        else:
            found[name] = given[name]
    return found, skipped


def plan(baselines: list, benchmark_roots: dict, seeds, cap: int | None = None) -> list:
    """Every cell, with its episode count from the benchmark's own loader (at most ``cap``)."""
    counts = {}
    for name, root in benchmark_roots.items():
        for fold in range(BENCHMARKS[name].num_folds):
            count = len(load_benchmark(name, root, fold=fold, shots=1, seed=EPISODE_SEED))
            counts[name, fold] = min(count, cap) if cap else count
    return [Cell(baseline, name, root, fold, seed, counts[name, fold])
            for baseline in baselines for name, root in benchmark_roots.items()
            for fold in range(BENCHMARKS[name].num_folds) for seed in seeds]


def read_rows(path: Path) -> list:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def command_file(path: Path) -> Path:
    return path.with_name(path.name + ".command.json")


def complete(cell: Cell, base: Path, extra: list) -> bool:
    """All episodes there, written by this very command (other evaluate arguments mean other results)."""
    path = cell.path(base)
    stored = command_file(path)
    return (len(read_rows(path)) == cell.episodes and stored.is_file()
            and json.loads(stored.read_text()) == cell.argv(extra))


def run_cell(cell: Cell, base: Path, launcher: list, extra: list) -> bool:
    """Run (or resume) one cell through ``prmagic evaluate``; True when it is complete."""
    if complete(cell, base, extra):
        return True
    path = cell.path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [*launcher, "-m", "prmagic_core.cli", *cell.argv(extra), "--out", str(path)]
    print(f"\n# {shlex.join(command)}", flush=True)
    # 0: done; 1: done but no episode scored; anything else (2: refused, e.g. other settings) is a failure.
    if subprocess.run(command).returncode not in (0, 1) or len(read_rows(path)) != cell.episodes:
        print(f"# cell incomplete: {path}", file=sys.stderr, flush=True)
        return False
    command_file(path).write_text(json.dumps(cell.argv(extra)))
    return True


def scores(rows: list) -> dict:
    """'<variant>_<metric>' -> value (unrounded), plus episode and failure counts, from a cell's rows."""
    accs = accumulate(rows)
    values = {f"{v}_{m}": accs[v].summary()[m] for v in VARIANTS for m in METRICS}
    return values | {"episodes": accs["baseline"].episodes, "failed_episodes": len(accs["baseline"].failures)}


def cell_table(cells: list, base: Path, extra: list) -> list:
    out = []
    for cell in cells:
        done = complete(cell, base, extra)
        row = {"baseline": cell.baseline, "benchmark": cell.benchmark, "fold": cell.fold, "seed": cell.seed,
               "planned_episodes": cell.episodes, "complete": done}
        out.append(row | (scores(read_rows(cell.path(base))) if done else {}))
    return out


def aggregate(cell_rows: list) -> list:
    """Per baseline, benchmark, metric and variant: mean over seeds of the mean over folds (seeds with every fold)."""
    groups = {}
    for row in cell_rows:
        groups.setdefault((row["baseline"], row["benchmark"]), []).append(row)
    tidy = []
    for (baseline, benchmark), rows in groups.items():
        by_seed = {}
        for row in rows:
            by_seed.setdefault(row["seed"], []).append(row)
        full = {seed: folds for seed, folds in by_seed.items() if all(r["complete"] for r in folds)}
        for metric in METRICS:
            for variant in VARIANTS:
                key = f"{variant}_{metric}"
                per_seed = [statistics.fmean(r[key] for r in folds) for folds in full.values()]
                tidy.append({
                    "baseline": baseline, "benchmark": benchmark, "metric": metric, "variant": variant,
                    "mean": round(statistics.fmean(per_seed), 2) if per_seed else math.nan,
                    "std_over_seeds": round(statistics.stdev(per_seed), 2) if len(per_seed) > 1 else math.nan,
                    "seeds": len(full), "seeds_planned": len(by_seed), "folds": BENCHMARKS[benchmark].num_folds,
                })
    return tidy


def markdown(tidy: list, baselines: list, benchmarks: list, seeds) -> str:
    value = {(t["baseline"], t["benchmark"], t["metric"], t["variant"]): t for t in tidy}
    lines = [f"1-shot, B / T / O = baseline / PR-MaGIC top-1 / oracle; mean over seeds {', '.join(map(str, seeds))}"
             " of the mean over folds (a benchmark's count of seeds with every fold in brackets when short)."]
    header = "| Baseline | " + " | ".join(BENCHMARKS[b].title for b in benchmarks) + " |"
    for metric in METRICS:
        lines += ["", f"### {METRIC_NAMES[metric]}", "", header, "|---" * (len(benchmarks) + 1) + "|"]
        for baseline in baselines:
            entries = []
            for benchmark in benchmarks:
                found = [value.get((baseline, benchmark, metric, v)) for v in VARIANTS]
                if found[0] is None or found[0]["seeds"] == 0:
                    entries.append("n/a")
                    continue
                short = f" [{found[0]['seeds']}/{found[0]['seeds_planned']}]" if found[0]["seeds"] < len(seeds) else ""
                entries.append(" / ".join(f"{t['mean']:.2f}" for t in found) + short)
            lines.append(f"| {LABELS.get(baseline, baseline)} | " + " | ".join(entries) + " |")
            if metric == "miou" and baseline in PAPER:
                paper = [" / ".join(f"{x:.2f}" for x in PAPER[baseline][b]) for b in benchmarks]
                lines.append(f"| {LABELS[baseline]} (paper) | " + " | ".join(paper) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def episode_seconds(rows: list) -> float:
    """Median seconds of an episode (prepare + refine + select) over the rows that ran: robust to warm-up."""
    totals = [sum(json.loads(r["seconds"]).values()) for r in rows if r["status"] == "ok"]
    if not totals:
        raise ValueError("no episode of the measuring run succeeded; see its rows for the reasons")
    return statistics.median(totals)


def measure(cells: list, out_dir: Path, episodes: int, launcher: list, extra: list) -> dict:
    """Seconds per episode for each (baseline, benchmark), from ``episodes`` episodes of fold 0 and the first seed."""
    first = {}
    for cell in cells:
        first.setdefault((cell.baseline, cell.benchmark), cell)
    base, measured = out_dir / "measure", {}
    for (baseline, benchmark), cell in first.items():
        probe = Cell(baseline, benchmark, cell.root, 0, cell.seed, min(episodes, cell.episodes))
        if not run_cell(probe, base, launcher, extra):
            raise ValueError(f"the measuring run of {baseline} on {benchmark} did not finish; see its output above")
        measured[f"{baseline}/{benchmark}"] = round(episode_seconds(read_rows(probe.path(base))), 4)
    (base / "seconds.json").write_text(json.dumps(measured, indent=2, sort_keys=True))
    return measured


def costs(out_dir: Path) -> tuple[dict, str]:
    measured = out_dir / "measure" / "seconds.json"
    if measured.is_file():
        return json.loads(measured.read_text()), f"measured, {measured}"
    return {}, (f"assumed (COST_MODEL in {Path(__file__).name}): {ENCODES_PER_EPISODE} vit_h encodes x "
                f"{ENCODER_SECONDS} s on an A100-class GPU + baseline overhead")


def print_plan(cells: list, skipped: dict, out_dir: Path, extra: list) -> None:
    measured, source = costs(out_dir)
    groups = {}
    for cell in cells:
        groups.setdefault((cell.baseline, cell.benchmark), []).append(cell)
    print(f"{'baseline':<10} {'benchmark':<12} {'folds':>5} {'cells':>5} {'episodes':>9} {'done':>9} "
          f"{'left':>9} {'s/episode':>9} {'GPU-h left':>10}")
    total = {"cells": 0, "episodes": 0, "done": 0, "left": 0, "hours": 0.0}
    for (baseline, benchmark), group in groups.items():
        done = sum(min(len(read_rows(c.path(out_dir / "cells"))), c.episodes) for c in group)
        episodes = sum(c.episodes for c in group)
        seconds = measured.get(f"{baseline}/{benchmark}", COST_MODEL.get(baseline, math.nan))
        hours = (episodes - done) * seconds / 3600
        print(f"{baseline:<10} {benchmark:<12} {BENCHMARKS[benchmark].num_folds:>5} {len(group):>5} {episodes:>9} "
              f"{done:>9} {episodes - done:>9} {seconds:>9.2f} {hours:>10.1f}")
        for key, add in (("cells", len(group)), ("episodes", episodes), ("done", done),
                         ("left", episodes - done), ("hours", hours)):
            total[key] += add
    print(f"{'total':<10} {'':<12} {'':>5} {total['cells']:>5} {total['episodes']:>9} {total['done']:>9} "
          f"{total['left']:>9} {'':>9} {total['hours']:>10.1f}")
    print(f"seconds per episode: {source}; GPU-hours are per GPU (wall clock ~ GPU-hours / GPUs)")
    print(f"each cell runs: prmagic {shlex.join(cells[0].argv(extra))} --out ..." if cells else "no cells")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--data-root", default=None, help="folder with one subfolder per benchmark, named as --root")
    parser.add_argument("--root", action="append", default=[], metavar="NAME=PATH",
                        help=f"one benchmark's root; NAME in {', '.join(BENCHMARKS)}")
    parser.add_argument("--baselines", nargs="+", default=None, help="default: persam_f, and matcher if it imports; gfsam too")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--episodes", type=int, default=None, help="at most this many per cell (smoke runs)")
    parser.add_argument("--evaluate-args", default="", help="appended to every cell's prmagic evaluate (backend ...)")
    parser.add_argument("--launcher", default=shlex.quote(sys.executable),
                        help='runs "-m prmagic_core.cli"; e.g. "torchrun --standalone --nproc_per_node 8"')
    parser.add_argument("--dry-run", action="store_true", help="print the plan and a GPU-hour estimate; run nothing")
    parser.add_argument("--measure", type=int, default=None, metavar="N",
                        help="time N episodes per baseline and benchmark, then print the plan")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        baselines = args.baselines or default_baselines()
        found, skipped = roots(args.data_root, args.root, args.benchmarks)
        cells = plan(baselines, found, args.seeds, args.episodes)
        extra, launcher = shlex.split(args.evaluate_args), shlex.split(args.launcher)
        if args.measure:
            measure(cells, args.out_dir, args.measure, launcher, extra)
    except ValueError as err:  # BenchmarkError is one
        print(f"paper_table: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run or args.measure:
        print_plan(cells, skipped, args.out_dir, extra)
        return 0
    finished = [run_cell(cell, args.out_dir / "cells", launcher, extra) for cell in cells]
    cell_rows = cell_table(cells, args.out_dir / "cells", extra)
    tidy = aggregate(cell_rows)
    write_csv(args.out_dir / "cells.csv", cell_rows)
    write_csv(args.out_dir / "table.csv", tidy)
    (args.out_dir / "table.md").write_text(markdown(tidy, baselines, list(found), args.seeds))
    print(f"\n{sum(finished)} of {len(cells)} cells complete; wrote {args.out_dir / 'table.md'}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0 if all(finished) else 1


if __name__ == "__main__":
    sys.exit(main())
