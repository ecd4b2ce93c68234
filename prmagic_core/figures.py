"""``prmagic figures``: run every notebook with papermill and regenerate every figure.

    prmagic figures --profile smoke             # the CI check: small parameters, tiny backend
    prmagic figures --profile full              # the figures in figures/ (tiny backend, 2-core CPU)
    prmagic figures --only 04 -p n_misses 8     # one notebook, one parameter overridden

Notebooks run in order with kernel ``python3``; executed copies go to ``notebooks/build/``
(git-ignored), figures (PNG + PDF) and one headline JSON per notebook to ``figures/`` for the
``full`` profile only (the committed figures README describes) and to ``notebooks/build/figures/``
for every other profile, unless ``--out-dir`` says otherwise. A notebook run by hand (JupyterLab,
papermill from any folder) writes under ``notebooks/build/`` too: relative paths are taken from the
repository, never from the working directory (:func:`notebook_dirs`), and every notebook prints the
absolute paths it wrote. The tables behind them are cached in ``notebooks/build/cache/`` and
shared by all notebooks, so a second run only plots (``--fresh`` empties the cache first).
A profile is a set of papermill parameters; ``-p NAME VALUE`` overrides one (VALUE is read as
a Python literal when it is one, else as a string); each notebook receives the parameters it
declares.

Profiles (tiny backend, baselines PerSAM-F and Matcher, ShapeWorld episodes of fold 0's NOVEL classes):

- ``smoke``: 6 episodes at 128 px, eta in {1e-2, 1e-3}, T = 2, one seed, a shorter 2-D toy, and
  in 08 two directions (gradient, random) at two norms (the paper's drift, the noise's); 07: 4
  development + 6 test episodes per cell. Budget 5 minutes on a 2-core CPU (README: measured).
- ``full``: the faithful world: 512-px episodes, Matcher and GF-SAM matching with DINO-Tiny, eta in
  {1e-2, 1e-3, 1e-4, 1e-5}, T = 5, seeds 0-2; the sweeps (02, 03, 05, 08) over 100 episodes, the
  headline B/T/O cells (04, 06) over 300, 07 over 100 development + 300 test episodes per cell (the
  test episodes are 04's and 06's, so their tables are shared), 08 on PerSAM-F at one noise seed.
  One cold run alone on the 2 cores with 2 workers: 6878 s (README), against a 60-minute target.

GPU, official SAM (``--backend sam``; not run here, no GPU was available): pass
``-p checkpoint /path/sam_vit_b_01ec64.pth`` (``-p model_type vit_l`` etc. for other sizes),
``-p dinov2_checkpoint /path/dinov2_vitl14_pretrain.pth`` for Matcher, ``-p dataset fss
-p data_root /data/FSS-1000`` for notebooks 01-05, and ``-p data_root /data`` with one folder
per benchmark (``/data/fss``, ``/data/coco``, ...) for 06, run on its own with ``--only 06``.
The paper's protocol is ``-p n_episodes 1000 -p seeds "[42, 43, 44, 45, 46]"`` (``n_episodes``
caps a fold's episodes). Nothing is downloaded: checkpoints and data come from the paths given.
The cost is encoder passes: per trajectory up to 2 x (T + 1) re-encodings for the two
re-encoding selectors (identical masks are encoded once), plus the support and query once per
episode; a vit_b encode takes ~17 s on this CPU and well under a second on a GPU (estimated).
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "notebooks" / "build"
COMMITTED_PROFILE = "full"  # the only profile whose figures land in <repo>/figures by default

PROFILES = {
    "smoke": {"n_episodes": 6, "etas": [1e-2, 1e-3], "steps": 2, "seeds": [0], "image_size": 128, "fold": 0,
              "toy_steps": 100, "toy_train_steps": 150, "toy_particles": 200, "n_misses": 2,
              "arms": ["gradient", "random"], "norms_between": 0, "norms_past": []},
    "full": {"n_episodes": 100, "etas": [1e-2, 1e-3, 1e-4, 1e-5], "steps": 5, "seeds": [0, 1, 2], "image_size": 512,
             "fold": 0, "matching_encoder": "dino-tiny"},
}

# Every figure each notebook must write (as <out_dir>/<name>.png and .pdf), in running order.
# A new notebook is one more entry here (notebooks/NN_name.py + .ipynb, written as a Jupytext pair).
FIGURES = {
    "00_theory": ("00_drift_weights", "00_toy_flow", "00_toy_flow_retrained", "00_toy_flow_paper_constants",
                  "00_toy_distance", "00_noise_vs_drift"),
    "01_walkthrough": ("01_episode", "01_similarity", "01_prompts", "01_decode", "01_gradient", "01_moved", "01_steps",
                       "01_prompt_trajectory", "01_scores"),
    "02_eta_sensitivity": ("02_eta_sensitivity",),
    "03_optimal_step_histograms": ("03_optimal_step_histogram",),
    "04_oracle_vs_top1": ("04_bto", "04_scatter", "04_misses"),
    "05_drift_vs_noise": ("05_regimes", "05_regime_steps", "05_norms"),
    "06_main_results": ("06_main_results",),
    "07_selector_study": ("07_closure", "07_tau", "07_misses"),
    "08_gradient_direction": ("08_direction_norm", "08_direction_vs_random", "08_push", "08_adaptive"),
}
# ``--only`` groups: the paper's figures (every headline B/T/O cell and the eta sweep the faithful world
# asks for) and the studies beyond the paper that later issues added.
GROUPS = {"paper": ["00_theory", "01_walkthrough", "02_eta_sensitivity", "03_optimal_step_histograms",
                    "04_oracle_vs_top1", "06_main_results"],
          "studies": ["05_drift_vs_noise", "07_selector_study", "08_gradient_direction"]}
# A notebook's own values on top of a profile: the headline B/T/O cells and the selector study report
# on more episodes than the sweeps (>= 300 x 3 seeds per cell), the study at each kind's eta; the
# direction test (08: 19 tables per episode) runs PerSAM-F at one noise seed, as committed (Matcher
# and 3 seeds add about 2 hours on 2 cores: -p baselines '["persam_f", "matcher"]' -p seeds "[0, 1, 2]").
NOTEBOOK_PROFILES = {
    "04_oracle_vs_top1": {"full": {"n_episodes": 300}},
    "06_main_results": {"full": {"n_episodes": 300}},
    "07_selector_study": {"smoke": {"n_episodes": 6, "n_dev_episodes": 4, "etas": None},
                          "full": {"n_episodes": 300, "n_dev_episodes": 100, "etas": None}},
    "08_gradient_direction": {"full": {"baselines": ["persam_f"], "seeds": [0]}},
}


def notebook_dirs(out_dir=None, cache_dir=None) -> tuple:
    """A notebook's (out_dir, cache_dir) as absolute paths: None is ``notebooks/build/figures`` and
    ``notebooks/build/cache``; a relative path is taken from the repository, never from the working
    directory (JupyterLab runs a notebook in ``notebooks/``, papermill wherever it was started)."""
    def absolute(path, default: Path) -> Path:
        return default if path is None else (REPO / Path(path).expanduser()).resolve()

    return absolute(out_dir, BUILD / "figures"), absolute(cache_dir, BUILD / "cache")


def default_out_dir(profile: str, build_dir: Path) -> Path:
    """Where figures go without ``--out-dir``: ``<repo>/figures`` for the full profile, else beside the build."""
    return REPO / "figures" if profile == COMMITTED_PROFILE else build_dir / "figures"


def add_arguments(parser) -> None:
    parser.add_argument("--profile", default="full", choices=sorted(PROFILES), help="parameter set: smoke (CI, minutes) or full (the committed figures)")
    parser.add_argument("--backend", default=None, choices=["tiny", "sam"], help="override the notebooks' backend (theirs: tiny)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one notebook parameter (repeatable)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="run only this notebook (name or number prefix, e.g. 04; repeatable) or group: paper (00-04, 06), studies (05, 07, 08)")
    parser.add_argument("--notebooks", default=str(REPO / "notebooks"), help="folder holding the notebooks")
    parser.add_argument("--out-dir", default=None, help="figures and headline JSON (default: <repo>/figures for --profile full, else <build-dir>/figures)")
    parser.add_argument("--build-dir", default=None, help="executed copies (default <notebooks>/build)")
    parser.add_argument("--cache-dir", default=None, help="result tables (default <build-dir>/cache)")
    parser.add_argument("--fresh", action="store_true", help="empty the cache first: recompute every table")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel that runs the notebooks")


def parse_value(text: str):
    """A Python literal when ``text`` is one (numbers, lists, None, True), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def selected(only) -> list:
    """The notebooks named by ``--only`` (full names, number prefixes or a :data:`GROUPS` name), in
    running order; all by default."""
    if not only:
        return list(FIGURES)
    chosen = []
    for item in only:
        if item in GROUPS:
            chosen.extend(GROUPS[item])
            continue
        matches = [name for name in FIGURES if name == item or name[:2] == item]
        if len(matches) != 1:
            raise ValueError(f"--only {item!r} matches {matches or 'no notebook'}; notebooks: {', '.join(FIGURES)}; "
                             f"groups: {', '.join(GROUPS)}")
        chosen.append(matches[0])
    return [name for name in FIGURES if name in chosen]


