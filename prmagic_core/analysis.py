"""Pure functions from a sweep's table to the numbers figures plot and notebooks claim.

    table = lab.sweep(sweep)    # a :class:`~prmagic_core.experiments.Lab`'s tidy table
    bto(table)                  # B / T per selector / O per setting and seed, both metrics
    step_metrics(table)         # the mIoU of a fixed step, per setting, seed and step
    picks(table, "masked-image", max_step=2)   # the top-1 of a shorter trajectory, read off the table

Nothing here runs a model or reads a file: every function takes a table (or numbers) and returns
numbers. The columns both sides agree on are named here (:data:`KEY`, :data:`COUNTS`);
:mod:`prmagic_core.experiments` writes its rows with them.
"""
from __future__ import annotations

import math
import numpy as np
import pandas as pd

from .metrics import METRIC_NAMES, IoUAccumulator

SETTING = ("baseline", "eta", "gamma", "drift")
TRAJECTORY = SETTING + ("seed", "episode")
KEY = TRAJECTORY + ("step",)
COUNTS = ("i_fg", "u_fg", "i_bg", "u_bg")
METRICS = {  # what each number of :func:`metrics` means; headline records carry it
    "miou": METRIC_NAMES["miou"],
    "mean_iou": "mean per-episode foreground IoU % (each episode's IoU, averaged over episodes)",
    "episode_fb_miou": METRIC_NAMES["episode_fb_miou"],
    "fb_iou": METRIC_NAMES["fb_iou"],
}
METRIC_LABELS = {"miou": "class-wise mIoU %", "mean_iou": "mean per-episode IoU %",
                 "episode_fb_miou": "per-episode FB mIoU %", "fb_iou": "FB-IoU %"}  # axis labels

class Reported(tuple):
    """Published (B, T, O) numbers in %, labelled: where they come from (``source``), which metric
    they are (``metric``, a key of :data:`METRICS`), the preset that reproduces the code behind
    them (``preset``) and a ``note``. Unpacks as the 3-tuple (B, T, O)."""

    def __new__(cls, bto, source: str, metric: str, preset: str, note: str = ""):
        if len(bto) != 3 or metric not in METRICS:
            raise ValueError(f"a reported number is (B, T, O) of a known metric, got {bto!r}, {metric!r}")
        self = super().__new__(cls, tuple(float(v) for v in bto))
        self.source, self.metric, self.preset, self.note = source, metric, preset, note
        return self


# Both release scripts score each episode as mean(IoU_bg, IoU_fg) and average over episodes
# (SPEC section 8, item 12), whatever the tables call it.
PAPER_SOURCE = "PR-MaGIC paper (CVPR 2026) Tab. 1, 1-shot; first release e6e0705, seeds 42-46"
CORRECTION_SOURCE = ("authors' correction notice (release README, as copied in endeavor1233/Guarded-PR-MaGIC), "
                     "single seed")
_V1_NOTE = "PerSAM-F rows carry the first release's (row, col) extra points (preset release-v1)"


def _paper(values: dict, preset: str, note: str = "") -> dict:
    return {key: Reported(bto, PAPER_SOURCE, "episode_fb_miou", preset, note) for key, bto in values.items()}


