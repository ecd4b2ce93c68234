import json
import math

import numpy as np
import pandas as pd
import pytest

from prmagic_core import experiments as ex, viz
from prmagic_core.evaluation import evaluate
from prmagic_core.flow import FlowConfig
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
    return ex.to_frame(rows)


def test_picks_choose_earliest_of_ties_and_respect_max_step(table):
    steps = lambda f: dict(zip(f.episode, f.step))  # noqa: E731
    assert steps(ex.picks(table, "baseline")) == {"e0": 0, "e1": 0, "e2": 0}
    assert steps(ex.picks(table, "oracle")) == {"e0": 1, "e1": 0, "e2": 0}
    assert steps(ex.picks(table, "masked-image")) == {"e0": 2, "e1": 0, "e2": 1}
    assert steps(ex.picks(table, "masked-image", max_step=1)) == {"e0": 0, "e1": 0, "e2": 1}
    assert steps(ex.picks(table, 2)) == {"e0": 2, "e1": 2, "e2": 2}
    with pytest.raises(ValueError, match="crop-pool"):
        ex.picks(table, "crop-pool")


def test_metrics_sum_counts_per_class_before_dividing(table):
    picked = ex.picks(table, "oracle")  # e0: 50/100, e1: 60/100 (class a); e2: 10/100 (class b)
    m = ex.metrics(picked)
    assert m["miou"] == pytest.approx(100 * ((50 + 60) / 200 + 10 / 100) / 2)
    assert m["mean_iou"] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    assert m["episodes"] == 3
    # Class-wise and per-episode means differ when a class's episodes have different unions.
    uneven = ex.to_frame(trajectory([0.5], [1.0], counts=[(10, 20)], episode="x")
                         + trajectory([0.1], [1.0], counts=[(10, 100)], episode="y"))
    m = ex.metrics(ex.picks(uneven, "baseline"))
    assert m["miou"] == pytest.approx(100 * 20 / 120)
    assert m["mean_iou"] == pytest.approx(30.0)


def test_bto_and_wide_gaps(table):
    summary = ex.over_seeds(ex.bto(table), ["baseline", "variant", "selector"])
    by = {(r.variant, r.selector): r.mean_iou for r in summary.itertuples()}
    assert by[("B", "")] == pytest.approx(100 * (0.2 + 0.6 + 0.1) / 3)
    assert by[("T", "masked-image")] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    assert by[("O", "")] == pytest.approx(100 * (0.5 + 0.6 + 0.1) / 3)
    wide = ex.bto_wide(summary, "mean_iou", by=["baseline"]).iloc[0]
    assert wide["T-B masked-image"] == pytest.approx(wide["T masked-image"] - wide["B"])
    assert wide["O-T masked-image"] == pytest.approx(0.0)


def test_step_metrics_one_row_per_setting_seed_and_step(table):
    per_step = ex.step_metrics(table)
    assert list(per_step.step) == [0, 1, 2]
    assert per_step.mean_iou.tolist() == pytest.approx([100 * 0.9 / 3, 100 * 1.0 / 3, 100 * 0.9 / 3])


def test_over_seeds_mean_and_sample_std():
    frame = pd.DataFrame({"g": ["x", "x", "y"], "miou": [10.0, 20.0, 5.0], "mean_iou": [1.0, 3.0, 2.0],
                          "episode_fb_miou": [0.0] * 3, "fb_iou": [0.0] * 3, "episodes": [4, 4, 4]})
    out = ex.over_seeds(frame, ["g"]).set_index("g")
    assert out.loc["x", "miou"] == 15.0 and out.loc["x", "miou_sd"] == pytest.approx(math.sqrt(50))
    assert out.loc["y", "miou_sd"] == 0.0 and out.loc["y", "seeds"] == 1 and out.loc["x", "episodes"] == 8


def test_optimal_steps_and_stats(table):
    steps = ex.optimal_steps(table).set_index("episode")
    assert steps.oracle_step.to_dict() == {"e0": 1, "e1": 0, "e2": 0}
    assert steps.ties.to_dict() == {"e0": 2, "e1": 1, "e2": 3}
    assert steps.flat.to_dict() == {"e0": False, "e1": False, "e2": True}
    stats = ex.optimal_step_stats(steps.reset_index())
    assert stats["mean"] == pytest.approx(1 / 3) and stats["std"] == pytest.approx(np.std([1, 0, 0], ddof=1))
    assert stats["flat_fraction"] == pytest.approx(1 / 3) and stats["moving_mean"] == pytest.approx(0.5)


