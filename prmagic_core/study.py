"""The selector study: every rule of :data:`~prmagic_core.select.FAMILY` scored offline from a
sweep's table, its constants chosen on DEVELOPMENT episodes, its numbers reported on TEST episodes.

    dev = Lab(Setup(data_seed=0), cache).sweep(sweep)          # development episodes
    test = Lab(Setup(data_seed=1), cache).sweep(sweep)         # test episodes (another seed)
    constants = tune(dev, "vote")                               # chosen on development only
    release, ours = selector_picks(test, "masked-image"), selector_picks(test, "vote", **constants)
    cell_summary(ours, release)                                 # T - B, closure, ... with 95% intervals

A table row holds every candidate's recorded signals (the release's cosines as ``score_*``
columns, the zero-pass signals as ``signal_*``), so no rule re-runs the flow or the model.
Intervals come from a cluster bootstrap over episodes (all noise seeds of an episode drawn
together). Nothing here runs a model or reads a file.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from .analysis import KEY, TRAJECTORY, cluster_bootstrap, ok
from .evaluation import episode_seed
from .experiments import text_to_mask
from .masks import iou
from .select import FAMILY, apply
from .signals import distinct_reencoded, extra_passes

REFERENCES = tuple(n for n, r in FAMILY.items() if r.family == "reference")
RELEASE = "masked-image"  # the release's selector as its launchers run it (alpha_s = beta_s = 0): "T_release"
# Constants chosen on development episodes (the first value of a tie wins: the plainest rule).
TUNABLE = {
    **{n: {"delta": (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)} for n, r in FAMILY.items() if r.family == "ours"},
    "fixed-step": {"step": None},  # every step of the trajectory
}
TIE = 1e-9  # IoUs this close count as equal (non-degradation)


def trajectories(table: pd.DataFrame) -> list:
    """``(key dict, signals dict, distinct re-encodings)`` per trajectory of ``table``, in the table's
    order (the re-encodings counted from the candidates' masks, :func:`signals.distinct_reencoded`)."""
    t = ok(table).sort_values(list(KEY))
    columns = {c: c[len("score_"):] for c in t.columns if c.startswith("score_")}
    columns.update({c: c[len("signal_"):] for c in t.columns if c.startswith("signal_")})
    columns.update({"step": "step", "iou": "iou"})
    out = []
    for key, group in t.groupby(list(TRAJECTORY), sort=False):
        signals = {name: group[column].to_numpy(dtype=float) for column, name in columns.items()}
        meta = dict(zip(TRAJECTORY, key))
        meta["class"] = group["class"].iloc[0]
        out.append((meta, signals, distinct_reencoded([text_to_mask(m) for m in group["mask"]])))
    return out


def selector_picks(table, name: str, with_tau: bool = True, **constants) -> pd.DataFrame:
    """One row per trajectory: IoU of B, of ``name``'s pick (T) and of O, the step, whether it fell
    back, the encoder passes it cost and the within-trajectory Kendall tau between its scores and
    the IoUs (NaN where either is constant). ``table``: a sweep's table or :func:`trajectories`."""
    rows = []
    for meta, signals, reencoded in (trajectories(table) if isinstance(table, pd.DataFrame) else table):
        extra = dict(constants)
        if "seed" in FAMILY[name].constants and "seed" not in extra:
            extra["seed"] = episode_seed(int(meta["seed"]), meta["episode"])  # as `prmagic evaluate` draws
        chosen = apply(name, signals, extra_passes(FAMILY[name].signals, reencoded), **extra)
        ious = signals["iou"]
        row = {**meta, "iou_B": ious[0], "iou_T": ious[chosen.index], "iou_O": ious.max(), "step_T": chosen.index,
               "step_O": int(np.argmax(ious)), "fallback": chosen.fallback, "passes": chosen.passes}
        if with_tau:
            row["tau"] = _tau(chosen.scores, ious)
        rows.append(row)
    return pd.DataFrame(rows)


def _tau(scores, ious) -> float:
    scores, ious = np.asarray(scores), np.asarray(ious)
    if np.ptp(scores) == 0 or np.ptp(ious) == 0:
        return math.nan
    return float(kendalltau(scores, ious).statistic)


def grid(name: str, steps: int) -> list:
    """Every combination of ``name``'s tunable constants (one empty dict for a rule without any)."""
    spec = dict(TUNABLE.get(name, {}))
    if "step" in spec:
        spec["step"] = tuple(range(steps + 1))
    return [dict(zip(spec, values)) for values in itertools.product(*spec.values())]


def tune(dev, name: str) -> dict:
    """The constants of ``name`` with the highest mean IoU on the development trajectories ``dev``."""
    if name not in TUNABLE:
        return {}
    dev = trajectories(dev) if isinstance(dev, pd.DataFrame) else dev
    steps = max(len(s["iou"]) for _, s, _ in dev) - 1
    best, best_iou = {}, -math.inf
    for constants in grid(name, steps):
        mean_iou = float(selector_picks(dev, name, with_tau=False, **constants).iou_T.mean())
        if mean_iou > best_iou + TIE:
            best, best_iou = constants, mean_iou
    return best


def _cluster_statistic(frame: pd.DataFrame, statistic, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """``statistic(columns, rows)`` on ``frame`` with a percentile interval from resampling episodes
    (with all their seeds), for statistics that are not a mean of per-trajectory values (ratios,
    quantiles); ``columns``: the frame's IoU columns as arrays, ``rows``: the positions drawn."""
    columns = {c: frame[c].to_numpy(dtype=float) for c in ("iou_B", "iou_T", "iou_O", "iou_R")}
    positions = list(frame.groupby("episode", sort=True).indices.values())
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([positions[i] for i in rng.integers(0, len(positions), len(positions))])
             for _ in range(n_boot)]
    values = np.array([statistic(columns, rows) for rows in draws], dtype=float)
    values = values[np.isfinite(values)]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) if values.size else (math.nan, math.nan)
    return {"mean": float(statistic(columns, np.arange(len(frame)))), "low": float(lo), "high": float(hi)}