# The paper's tables (SPEC section 6): (baseline, benchmark) -> Reported (B, T, O).
PAPER_BTO = {
    **_paper({("persam_f", "fss"): (58.41, 67.19, 72.45), ("persam_f", "coco"): (44.64, 46.83, 51.74),
              ("persam_f", "lvis"): (42.37, 44.48, 47.29), ("persam_f", "paco"): (39.60, 40.72, 43.39),
              ("persam_f", "pascal_part"): (42.72, 43.87, 46.43), ("persam_f", "dis5k"): (46.82, 49.99, 53.46)},
             "release-v1", _V1_NOTE),
    **_paper({("matcher", "fss"): (92.08, 92.06, 93.55), ("matcher", "coco"): (69.53, 71.23, 76.14),
              ("matcher", "lvis"): (59.39, 61.52, 64.75), ("matcher", "paco"): (50.27, 54.08, 56.71),
              ("matcher", "pascal_part"): (54.76, 58.28, 61.13), ("matcher", "dis5k"): (46.65, 55.08, 58.10)},
             "release"),
}
# The authors' corrected PerSAM-F numbers (SPEC section 8): (baseline, benchmark, prompts) -> Reported,
# prompts "bands" (top-1 + band points, the corrected sampler) or "top1" (the top-1 point alone).
PAPER_BTO_CORRECTED = {
    ("persam_f", "fss", "bands"): Reported((85.77, 87.42, 91.89), CORRECTION_SOURCE, "episode_fb_miou", "corrected",
                                           "FSS-1000 fold 0"),
    ("persam_f", "fss", "top1"): Reported((85.10, 85.87, 87.53), CORRECTION_SOURCE, "episode_fb_miou", "corrected",
                                          "FSS-1000 fold 0, top-1 point only"),
    ("persam_f", "pascal_part", "bands"): Reported((49.46, 52.38, 58.13), CORRECTION_SOURCE, "episode_fb_miou",
                                                   "corrected", "Pascal-Part, mean of folds 0-3"),
    ("persam_f", "pascal_part", "top1"): Reported((51.12, 51.52, 52.61), CORRECTION_SOURCE, "episode_fb_miou",
                                                  "corrected", "Pascal-Part, mean of folds 0-3, top-1 point only"),
}
PAPER_OPTIMAL_STEP = {"mean": 3.0, "std": 1.8}  # Tab. 2: mean ~3, std ~1.7-1.8


# ---------------------------------------------------------------- table -> numbers (pure)

_NUMERIC = ("eta", "gamma", "seed", "step", "iou", *COUNTS, "oracle", "d_phi", "drift_norm", "noise_norm")


def to_frame(rows) -> pd.DataFrame:
    """A typed DataFrame from table rows (dicts of strings, as a ResultsFile holds them)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    for column in frame.columns:
        if column in _NUMERIC or column.startswith(("score_", "chosen_", "signal_")):
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
    frame["drift"] = frame["drift"].astype(str) == "True"
    return frame


def ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.status == "ok"]


def failures(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.status != "ok"]


def picks(table: pd.DataFrame, how, max_step: int | None = None) -> pd.DataFrame:
    """One row per trajectory: the candidate ``how`` chooses among steps <= ``max_step``.

    ``how``: ``"baseline"`` (step 0, "B"), ``"oracle"`` (highest IoU, "O"), a selector name
    (highest score, "T"), or an int (that fixed step). Ties go to the earliest step.
    """
    t = ok(table)
    if max_step is not None:
        t = t[t.step <= max_step]
    t = t.sort_values(list(KEY))
    if how == "baseline":
        return t[t.step == 0]
    if isinstance(how, (int, np.integer)):
        return t[t.step == how]
    column = "iou" if how == "oracle" else f"score_{how}"
    if column not in t:
        raise ValueError(f"the table has no column {column!r}; selectors in it: {selectors_in(table)}")
    return t.loc[t.groupby(list(TRAJECTORY), sort=False)[column].idxmax()]  # idxmax: first of ties


def selectors_in(table: pd.DataFrame) -> list:
    return [c[len("score_"):] for c in table.columns if c.startswith("score_")]


def metrics(picked: pd.DataFrame) -> dict:
    """Every metric of :data:`METRICS` (in %) of one set of picked candidates, and its episode count."""
    acc = IoUAccumulator()
    for counts, class_name in zip(picked[list(COUNTS)].to_numpy(dtype=np.int64), picked["class"]):
        acc.add_counts(counts, class_name)
    summary = acc.summary()
    return {"miou": summary["miou"], "mean_iou": 100.0 * float(picked.iou.mean()) if len(picked) else math.nan,
            "episode_fb_miou": summary["episode_fb_miou"], "fb_iou": summary["fb_iou"], "episodes": acc.episodes}


def _grouped(picked: pd.DataFrame, by, **labels) -> list:
    return [{**dict(zip(by, key if isinstance(key, tuple) else (key,))), **labels, **metrics(group)}
            for key, group in picked.groupby(list(by), sort=True)]


def step_metrics(table: pd.DataFrame, by=SETTING + ("seed",)) -> pd.DataFrame:
    """Metrics of the candidate at each fixed step, per ``by`` group and step (the eta-sensitivity curves)."""
    steps = sorted(ok(table).step.unique())
    return pd.DataFrame([r for s in steps for r in _grouped(picks(table, int(s)), by, step=int(s))])


def bto(table: pd.DataFrame, selectors=None, max_step: int | None = None, by=SETTING + ("seed",)) -> pd.DataFrame:
    """B, T per selector and O, per ``by`` group, long format: columns ``variant`` (B / T / O), ``selector``."""
    selectors = selectors_in(table) if selectors is None else list(selectors)
    rows = _grouped(picks(table, "baseline", max_step), by, variant="B", selector="")
    for name in selectors:
        rows += _grouped(picks(table, name, max_step), by, variant="T", selector=name)
    rows += _grouped(picks(table, "oracle", max_step), by, variant="O", selector="")
    return pd.DataFrame(rows)


def over_seeds(frame: pd.DataFrame, by, values=("miou", "mean_iou", "episode_fb_miou", "fb_iou")) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1; 0 for one seed) and count of ``values`` over seeds."""
    groups = frame.groupby(list(by), sort=False)
    out = groups[list(values)].mean()
    spread = groups[list(values)].std(ddof=1).fillna(0.0).add_suffix("_sd")
    out = out.join(spread).join(groups.size().rename("seeds")).join(groups["episodes"].sum())
    return out.reset_index()