@contextlib.contextmanager
def kernel_environment():
    """The kernel inherits this process's environment: make the package importable from notebooks/
    (a relative PYTHONPATH would point elsewhere there) and plot headless."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    paths = [str(REPO)] + [str(Path(p).resolve()) for p in (saved["PYTHONPATH"] or "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ["MPLBACKEND"] = "agg"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def missing_outputs(name: str, out_dir: Path) -> list:
    """Expected files of notebook ``name`` that are not in ``out_dir``."""
    expected = [out_dir / f"{name}.json"]
    expected += [out_dir / f"{fig}.{ext}" for fig in FIGURES[name] for ext in ("png", "pdf")]
    return [str(p) for p in expected if not p.is_file()]


def run(args) -> int:
    import papermill

    notebooks = Path(args.notebooks).resolve()
    if not (notebooks / "00_theory.ipynb").is_file():
        raise FileNotFoundError(f"{notebooks}: no notebooks there (run from a source checkout, or pass --notebooks DIR)")
    build_dir = Path(args.build_dir).resolve() if args.build_dir else notebooks / "build"
    out_dir = Path(args.out_dir).resolve() if args.out_dir else default_out_dir(args.profile, build_dir)
    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else build_dir / "cache"
    if args.fresh and cache_dir.exists():
        shutil.rmtree(cache_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    names = selected(args.only)

    overrides = {name: parse_value(value) for name, value in args.parameter}
    if args.backend:
        overrides["backend"] = args.backend
    declared = {name: papermill.inspect_notebook(str(notebooks / f"{name}.ipynb")) for name in names}
    unknown = sorted(set(overrides) - {p for params in declared.values() for p in params})
    if unknown:
        raise ValueError(f"no selected notebook has the parameter(s) {', '.join(unknown)}")

    wanted = {**PROFILES[args.profile], **overrides, "out_dir": str(out_dir), "cache_dir": str(cache_dir)}
    seconds = {}
    with kernel_environment():
        for name in names:
            own = {**wanted, **NOTEBOOK_PROFILES.get(name, {}).get(args.profile, {}), **overrides}
            parameters = {k: v for k, v in own.items() if k in declared[name]}
            executed = build_dir / f"{name}.ipynb"
            print(f"[figures] {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(str(notebooks / f"{name}.ipynb"), str(executed), parameters=parameters,
                                           kernel_name=args.kernel, cwd=str(notebooks), progress_bar=False)
            except papermill.PapermillExecutionError as err:
                print(f"prmagic figures: {name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                      f"  executed copy with the traceback: {executed}", file=sys.stderr)
                return 1
            seconds[name] = round(time.perf_counter() - start, 1)
            missing = missing_outputs(name, out_dir)
            if missing:
                print(f"prmagic figures: {name} ran but did not write {', '.join(missing)}", file=sys.stderr)
                return 1
            print(f"[figures] {name} done in {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    record = {"profile": args.profile, "parameters": {k: v for k, v in wanted.items() if k not in ("out_dir", "cache_dir")},
              "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1)}
    (build_dir / f"runtimes-{args.profile}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0