def closure(columns: dict, rows) -> float:
    """Oracle-gap closure (T_new - T_release) / (O - T_release) of the mean IoUs over ``rows``."""
    release = columns["iou_R"][rows].mean()
    gap = columns["iou_O"][rows].mean() - release
    return float((columns["iou_T"][rows].mean() - release) / gap) if gap > 0 else math.nan


def fifth_percentile(columns: dict, rows) -> float:
    """5th percentile of the per-trajectory IoU change T - B over ``rows``, in points."""
    return float(np.percentile(100 * (columns["iou_T"][rows] - columns["iou_B"][rows]), 5))


def cell_summary(chosen: pd.DataFrame, release: pd.DataFrame, n_boot: int = 2000) -> dict:
    """Every metric of one selector in one cell, each ``{"mean", "low", "high"}`` (95%, episodes resampled).

    ``t_minus_b`` and ``t_minus_release``: mean per-episode IoU differences in points;
    ``closure``: (T_new - T_release) / (O - T_release); ``non_degradation``: share of trajectories
    with IoU >= the baseline's; ``p5_change``: 5th percentile of the per-trajectory IoU change vs B,
    points; ``fallback``: share of trajectories where the rule's pick was overruled for candidate 0;
    ``tau``: mean within-trajectory Kendall tau of score vs IoU (trajectories where both vary);
    ``passes``: extra encoder passes per trajectory.
    """
    keys = list(TRAJECTORY)
    frame = chosen.merge(release[keys + ["iou_T"]].rename(columns={"iou_T": "iou_R"}), on=keys)
    episodes = frame.episode.to_numpy()

    def mean_of(values, clusters=episodes):
        return {k: v for k, v in cluster_bootstrap(values, clusters, n_boot=n_boot).items() if k in ("mean", "low", "high")}

    tau = frame.dropna(subset=["tau"])
    return {
        "t_minus_b": mean_of(100 * (frame.iou_T - frame.iou_B)),
        "t_minus_release": mean_of(100 * (frame.iou_T - frame.iou_R)),
        "closure": _cluster_statistic(frame, closure, n_boot=n_boot),
        "non_degradation": mean_of((frame.iou_T >= frame.iou_B - TIE).astype(float)),
        "p5_change": _cluster_statistic(frame, fifth_percentile, n_boot=n_boot),
        "fallback": mean_of(frame.fallback.astype(float)),
        "tau": mean_of(tau.tau, tau.episode.to_numpy()) if len(tau) else {"mean": math.nan, "low": math.nan, "high": math.nan},
        "passes": mean_of(frame.passes.astype(float)),
        "trajectories": int(len(frame)), "episodes": int(frame.episode.nunique()),
        "seeds": int(frame.seed.nunique()),
    }