def bto_wide(summary: pd.DataFrame, metric: str = "miou", by=SETTING) -> pd.DataFrame:
    """B, one T column per selector, O and O - T gaps, from :func:`over_seeds` of :func:`bto`."""
    label = summary.variant + summary.selector.map(lambda s: f" {s}" if s else "")
    wide = summary.assign(label=label).pivot_table(index=list(by), columns="label", values=metric, sort=False)
    for column in [c for c in wide.columns if c.startswith("T ")]:
        wide[f"T-B {column[2:]}"] = wide[column] - wide["B"]
        wide[f"O-T {column[2:]}"] = wide["O"] - wide[column]
    wide.columns.name = None
    return wide.reset_index()


def per_episode(table: pd.DataFrame, selectors=None, max_step: int | None = None) -> pd.DataFrame:
    """One row per trajectory: IoU of B, of each selector's T and of O, with the steps chosen."""
    selectors = selectors_in(table) if selectors is None else list(selectors)
    keys = list(TRAJECTORY)
    out = picks(table, "baseline", max_step)[keys + ["class", "iou"]].rename(columns={"iou": "iou_B"})
    for name, label in [(s, f"T {s}") for s in selectors] + [("oracle", "O")]:
        chosen = picks(table, name, max_step)[keys + ["iou", "step"]]
        out = out.merge(chosen.rename(columns={"iou": f"iou_{label}", "step": f"step_{label}"}), on=keys)
    return out.reset_index(drop=True)


