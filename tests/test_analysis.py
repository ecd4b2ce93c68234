import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prmagic_core import analysis as an
from prmagic_core.results import ResultsFile

# ---------------------------------------------------------------- constructed tables


def trajectory(ious, scores, counts=None, cls="a", episode="e0", seed=0, eta=1e-3, baseline="b", gamma=0.1, drift=True):
    """Rows of one trajectory: IoU and masked-image score per step; counts default to IoU over a union of 100."""
    rows = []
    for t, (iou, score) in enumerate(zip(ious, scores)):
        i_fg, u_fg = counts[t] if counts else (round(100 * iou), 100)
        rows.append({"baseline": baseline, "eta": eta, "gamma": gamma, "drift": drift, "seed": seed,
                     "episode": episode, "step": t, "class": cls, "status": "ok", "iou": iou,
                     "i_fg": i_fg, "u_fg": u_fg, "i_bg": 50, "u_bg": 100, "score_masked-image": score})
    return rows


@pytest.fixture
def table():
    rows = (trajectory([0.2, 0.5, 0.5], [0.9, 0.8, 0.95], episode="e0", cls="a")  # T picks step 2, O step 1 (tie: earliest)
            + trajectory([0.6, 0.4, 0.3], [0.7, 0.7, 0.1], episode="e1", cls="a")  # T ties at 0 and 1: step 0
            + trajectory([0.1, 0.1, 0.1], [0.5, 0.6, 0.4], episode="e2", cls="b"))  # flat: every IoU equal
    return an.to_frame(rows)


def test_picks_choose_earliest_of_ties_and_respect_max_step(table):
    steps = lambda f: dict(zip(f.episode, f.step))  # noqa: E731
    assert steps(an.picks(table, "baseline")) == {"e0": 0, "e1": 0, "e2": 0}
    assert steps(an.picks(table, "oracle")) == {"e0": 1, "e1": 0, "e2": 0}
    assert steps(an.picks(table, "masked-image")) == {"e0": 2, "e1": 0, "e2": 1}
    assert steps(an.picks(table, "masked-image", max_step=1)) == {"e0": 0, "e1": 0, "e2": 1}
    assert steps(an.picks(table, 2)) == {"e0": 2, "e1": 2, "e2": 2}
    with pytest.raises(ValueError, match="crop-pool"):
        an.picks(table, "crop-pool")


def test_metrics_sum_counts_per_class_before_dividing(table):
    picked = an.picks(table, "oracle")  # e0: 50/100, e1: 60/100 (class a); e2: 10/100 (class b)
    m = an.metrics(picked)
    assert m["miou"] == pytest.approx(100 * ((50 + 60) / 200 + 10 / 100) / 2)
    assert m["mean_iou"] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    assert m["episodes"] == 3
    # Class-wise and per-episode means differ when a class's episodes have different unions.
    uneven = an.to_frame(trajectory([0.5], [1.0], counts=[(10, 20)], episode="x")
                         + trajectory([0.1], [1.0], counts=[(10, 100)], episode="y"))
    m = an.metrics(an.picks(uneven, "baseline"))
    assert m["miou"] == pytest.approx(100 * 20 / 120)
    assert m["mean_iou"] == pytest.approx(30.0)


def test_bto_and_wide_gaps(table):
    summary = an.over_seeds(an.bto(table), ["baseline", "variant", "selector"])
    by = {(r.variant, r.selector): r.mean_iou for r in summary.itertuples()}
    assert by[("B", "")] == pytest.approx(100 * (0.2 + 0.6 + 0.1) / 3)
    assert by[("T", "masked-image")] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    assert by[("O", "")] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    wide = an.bto_wide(summary, "mean_iou", by=["baseline"]).iloc[0]
    assert wide["T-B masked-image"] == pytest.approx(wide["T masked-image"] - wide["B"])
    assert wide["O-T masked-image"] == pytest.approx(0.0)


def test_step_metrics_one_row_per_setting_seed_and_step(table):
    per_step = an.step_metrics(table)
    assert list(per_step.step) == [0, 1, 2]
    assert per_step.mean_iou.tolist() == pytest.approx([100 * 0.9 / 3, 100 * 1.0 / 3, 100 * 0.9 / 3])