def test_per_episode_and_misses(table):
    wide = ex.per_episode(table).set_index("episode")
    assert wide.loc["e0", "iou_T masked-image"] == 0.5 and wide.loc["e0", "step_T masked-image"] == 2
    assert wide.loc["e0", "iou_O"] == 0.5 and wide.loc["e1", "iou_B"] == 0.6
    assert ex.selector_misses(table, "masked-image").empty  # the selector never falls below the oracle here
    missed = ex.to_frame(trajectory([0.2, 0.9], [0.9, 0.1], episode="m"))
    miss = ex.selector_misses(missed, "masked-image")
    assert miss.episode.tolist() == ["m"] and miss.gap.iloc[0] == pytest.approx(0.7)


def test_paired_interval_and_direction():
    same = ex.paired_interval([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert same["mean"] == same["low"] == same["high"] == 2.0
    assert ex.direction(same) == "above"
    assert ex.direction(ex.paired_interval([0.0, 1.0], [1.0, 0.0])) == "indistinguishable from"
    assert ex.direction(ex.paired_interval([0.0], [1.0])) == "below"
    with pytest.raises(ValueError):
        ex.paired_interval([], [])


@pytest.mark.parametrize("values, shape", [
    ([1, 1.2, 0.9], "flat"), ([1, 3, 2], "rises then falls"), ([1, 2, 3], "rises"), ([3, 2, 1], "falls"),
    ([1, 0, 1.05], "non-monotonic"),
])
def test_curve_shape(values, shape):
    assert ex.curve_shape(values, tol=0.5)["shape"] == shape


def test_regimes():
    frame = pd.DataFrame({"gamma": [0.1, 0.0, 0.1, 0.0], "drift": [True, True, False, False]})
    assert ex.regimes(frame).tolist() == ["both", "drift only", "noise only", "neither"]


def test_to_frame_reads_back_results_file_rows(tmp_path, table):
    file = ResultsFile(tmp_path / "t.csv", {"x": 1}, key=ex.KEY)
    file.append(table.to_dict("records"))
    again = ex.to_frame(ResultsFile(tmp_path / "t.csv", {"x": 1}, key=ex.KEY).rows)
    pd.testing.assert_frame_equal(again[table.columns], table, check_dtype=False)


def test_mask_text_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.random((37, 53)) > 0.5, np.zeros((8, 8), bool), np.ones((5, 3), bool)):
        assert np.array_equal(ex.text_to_mask(ex.mask_to_text(mask)), mask)


def test_markdown_table_formats():
    text = ex.markdown_table(pd.DataFrame({"eta": [1e-3], "miou": [12.345], "name": ["a"]}), formats={"eta": "g"})
    assert text.splitlines()[2] == "| 0.001 | 12.35 | a |"


def test_noise_vs_drift_ratio_at_the_papers_constants():
    scale = ex.noise_vs_drift([1e-3, 1e-4], gamma=0.1, clip=0.1).set_index("eta")
    assert scale.loc[1e-3, "ratio"] == pytest.approx(math.sqrt(2e-4) / 1e-4)  # 141
    assert scale.loc[1e-4, "ratio"] == pytest.approx(math.sqrt(2e-5) / 1e-5)  # 447


def test_write_headline_rejects_nan(tmp_path):
    path = ex.write_headline("nb", {"a": 1.5, "b": [1, 2]}, {"s": None}, ["nb_fig"], tmp_path)
    assert json.loads(path.read_text())["numbers"] == {"a": 1.5, "b": [1, 2]}
    with pytest.raises(ValueError, match="numbers.x.y"):
        ex.write_headline("nb", {"x": {"y": float("nan")}}, {}, [], tmp_path)


def test_toy_flow_moves_particles_only_when_the_flow_acts():
    still = ex.toy_flow(FlowConfig(eta=0.0, gamma=0.0, clip=None), steps=3, n=64, train_steps=20)
    assert np.allclose(still.distance, still.distance[0])
    moving = ex.toy_flow(FlowConfig(eta=0.02, gamma=0.0, clip=None), steps=20, n=64, train_steps=100)
    assert moving.distance[-1] < 0.5 * moving.distance[0]  # drift toward the real samples
    assert sorted(moving.snapshots) == [0, 5, 10, 20]


# ---------------------------------------------------------------- sweeps on SAM-Tiny

SMALL = dict(baselines=("persam",), etas=(1e-2, 1e-3), seeds=(0,), episodes=2, steps=2)


class Counting:
    """Wraps ``refine``: counts calls, optionally raises KeyboardInterrupt on call number ``stop_at``."""

    def __init__(self, refine, stop_at=None):
        self.refine, self.stop_at, self.calls = refine, stop_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.refine(*args, **kwargs)


def test_sweep_resumes_without_recomputing_and_gives_the_same_table(tmp_path, monkeypatch):
    sweep = ex.Sweep(**SMALL)
    trajectories = 2 * 2  # etas x episodes
    counter = Counting(ex.refine)
    monkeypatch.setattr(ex, "refine", counter)
    whole = ex.Lab(ex.Setup(), tmp_path / "whole").sweep(sweep, progress=False)
    assert counter.calls == trajectories and len(whole) == trajectories * (sweep.steps + 1)

    interrupted = Counting(counter.refine, stop_at=2)  # inside episode 0, after its first trajectory
    monkeypatch.setattr(ex, "refine", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.Lab(ex.Setup(), tmp_path / "resumed", flush_every=1).sweep(sweep, progress=False)
    resumed_counter = Counting(counter.refine)
    monkeypatch.setattr(ex, "refine", resumed_counter)
    lab = ex.Lab(ex.Setup(), tmp_path / "resumed")
    resumed = lab.sweep(sweep, progress=False)
    assert resumed_counter.calls == trajectories - 1  # the one finished before the interruption is not redone
    pd.testing.assert_frame_equal(resumed, whole)

    cached = ex.Lab(ex.Setup(), tmp_path / "resumed")
    again = cached.sweep(sweep, progress=False)
    assert resumed_counter.calls == trajectories - 1 and cached._sam is None  # all cached: the model is never loaded
    pd.testing.assert_frame_equal(again, whole)


def test_sweep_table_matches_evaluate_and_its_prefixes(tmp_path):
    lab = ex.Lab(ex.Setup(), tmp_path)
    table = lab.sweep(ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(7,), episodes=2, steps=2), progress=False)
    # The sweep's top-1 is what `prmagic evaluate` scores with the same seed and settings.
    episodes = [lab.episode(i) for i in range(2)]
    rows = evaluate(ex.make_baseline("persam"), lab.encoder, episodes, steps=2, flow=FlowConfig(eta=1e-2), seed=7,
                    progress=False)
    top1 = ex.picks(table, "masked-image").set_index("episode")
    for row in rows:
        assert json.loads(row["counts_top1"]) == top1.loc[row["episode"], list(ex.COUNTS)].astype(int).tolist()
        assert json.loads(row["candidate_ious"]) == pytest.approx(table[table.episode == row["episode"]].iou.tolist(), abs=1e-6)
    # Stored chosen flags agree with picks recomputed from scores.
    for name in ex.selectors_in(table):
        assert (table[f"chosen_{name}"] == 1).sum() == len(ex.picks(table, name))
        assert set(ex.picks(table, name).index) == set(table.index[table[f"chosen_{name}"] == 1])
    # Fewer steps are a prefix: a T = 1 sweep equals the first two steps of the T = 2 one.
    short = lab.sweep(ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(7,), episodes=2, steps=1), progress=False)
    prefix = table[table.step <= 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(short[["episode", "step", "iou", "score_crop-pool"]],
                                  prefix[["episode", "step", "iou", "score_crop-pool"]])
    assert ex.picks(short, "crop-pool").step.tolist() == ex.picks(table, "crop-pool", max_step=1).step.tolist()


def test_trace_agrees_with_the_table_and_is_cached(tmp_path, monkeypatch):
    lab = ex.Lab(ex.Setup(), tmp_path)
    sweep = ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(0,), episodes=1, steps=2)
    table = lab.sweep(sweep, progress=False)
    trace = lab.trace("persam", 0, eta=1e-2, seed=0, sweep=sweep)
    assert trace.ious.tolist() == pytest.approx(table.iou.tolist())
    assert trace.scores["pooled"].tolist() == pytest.approx(table["score_pooled"].tolist())
    assert trace.similarities.shape == (3, 128, 128) and len(trace.prompts) == 3 and len(trace.d_phi) == 2
    for t, text in enumerate(table["mask"]):
        assert np.array_equal(ex.text_to_mask(text), trace.masks[t])
    counter = Counting(ex.refine)
    monkeypatch.setattr(ex, "refine", counter)
    again = ex.Lab(ex.Setup(), tmp_path).trace("persam", 0, eta=1e-2, seed=0, sweep=sweep)
    assert counter.calls == 0
    assert np.array_equal(again.masks, trace.masks) and all(np.array_equal(a, b) for a, b in zip(again.prompts, trace.prompts))