def optimal_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Per trajectory: the oracle step (earliest best), the best IoU, how many steps tie for it,
    and ``flat`` (every candidate scores the same IoU, so "the optimal step" is not defined)."""
    t = ok(table).sort_values(list(KEY))
    groups = t.groupby(list(TRAJECTORY), sort=False)
    first_best = t.loc[groups.iou.idxmax()].set_index(list(TRAJECTORY))
    out = pd.DataFrame({"oracle_step": first_best.step, "best_iou": first_best.iou})
    out["worst_iou"] = groups.iou.min()
    out["ties"] = t.assign(best=t.iou == groups.iou.transform("max")).groupby(list(TRAJECTORY), sort=False).best.sum()
    out["flat"] = out.best_iou - out.worst_iou <= 1e-12
    return out.reset_index()


def optimal_step_stats(steps: pd.DataFrame) -> dict:
    """Mean and std (ddof=1) of the oracle step, over all trajectories and over the non-flat ones."""
    moving = steps[~steps.flat]

    def stats(s):
        return (float(s.mean()) if len(s) else math.nan, float(s.std(ddof=1)) if len(s) > 1 else math.nan)

    mean, std = stats(steps.oracle_step)
    moving_mean, moving_std = stats(moving.oracle_step)
    return {"mean": mean, "std": std, "trajectories": int(len(steps)), "flat_fraction": float(steps.flat.mean()),
            "moving_mean": moving_mean, "moving_std": moving_std, "moving_trajectories": int(len(moving))}


def cluster_bootstrap(values, clusters=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of ``values`` with a percentile interval from a bootstrap that resamples CLUSTERS.

    ``clusters`` labels each value with its episode: an episode's values (one per noise seed)
    are drawn together, so the interval carries the episode-to-episode variance instead of
    counting e.g. 24 episodes x 3 seeds as 72 independent draws. Without ``clusters`` every
    value is its own cluster (the plain bootstrap). The mean of a resample is the mean over
    all its values (clusters weighted by their size).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("cluster_bootstrap needs at least one value")
    labels = np.arange(values.size) if clusters is None else np.asarray(clusters)
    if labels.shape != values.shape:
        raise ValueError(f"cluster_bootstrap: {values.size} values but {labels.size} cluster labels")
    _, index = np.unique(labels, return_inverse=True)
    sums, sizes = np.bincount(index, weights=values), np.bincount(index).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sums.size, size=(n_boot, sums.size))
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(values.mean()), "low": float(lo), "high": float(hi), "n": int(values.size),
            "clusters": int(sums.size), "level": level}


def paired_interval(a, b, clusters=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of a - b over paired samples with a (cluster) bootstrap interval: :func:`cluster_bootstrap`
    of the differences; pass the episode of each pair as ``clusters``."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size == 0:
        raise ValueError("paired_interval needs at least one pair")
    return cluster_bootstrap(diff, clusters, n_boot=n_boot, level=level, seed=seed)


def episode_differences(table: pd.DataFrame, selectors=None, max_step: int | None = None,
                        by=SETTING, scale: float = 100.0, **bootstrap) -> pd.DataFrame:
    """Paired per-episode differences T - B (each selector), O - B and O - T, in IoU points, per
    ``by`` group, with 95% intervals by a cluster bootstrap over episodes (all seeds of an
    episode resampled together). Columns: the group, ``contrast``, ``mean``, ``low``, ``high``,
    ``n`` (trajectories), ``episodes``, ``seeds``."""
    wide = per_episode(table, selectors, max_step)
    selectors = [c[len("iou_T "):] for c in wide.columns if c.startswith("iou_T ")]
    contrasts = [(f"T-B {s}", f"iou_T {s}", "iou_B") for s in selectors] + [("O-B", "iou_O", "iou_B")]
    contrasts += [(f"O-T {s}", "iou_O", f"iou_T {s}") for s in selectors]
    rows = []
    for key, group in wide.groupby(list(by), sort=True):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for name, a, b in contrasts:
            interval = paired_interval(scale * group[a], scale * group[b], clusters=group.episode, **bootstrap)
            episodes = interval.pop("clusters")
            rows.append({**labels, "contrast": name, **interval, "episodes": episodes,
                         "seeds": int(group.seed.nunique())})
    return pd.DataFrame(rows)


MIN_EPISODES_PER_CLASS = 10


def headline_metric(picked: pd.DataFrame) -> str:
    """``"miou"`` (class-wise) when every class in ``picked`` has >= 10 episodes, else ``"mean_iou"``:
    a class seen in one or two episodes makes its class IoU that episode's IoU, and the class-wise
    mean then weighs those few episodes like whole classes."""
    per_class = picked.groupby("class").episode.nunique()
    return "miou" if len(per_class) and int(per_class.min()) >= MIN_EPISODES_PER_CLASS else "mean_iou"


def counts_note(table: pd.DataFrame) -> str:
    """``"n = E episodes x S seeds"`` for a figure's caption."""
    t = ok(table)
    return f"n = {t.episode.nunique()} episodes x {t.seed.nunique()} seeds"


def direction(interval: dict) -> str:
    """Where a lies w.r.t. b by the interval of a - b: ``"above"``, ``"below"`` or ``"indistinguishable from"``."""
    if interval["low"] > 0:
        return "above"
    if interval["high"] < 0:
        return "below"
    return "indistinguishable from"