def test_over_seeds_mean_and_sample_std():
    frame = pd.DataFrame({"g": ["x", "x", "y"], "miou": [10.0, 20.0, 5.0], "mean_iou": [1.0, 3.0, 2.0],
                          "episode_fb_miou": [0.0] * 3, "fb_iou": [0.0] * 3, "episodes": [4, 4, 4]})
    out = an.over_seeds(frame, ["g"]).set_index("g")
    assert out.loc["x", "miou"] == 15.0 and out.loc["x", "miou_sd"] == pytest.approx(math.sqrt(50))
    assert out.loc["y", "miou_sd"] == 0.0 and out.loc["y", "seeds"] == 1 and out.loc["x", "episodes"] == 8


def test_optimal_steps_and_stats(table):
    steps = an.optimal_steps(table).set_index("episode")
    assert steps.oracle_step.to_dict() == {"e0": 1, "e1": 0, "e2": 0}
    assert steps.ties.to_dict() == {"e0": 2, "e1": 1, "e2": 3}
    assert steps.flat.to_dict() == {"e0": False, "e1": False, "e2": True}
    stats = an.optimal_step_stats(steps.reset_index())
    assert stats["mean"] == pytest.approx(1 / 3) and stats["std"] == pytest.approx(np.std([1, 0, 0], ddof=1))
    assert stats["flat_fraction"] == pytest.approx(1 / 3) and stats["moving_mean"] == pytest.approx(0.5)


def test_per_episode_and_misses(table):
    wide = an.per_episode(table).set_index("episode")
    assert wide.loc["e0", "iou_T masked-image"] == 0.5 and wide.loc["e0", "step_T masked-image"] == 2
    assert wide.loc["e0", "iou_O"] == 0.5 and wide.loc["e1", "iou_B"] == 0.6
    assert an.selector_misses(table, "masked-image").empty  # the selector never falls below the oracle here
    missed = an.to_frame(trajectory([0.2, 0.9], [0.9, 0.1], episode="m"))
    miss = an.selector_misses(missed, "masked-image")
    assert miss.episode.tolist() == ["m"] and miss.gap.iloc[0] == pytest.approx(0.7)