def test_table_files_are_keyed_by_settings(tmp_path):
    lab = ex.Lab(ex.Setup(), tmp_path)
    base = ex.Sweep(**SMALL)
    assert lab.table_path(base) == lab.table_path(ex.Sweep(**{**SMALL, "etas": (1e-4,), "seeds": (3, 4)}))
    assert lab.table_path(base) != lab.table_path(ex.Sweep(**{**SMALL, "clip": 0.2}))
    assert lab.table_path(base) != ex.Lab(ex.Setup(kind="part"), tmp_path).table_path(base)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="checkpoint"):
        ex.Setup(backend="sam")
    with pytest.raises(ValueError, match="selectors"):
        ex.Sweep(selectors=("best",))
    with pytest.raises(ValueError, match="etas"):
        ex.Sweep(etas=())
    with pytest.raises(ValueError, match="reduction"):
        ex.Sweep(reduction="max")


def test_failed_episode_is_recorded_not_retried(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise FloatingPointError("the gradient of d_phi is not finite")

    monkeypatch.setattr(ex, "refine", broken)
    sweep = ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(0,), episodes=1, steps=2)
    table = ex.Lab(ex.Setup(), tmp_path).sweep(sweep, progress=False)
    assert len(table) == 1 and table.status.iloc[0] == "failed" and "not finite" in table.reason.iloc[0]
    assert ex.picks(table, "baseline").empty and len(ex.failures(table)) == 1
    counter = Counting(broken)
    monkeypatch.setattr(ex, "refine", counter)
    ex.Lab(ex.Setup(), tmp_path).sweep(sweep, progress=False)
    assert counter.calls == 0