def selector_misses(table: pd.DataFrame, selector: str, k: int = 4) -> pd.DataFrame:
    """The ``k`` trajectories where ``selector``'s pick falls furthest below the oracle's IoU."""
    wide = per_episode(table, [selector])
    wide["gap"] = wide["iou_O"] - wide[f"iou_T {selector}"]
    return wide[wide.gap > 0].sort_values("gap", ascending=False).head(k).reset_index(drop=True)


def candidate_rows(table: pd.DataFrame, trajectory: dict) -> pd.DataFrame:
    """The rows (one per step) of the trajectory keyed by ``trajectory`` (a dict over TRAJECTORY)."""
    mask = np.ones(len(table), dtype=bool)
    for key in TRAJECTORY:
        mask &= (table[key] == trajectory[key]).to_numpy()
    return table[mask].sort_values("step")


def step_norms(table: pd.DataFrame, by=SETTING) -> pd.DataFrame:
    """Mean drift and noise norms, and d_phi, per group and step (steps that moved the embedding)."""
    moved = ok(table).dropna(subset=["drift_norm"])
    return moved.groupby(list(by) + ["step"])[["drift_norm", "noise_norm", "d_phi"]].mean().reset_index()


def regimes(table: pd.DataFrame, resampling: str = "fixed") -> pd.Series:
    """Which terms of the flow moved the embedding: both, drift only (gamma = 0), noise only, or
    neither (eta = 0 silences both). With ``resampling="fresh"`` (new prompt draws every step) a flow
    that moves nothing is "resampling only", and the others are marked "+ resampling"."""
    drift = table.drift & (table.eta > 0)
    noise = (table.gamma > 0) & (table.eta > 0)
    names = np.select([drift & noise, drift & ~noise, ~drift & noise], ["both", "drift only", "noise only"],
                      default="neither")
    if resampling == "fresh":
        names = np.where(names == "neither", "resampling only", np.char.add(names.astype(str), " + resampling"))
    return pd.Series(names, index=table.index, name="regime")


def moved_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """Consecutive candidates (t, t + 1) of each trajectory whose prompts differ, with the change of
    d_phi (``d_change``) and of IoU in points (``iou_change``): what the method's premise is about."""
    t = ok(table).sort_values(list(KEY))
    after = t.groupby(list(TRAJECTORY), sort=False)[["prompts", "d_phi", "iou"]].shift(-1)
    pairs = t.assign(d_change=after.d_phi - t.d_phi, iou_change=100 * (after.iou - t.iou))
    return pairs[after.prompts.notna() & (after.prompts != t.prompts)].dropna(subset=["d_change"])


def premise(pairs: pd.DataFrame, **bootstrap) -> dict:
    """Does the candidate's IoU rise when d_phi rises? Over :func:`moved_pairs`: how many pairs raise
    d_phi, the share of those (and of the pairs that lower it) whose IoU rises, the mean IoU change
    (points, episode-clustered 95% interval) each way, and the rank correlation of the two changes."""
    out = {"pairs": int(len(pairs)), "episodes": int(pairs.episode.nunique()) if len(pairs) else 0}
    for name, side in (("d_up", pairs[pairs.d_change > 0]), ("d_down", pairs[pairs.d_change < 0])):
        out[f"{name}_pairs"] = int(len(side))
        if len(side):
            out[f"{name}_iou_up_share"] = float((side.iou_change > 0).mean())
            interval = cluster_bootstrap(side.iou_change, side.episode, **bootstrap)
            out[f"{name}_iou_change"] = {k: interval[k] for k in ("mean", "low", "high")}
    if len(pairs) > 2:
        rho = pairs.d_change.rank().corr(pairs.iou_change.rank())
        out["spearman"] = float(rho) if np.isfinite(rho) else 0.0
    return out