def test_paired_interval_and_direction():
    same = an.paired_interval([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert same["mean"] == same["low"] == same["high"] == 2.0
    assert an.direction(same) == "above"
    assert an.direction(an.paired_interval([0.0, 1.0], [1.0, 0.0])) == "indistinguishable from"
    assert an.direction(an.paired_interval([0.0], [1.0])) == "below"
    with pytest.raises(ValueError):
        an.paired_interval([], [])


@pytest.mark.parametrize("values, shape", [
    ([1, 1.2, 0.9], "flat"), ([1, 3, 2], "rises then falls"), ([1, 2, 3], "rises"), ([3, 2, 1], "falls"),
    ([1, 0, 1.05], "non-monotonic"),
])
def test_curve_shape(values, shape):
    assert an.curve_shape(values, tol=0.5)["shape"] == shape


def test_regimes():
    frame = pd.DataFrame({"eta": [1e-3, 1e-3, 1e-3, 1e-3, 0.0], "gamma": [0.1, 0.0, 0.1, 0.0, 0.1],
                          "drift": [True, True, False, False, True]})
    assert an.regimes(frame).tolist() == ["both", "drift only", "noise only", "neither", "neither"]
    assert an.regimes(frame, "fresh").tolist() == ["both + resampling", "drift only + resampling",
                                                   "noise only + resampling", "resampling only", "resampling only"]


def test_to_frame_reads_back_results_file_rows(tmp_path, table):
    file = ResultsFile(tmp_path / "t.csv", {"x": 1}, key=an.KEY)
    file.append(table.to_dict("records"))
    again = an.to_frame(ResultsFile(tmp_path / "t.csv", {"x": 1}, key=an.KEY).rows)
    pd.testing.assert_frame_equal(again[table.columns], table, check_dtype=False)



def test_markdown_table_formats():
    text = an.markdown_table(pd.DataFrame({"eta": [1e-3], "miou": [12.345], "name": ["a"]}), formats={"eta": "g"})
    assert text.splitlines()[2] == "| 0.001 | 12.35 | a |"


def test_noise_vs_drift_ratio_at_the_papers_constants():
    scale = an.noise_vs_drift([1e-3, 1e-4], gamma=0.1, clip=0.1).set_index("eta")
    assert scale.loc[1e-3, "ratio"] == pytest.approx(math.sqrt(2e-4) / 1e-4)  # 141
    assert scale.loc[1e-4, "ratio"] == pytest.approx(math.sqrt(2e-5) / 1e-5)  # 447


def test_cluster_bootstrap_resamples_whole_episodes():
    # Two episodes, each with three seeds that agree exactly: with clusters, every resample is a
    # mix of whole episodes, so the resampled means can only be 0, 0.5 or 1 (weighted by size);
    # as six independent values they also take 1/6, 2/6, ...
    values = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    episodes = ["a", "a", "a", "b", "b", "b"]
    clustered = an.cluster_bootstrap(values, episodes, n_boot=4000, level=0.5)
    assert clustered["clusters"] == 2 and clustered["n"] == 6 and clustered["mean"] == 0.5
    assert {clustered["low"], clustered["high"]} <= {0.0, 0.5, 1.0}
    plain = an.cluster_bootstrap(values, n_boot=4000, level=0.5)
    assert plain["clusters"] == 6
    # Episode variance is counted once per episode, not once per seed: the clustered interval is wider.
    assert an.cluster_bootstrap(values, episodes)["high"] - an.cluster_bootstrap(values, episodes)["low"] > \
        plain["high"] - plain["low"]


def test_cluster_bootstrap_weights_clusters_by_size_and_checks_labels():
    constant = an.cluster_bootstrap([2.0, 2.0, 2.0], ["x", "y", "y"])
    assert constant["low"] == constant["high"] == 2.0
    with pytest.raises(ValueError, match="cluster labels"):
        an.cluster_bootstrap([1.0, 2.0], ["x"])


def test_episode_differences_pair_each_trajectory_and_count_episodes():
    rows = []
    for seed in (0, 1):
        rows += trajectory([0.2, 0.5], [0.1, 0.9], episode="e0", seed=seed)  # T = O = step 1: +30 points
        rows += trajectory([0.6, 0.4], [0.1, 0.9], episode="e1", seed=seed)  # T = step 1: -20; O = B
    diffs = an.episode_differences(an.to_frame(rows)).set_index("contrast")
    assert diffs.loc["T-B masked-image", "mean"] == pytest.approx((30 - 20) / 2)
    assert diffs.loc["O-B", "mean"] == pytest.approx(30 / 2)
    assert diffs.loc["O-T masked-image", "mean"] == pytest.approx(20 / 2)
    assert (diffs.episodes == 2).all() and (diffs.seeds == 2).all() and (diffs.n == 4).all()
    assert diffs.loc["T-B masked-image", "low"] == pytest.approx(-20) and diffs.loc["T-B masked-image", "high"] == pytest.approx(30)


def test_headline_metric_is_class_wise_only_with_ten_episodes_per_class():
    def picked(per_class):
        return pd.DataFrame([{"class": c, "episode": f"{c}{i}"} for c, n in per_class.items() for i in range(n)])
    assert an.headline_metric(picked({"a": 10, "b": 12})) == "miou"
    assert an.headline_metric(picked({"a": 10, "b": 9})) == "mean_iou"
    rows = trajectory([0.5], [1.0], episode="e0") + trajectory([0.5], [1.0], episode="e1", seed=1)
    assert an.counts_note(an.to_frame(rows)) == "n = 2 episodes x 2 seeds"


def test_moved_pairs_and_the_premise_on_a_constructed_table():
    rows = []
    # e0: the prompts move twice; d_phi up with IoU up, then d_phi down with IoU down
    # e1: the prompts move once, d_phi up but IoU down; the last step keeps the prompts (no pair)
    for episode, prompts, d, ious in (("e0", ["p", "q", "r"], [1.0, 3.0, 2.0], [0.2, 0.5, 0.4]),
                                      ("e1", ["p", "s", "s"], [5.0, 6.0, 9.0], [0.7, 0.6, 0.9])):
        for row, p, value in zip(trajectory(ious, [0.0] * 3, episode=episode), prompts, d):
            rows.append({**row, "prompts": p, "d_phi": value})
    pairs = an.moved_pairs(an.to_frame(rows))
    assert pairs[["episode", "step"]].values.tolist() == [["e0", 0], ["e0", 1], ["e1", 0]]
    assert pairs.d_change.tolist() == [2.0, -1.0, 1.0]
    assert pairs.iou_change.round(6).tolist() == [30.0, -10.0, -10.0]
    numbers = an.premise(pairs)
    assert numbers["pairs"] == 3 and numbers["d_up_pairs"] == 2 and numbers["d_down_pairs"] == 1
    assert numbers["d_up_iou_up_share"] == 0.5 and numbers["d_down_iou_up_share"] == 0.0
    assert math.isclose(numbers["d_up_iou_change"]["mean"], 10.0)
    assert math.isclose(numbers["spearman"], pd.Series([3, 1, 2]).corr(pd.Series([3, 1.5, 1.5])))


def test_table_contrast_pairs_episodes_and_seeds_of_two_tables():
    a = an.to_frame(trajectory([0.2, 0.6], [0.1, 0.9], episode="e0") + trajectory([0.5, 0.5], [0.9, 0.1], episode="e1"))
    b = an.to_frame(trajectory([0.2, 0.3], [0.9, 0.1], episode="e0", eta=0.5) + trajectory([0.5, 0.4], [0.9, 0.1], episode="e1", eta=0.5))
    frame = an.table_contrast(a, b, "masked-image").set_index("variant")
    # T: e0 picks 0.6 vs 0.2, e1 0.5 vs 0.5 -> +20 on average; O: 0.6 - 0.3 and 0.5 - 0.5 -> +15
    assert math.isclose(frame.loc["T", "mean"], 20.0) and math.isclose(frame.loc["O", "mean"], 15.0)
    assert frame.loc["O", "episodes"] == 2 and frame.loc["O", "low"] <= 15.0 <= frame.loc["O", "high"]


def test_step_norm_grid_spans_the_papers_drift_to_past_the_noise():
    grid = an.step_norm_grid(1e-3, 0.1, 0.1, 64 * 32 * 32, between=1, past=(4.0,))
    assert list(grid) == ["paper drift", "12x drift", "noise", "4x noise"]
    assert math.isclose(grid["paper drift"], 1e-4 * 256) and math.isclose(grid["noise"], math.sqrt(2e-4) * 256)
    assert math.isclose(grid["12x drift"] ** 2, grid["paper drift"] * grid["noise"])  # the geometric middle
    assert math.isclose(grid["4x noise"], 4 * grid["noise"])


def test_interval_summary_clusters_by_episode():
    frame = pd.DataFrame({"status": "ok", "arm": ["g"] * 4, "episode": ["e0", "e0", "e1", "e1"], "x": [1.0, 3.0, 5.0, 7.0]})
    row = an.interval_summary(frame, ["arm"], ["x"]).iloc[0]
    assert row.measure == "x" and row["mean"] == 4.0 and row.n == 4 and row.episodes == 2
    assert row.low == 2.0 and row.high == 6.0  # two clusters: resamples average (e0, e0), (e0, e1) or (e1, e1)


def test_analysis_needs_nothing_from_the_sweep():
    """analysis is pure table -> numbers: it imports nothing of experiments, not even for type hints."""
    tree = ast.parse(Path(an.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and m.split(".")[-1] == "experiments"}, imported


def test_sweep_keeps_only_its_grid_and_episodes(table):
    from prmagic_core.experiments import Sweep

    more = pd.concat([table, an.to_frame(trajectory([0.3] * 3, [0.1] * 3, episode="e0", eta=1e-2)),
                      an.to_frame(trajectory([0.3] * 3, [0.1] * 3, episode="e0", seed=1))])
    kept = Sweep(baselines=("b",), etas=(1e-3,), seeds=(0,)).rows_of(more.sample(frac=1, random_state=0), ["e0", "e2"])
    assert list(kept.episode.unique()) == ["e0", "e2"] and set(kept.eta) == {1e-3} and set(kept.seed) == {0}
    assert kept.step.tolist() == [0, 1, 2, 0, 1, 2]  # sorted by the table key