def test_figures_render_from_a_trace_and_a_table(tmp_path):
    lab = ex.Lab(ex.Setup(), tmp_path / "cache")
    sweep = ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(0, 1), episodes=2, steps=2)
    table = lab.sweep(sweep, progress=False)
    trace = lab.trace("persam", 0, eta=1e-2, seed=0, sweep=sweep)
    figures = viz.FigureSet(tmp_path / "figures", "t")
    figures.save(viz.episode_figure(trace), "episode")
    figures.save(viz.steps_figure(trace, "masked-image"), "steps")
    figures.save(viz.scores_figure(trace), "scores")
    figures.save(viz.trajectory_figure(trace), "trajectory")
    summary = ex.over_seeds(ex.bto(table), ["baseline", "variant", "selector"])
    figures.save(viz.bto_figure(summary, labels=ex.METRIC_LABELS), "bto")
    figures.save(viz.metric_vs_step_figure(ex.step_metrics(table), hue="eta"), "steps_metric")
    figures.save(viz.optimal_step_figure(ex.optimal_steps(table), ex.PAPER_OPTIMAL_STEP, 2), "optimal")
    figures.save(viz.scatter_figure(ex.per_episode(table), ex.selectors_in(table)), "scatter")
    figures.save(viz.misses_figure(ex.miss_cases(lab, table, "masked-image", 2, 2)), "misses")
    figures.save(viz.norms_figure(ex.step_norms(table), hue="baseline"), "norms")
    assert len(figures.names) == 10
    for name in figures.names:
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 1000
    with pytest.raises(ValueError, match="plain file stem"):
        viz.save(None, "../x", tmp_path)
