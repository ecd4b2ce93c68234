"""The selector study outside the notebook: build its tables, then report from whatever is there.

    python scripts/selector_study.py --cache-dir runs/study --dev-episodes 8 --test-episodes 15 --seeds 0 1
    python scripts/selector_study.py --cache-dir runs/study --report-only --json runs/study/report.json

The tables are those of notebook 07 (:func:`prmagic_core.experiments.study_tables`: PerSAM-F and
Matcher, objects and parts, development episode seed 1, test episode seed 0, each kind's eta,
T = 5), computed with SAM-Tiny and resumable. The report scores every selector of
``select.FAMILY`` with :func:`prmagic_core.study.study_cell` on every table file of the cache
(grouped by kind and episode seed as their settings say: a run killed and resumed in chunks
reports on the episodes it finished), prints one markdown table per cell, the best selector by
closure among those whose 95% lower bound on T_new - T_release is >= -0.25 points, and whether
the goal (closure >= 0.5 with non-degradation >= 0.95) is met.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prmagic_core import analysis as an, experiments as ex, study  # noqa: E402
from prmagic_core.results import ResultsFile  # noqa: E402

COLUMNS = ["selector", "t_minus_b", "t_minus_b_low", "t_minus_b_high", "t_minus_release_low", "closure", "closure_low",
           "closure_high", "non_degradation", "p5_change", "fallback", "tau", "passes"]


def tables_on_disk(cache_dir: Path, dev_seed: int, test_seed: int) -> dict:
    """``{(baseline, kind): {"dev": frame, "test": frame}}`` from every table file of ``cache_dir``."""
    found = {}
    for path in sorted(cache_dir.glob("*.csv")):
        settings = json.loads(path.with_name(path.name + ".settings.json").read_text())
        split = {dev_seed: "dev", test_seed: "test"}.get(settings["data_seed"])
        if split is None:
            continue
        frame = an.to_frame(ResultsFile(path, settings, key=an.KEY).rows)
        for baseline, rows in frame.groupby("baseline"):
            found.setdefault((baseline, settings["kind"]), {})[split] = rows
    return found


def report(cache_dir: Path, dev_seed: int, test_seed: int, n_boot: int) -> dict:
    out = {}
    for (baseline, kind), splits in sorted(tables_on_disk(cache_dir, dev_seed, test_seed).items()):
        if set(splits) != {"dev", "test"}:
            continue
        constants, summaries = study.study_cell(splits["dev"], splits["test"], n_boot=n_boot)
        best = study.best_selector(summaries)
        s = summaries[best]
        reached = s["closure"]["mean"] >= 0.5 and s["non_degradation"]["mean"] >= 0.95
        test = splits["test"]
        print(f"\n### {baseline}, {kind}s: {splits['dev'].episode.nunique()} development episodes, "
              f"{test.episode.nunique()} test episodes x {test.seed.nunique()} seeds\n")
        print(an.markdown_table(study.summary_frame(summaries)[COLUMNS], floatfmt=".3f"))
        print(f"\nbest: {best} (closure {s['closure']['mean']:.2f}, T - B {s['t_minus_b']['mean']:+.2f} points, "
              f"non-degradation {s['non_degradation']['mean']:.3f}); goal {'reached' if reached else 'NOT reached'} "
              f"(any selector reaching it: {study.reaching_goal(summaries) or 'none'}); "
              f"constants from development: { {n: c for n, c in constants.items() if c} }")
        out[f"{baseline}/{kind}"] = {"best": best, "goal_reached": reached, "reaching_goal": study.reaching_goal(summaries),
                                     "constants": constants,
                                     "summaries": study.finite_or_none(summaries)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--dev-episodes", type=int, default=8)
    parser.add_argument("--test-episodes", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--dev-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--report-only", action="store_true", help="do not compute: report on the tables there")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if not args.report_only:
        ex.study_tables(ex.Setup(), ("persam_f", "matcher"), ("object", "part"), args.dev_episodes, args.test_episodes,
                        args.seeds, 5, args.dev_seed, args.test_seed, args.cache_dir)
    numbers = report(args.cache_dir, args.dev_seed, args.test_seed, args.n_boot)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