def best_selector(summaries: dict, floor: float = -0.25) -> str:
    """The selector of highest closure among the non-references whose 95% lower bound on
    T_new - T_release is >= ``floor`` points; the release itself always qualifies (its difference is
    0) and wins ties, and an undefined closure (no oracle gap) ranks last."""
    eligible = [n for n, s in summaries.items()
                if n == RELEASE or (n not in REFERENCES and s["t_minus_release"]["low"] >= floor)]

    def key(name):
        value = summaries[name]["closure"]["mean"] if name in summaries else math.nan
        return (value if np.isfinite(value) else -math.inf, name == RELEASE)

    return max(eligible, key=key)


def reaching_goal(summaries: dict, closure: float = 0.5, non_degradation: float = 0.95) -> list:
    """The non-reference selectors whose closure and non-degradation (means) both reach the goal."""
    return [n for n, s in summaries.items() if n not in REFERENCES and s["closure"]["mean"] >= closure
            and s["non_degradation"]["mean"] >= non_degradation]


def study_cell(dev: pd.DataFrame, test: pd.DataFrame, names=None, n_boot: int = 2000) -> tuple[dict, dict]:
    """(constants chosen on ``dev`` per selector, metrics on ``test`` per selector) for one cell."""
    names = list(FAMILY) if names is None else list(names)
    dev_t, test_t = trajectories(dev), trajectories(test)
    release = selector_picks(test_t, RELEASE)
    constants = {n: tune(dev_t, n) for n in names}
    summaries = {n: cell_summary(selector_picks(test_t, n, **constants[n]), release, n_boot) for n in names}
    return constants, summaries


def summary_frame(summaries: dict) -> pd.DataFrame:
    """One row per selector: each metric's mean and interval as columns ``metric``, ``metric_low``, ``metric_high``."""
    rows = []
    for name, s in summaries.items():
        row = {"selector": name, "family": FAMILY[name].family}
        for metric, value in s.items():
            if isinstance(value, dict):
                row.update({metric: value["mean"], f"{metric}_low": value["low"], f"{metric}_high": value["high"]})
            else:
                row[metric] = value
        rows.append(row)
    return pd.DataFrame(rows)


def worst_misses(chosen: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` trajectories of :func:`selector_picks` whose pick falls furthest below the oracle's IoU."""
    scored = chosen.assign(gap=chosen.iou_O - chosen.iou_T)
    return scored[scored.gap > 0].sort_values("gap", ascending=False).head(k).reset_index(drop=True)


def oracle_wins(table: pd.DataFrame, margin: float = 0.02) -> pd.DataFrame:
    """One row per trajectory whose oracle candidate beats B's IoU by more than ``margin``: both IoUs
    and ``overlap``, the IoU between B's mask and the oracle's. Near 1 the oracle redraws B's
    boundary, which barely moves a pooled feature; below 0.5 it took another instance or region."""
    rows = []
    for key, group in ok(table).sort_values(list(KEY)).groupby(list(TRAJECTORY), sort=False):
        ious = group["iou"].to_numpy(dtype=float)
        oracle = int(np.argmax(ious))
        if ious[oracle] - ious[0] > margin:
            b, o = (text_to_mask(group["mask"].iloc[i]) for i in (0, oracle))
            rows.append({**dict(zip(TRAJECTORY, key)), "iou_B": ious[0], "iou_O": ious[oracle], "overlap": iou(o, b)})
    return pd.DataFrame(rows, columns=[*TRAJECTORY, "iou_B", "iou_O", "overlap"])


def finite_or_none(value):
    """``value`` with every non-finite float replaced by None (a headline record holds finite numbers only:
    a closure without an oracle gap, a tau where no score varied, are "not defined", not NaN)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value