def table_contrast(a: pd.DataFrame, b: pd.DataFrame, selector: str, by=("baseline",), scale: float = 100.0,
                   **bootstrap) -> pd.DataFrame:
    """Per-episode a - b of the top-1 ("T") and oracle ("O") IoU of two tables over the same episodes and
    seeds (e.g. the gradient's direction vs a random one at one norm), in points, with 95% intervals by a
    cluster bootstrap over episodes. Columns: the group, ``variant``, ``mean``, ``low``, ``high``, ``n``, ``episodes``."""
    keys = list(by) + ["seed", "episode"]
    both = per_episode(a, [selector]).merge(per_episode(b, [selector]), on=keys, suffixes=("_a", "_b"))
    rows = []
    for key, group in both.groupby(list(by), sort=True):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for variant, column in (("T", f"iou_T {selector}"), ("O", "iou_O")):
            interval = paired_interval(scale * group[f"{column}_a"], scale * group[f"{column}_b"],
                                       clusters=group.episode, **bootstrap)
            episodes = interval.pop("clusters")
            rows.append({**labels, "variant": variant, **interval, "episodes": episodes})
    return pd.DataFrame(rows)


def interval_summary(frame: pd.DataFrame, by, measures, **bootstrap) -> pd.DataFrame:
    """Mean of each of ``measures`` per ``by`` group with a 95% interval by a cluster bootstrap over
    episodes, long format: the group, ``measure``, ``mean``, ``low``, ``high``, ``n``, ``episodes``."""
    rows = []
    for key, group in ok(frame).groupby(list(by), sort=True):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for measure in measures:
            interval = cluster_bootstrap(group[measure], group.episode, **bootstrap)
            rows.append({**labels, "measure": measure, **{k: interval[k] for k in ("mean", "low", "high", "n")},
                         "episodes": interval["clusters"]})
    return pd.DataFrame(rows)


def curve_shape(values, tol: float) -> dict:
    """How a metric moves over steps: best step, rise to it, fall after it, net change, and a word
    (``flat``, ``rises then falls``, ``rises``, ``falls`` or ``non-monotonic``; changes <= ``tol`` count as none)."""
    v = np.asarray(values, dtype=float)
    best = int(np.argmax(v))
    out = {"best_step": best, "rise": float(v[best] - v[0]), "fall": float(v[best] - v[-1]),
           "net": float(v[-1] - v[0]), "range": float(v.max() - v.min())}
    if out["range"] <= tol:
        shape = "flat"
    elif 0 < best < len(v) - 1 and out["rise"] > tol and out["fall"] > tol:
        shape = "rises then falls"
    elif out["net"] > tol:
        shape = "rises"
    elif out["net"] < -tol:
        shape = "falls"
    else:
        shape = "non-monotonic"
    return {**out, "shape": shape}


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".2f", formats: dict | None = None) -> str:
    """A GitHub-style markdown table of ``frame``: floats formatted with ``floatfmt``, or with
    ``formats[column]`` for the columns it names."""
    formats = formats or {}

    def cell(value, column):
        if isinstance(value, (float, np.floating)):
            return format(value, formats.get(column, floatfmt))
        return str(value)

    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, columns)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------- theory: noise against drift

def step_norm_grid(eta: float, gamma: float, clip: float, size: int, between: int = 1, past=(4.0,)) -> dict:
    """Labelled L2 norms of one step for the direction test, from the paper's largest drift
    eta * clip * sqrt(n) (``size`` = n, the embedding's element count), through ``between`` geometric
    points, to the noise's norm sqrt(2 eta gamma n), and multiples ``past`` it."""
    drift, noise = eta * clip * math.sqrt(size), math.sqrt(2 * eta * gamma * size)
    grid = {"paper drift": drift}
    for k in range(1, between + 1):
        norm = drift * (noise / drift) ** (k / (between + 1))
        grid[f"{norm / drift:.0f}x drift"] = norm
    grid["noise"] = noise
    grid.update({f"{m:g}x noise": m * noise for m in past})
    return grid


def noise_vs_drift(etas, gamma: float = 0.1, clip: float = 0.1) -> pd.DataFrame:
    """Per element and step: the noise std sqrt(2 eta gamma) vs the largest drift eta * clip."""
    rows = []
    for eta in etas:
        noise = math.sqrt(2 * eta * gamma)
        rows.append({"eta": eta, "gamma": gamma, "clip": clip, "noise_std": noise, "max_drift": eta * clip,
                     "ratio": noise / (eta * clip) if eta > 0 else math.inf})
    return pd.DataFrame(rows)
