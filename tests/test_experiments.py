import json

import numpy as np
import pandas as pd
import pytest
import torch

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.data import shapeworld
from prmagic_core.evaluation import evaluate
from prmagic_core.flow import FlowConfig


def test_mask_text_round_trip():
    rng = np.random.default_rng(0)
    for mask in (rng.random((37, 53)) > 0.5, np.zeros((8, 8), bool), np.ones((5, 3), bool)):
        assert np.array_equal(ex.text_to_mask(ex.mask_to_text(mask)), mask)


def test_write_headline_rejects_nan(tmp_path):
    path = ex.write_headline("nb", {"a": 1.5, "b": [1, 2]}, {"s": None}, ["nb_fig"], tmp_path)
    assert json.loads(path.read_text())["numbers"] == {"a": 1.5, "b": [1, 2]}
    with pytest.raises(ValueError, match="numbers.x.y"):
        ex.write_headline("nb", {"x": {"y": float("nan")}}, {}, [], tmp_path)


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
    whole = ex.Lab(ex.Setup(), tmp_path / "whole", workers=1).sweep(sweep, progress=False)
    assert counter.calls == trajectories and len(whole) == trajectories * (sweep.steps + 1)

    interrupted = Counting(counter.refine, stop_at=2)  # inside episode 0, after its first trajectory
    monkeypatch.setattr(ex, "refine", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.Lab(ex.Setup(), tmp_path / "resumed", flush_every=1, workers=1).sweep(sweep, progress=False)
    resumed_counter = Counting(counter.refine)
    monkeypatch.setattr(ex, "refine", resumed_counter)
    lab = ex.Lab(ex.Setup(), tmp_path / "resumed", workers=1)
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
    top1 = an.picks(table, "masked-image").set_index("episode")
    for row in rows:
        assert json.loads(row["counts_top1"]) == top1.loc[row["episode"], list(an.COUNTS)].astype(int).tolist()
        assert json.loads(row["candidate_ious"]) == pytest.approx(table[table.episode == row["episode"]].iou.tolist(), abs=1e-6)
    # Stored chosen flags agree with picks recomputed from scores.
    for name in an.selectors_in(table):
        assert (table[f"chosen_{name}"] == 1).sum() == len(an.picks(table, name))
        assert set(an.picks(table, name).index) == set(table.index[table[f"chosen_{name}"] == 1])
    # Fewer steps are a prefix: a T = 1 sweep equals the first two steps of the T = 2 one.
    short = lab.sweep(ex.Sweep(baselines=("persam",), etas=(1e-2,), seeds=(7,), episodes=2, steps=1), progress=False)
    prefix = table[table.step <= 1].reset_index(drop=True)
    pd.testing.assert_frame_equal(short[["episode", "step", "iou", "score_crop-pool"]],
                                  prefix[["episode", "step", "iou", "score_crop-pool"]])
    assert an.picks(short, "crop-pool").step.tolist() == an.picks(table, "crop-pool", max_step=1).step.tolist()


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


def test_a_lab_poses_the_folds_novel_classes_at_the_asked_size(tmp_path):
    lab = ex.Lab(ex.Setup(image_size=256, fold=2), tmp_path)
    expected = shapeworld.episode(0, 1, "object", 1, 256, 2)
    assert lab.image_size == 256 and lab.episode(1).name == expected.name
    assert np.array_equal(lab.episode(1).query_image, expected.query_image)
    assert {lab.episode(i).class_name for i in range(6)} <= set(shapeworld.novel_classes(2))
    everything = ex.Lab(ex.Setup(fold=None), tmp_path)
    assert everything.image_size == 128 and everything.episode(1).name == shapeworld.episode(0, 1).name
    base = ex.Sweep(**SMALL)
    assert lab.table_path(base) != everything.table_path(base) != ex.Lab(ex.Setup(), tmp_path).table_path(base)


def test_a_labs_matcher_matches_with_its_folds_dino_tiny_and_its_tables_say_which(tmp_path, monkeypatch):
    from prmagic_core.baselines.matcher import features
    from prmagic_core.models import dino_tiny

    monkeypatch.setattr(dino_tiny, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(0)
    per_fold = {fold: dino_tiny.build_dino_tiny().eval() for fold in (0, 2)}
    for fold, model in per_fold.items():
        torch.save(model.state_dict(), dino_tiny.dino_tiny_files(fold)[0])
    labs = {fold: ex.Lab(ex.Setup(fold=fold, matching_encoder="dino-tiny"), tmp_path / str(fold)) for fold in per_fold}
    features._dino_tiny.cache_clear()
    try:
        for fold, lab in labs.items():
            used = lab.baseline("matcher", "object").features(lab.encoder).model
            assert all(torch.equal(used.state_dict()[k], v) for k, v in per_fold[fold].state_dict().items())
    finally:
        features._dino_tiny.cache_clear()
    sha = {fold: lab.settings(ex.Sweep(**SMALL))["dino_tiny_sha1"] for fold, lab in labs.items()}
    assert sha[0] != sha[2] and None not in sha.values()
    assert ex.Lab(ex.Setup(fold=None), tmp_path).dino_tiny_fold == 0


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
    assert an.picks(table, "baseline").empty and len(an.failures(table)) == 1
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
    summary = an.over_seeds(an.bto(table), ["baseline", "variant", "selector"])
    figures.save(viz.bto_figure(summary, labels=an.METRIC_LABELS), "bto")
    figures.save(viz.metric_vs_step_figure(an.step_metrics(table), hue="eta"), "steps_metric")
    figures.save(viz.optimal_step_figure(an.optimal_steps(table), an.PAPER_OPTIMAL_STEP, 2), "optimal")
    figures.save(viz.scatter_figure(an.per_episode(table), an.selectors_in(table)), "scatter")
    figures.save(viz.misses_figure(ex.miss_cases(lab, table, "masked-image", 2, 2)), "misses")
    figures.save(viz.norms_figure(an.step_norms(table), hue="baseline"), "norms")
    assert len(figures.names) == 10
    for name in figures.names:
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 1000
    with pytest.raises(ValueError, match="plain file stem"):
        viz.save(None, "../x", tmp_path)


def test_sweeps_share_each_episodes_prompter_and_equal_the_sweeps_alone(tmp_path, monkeypatch):
    small = dict(baselines=("persam",), etas=(1e-3,), gammas=(0.0,), seeds=(0,), episodes=2, steps=1,
                 selectors=("pooled",))
    grid = [ex.Sweep(**small, direction=d, step_size=3.6) for d in ("gradient", "random")]
    grid.append(ex.Sweep(**{**small, "etas": (0.0,)}, resampling="fresh"))
    alone = [ex.Lab(ex.Setup(), tmp_path / "alone").sweep(s, progress=False) for s in grid]
    lab = ex.Lab(ex.Setup(), tmp_path / "together", workers=1)  # prepare is counted in this process
    prepared = Counting(lab.prepare)
    monkeypatch.setattr(lab, "prepare", prepared)
    together = lab.sweeps(grid, progress=False)
    assert prepared.calls == 2  # once per episode, not once per sweep
    for a, b in zip(alone, together):
        pd.testing.assert_frame_equal(a, b)
    moved = together[0].dropna(subset=["drift_norm"])
    assert np.allclose(moved.drift_norm, 3.6, rtol=1e-5) and (moved.noise_norm == 0).all()
    assert len({ex.Lab(ex.Setup(), tmp_path).table_path(s) for s in grid}) == 3


def test_pushes_are_cached_and_along_sets_one_direction_cell(tmp_path, monkeypatch):
    lab = ex.Lab(ex.Setup(), tmp_path)
    first = lab.pushes("persam", 1, norms=[0.0, 5.0], seeds=(0,), arms=("gradient", "random"), progress=False)
    assert len(first) == 4 and set(first.arm) == {"gradient", "random"} and (first.status == "ok").all()
    again = ex.Lab(ex.Setup(), tmp_path)
    monkeypatch.setattr(again, "prepare", Counting(again.prepare))
    pd.testing.assert_frame_equal(again.pushes("persam", 1, norms=[0.0, 5.0], seeds=(0,), arms=("gradient", "random"),
                                               progress=False), first)
    assert again.prepare.calls == 0
    cell = ex.Sweep().along("foreground", 3.6)
    assert cell.flow(1e-3, *cell.gammas, True) == FlowConfig(gamma=0.0, reduction="foreground", step_size=3.6)


def test_interval_figures_draw_one_line_or_bar_per_setting(tmp_path):
    frame = pd.DataFrame([{"baseline": b, "contrast": c, "arm": a, "norm": n, "setting": f"{a} {n}",
                           "mean": 1.0, "low": 0.5, "high": 1.5}
                          for b in ("persam_f", "matcher") for c in ("T - B", "O - B") for a in ("gradient", "random")
                          for n in (0.03, 3.6)])
    fig = viz.intervals_vs_norm_figure(frame, marks={"noise": 3.6})
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes) == 4
    assert [len(ax.lines) for ax in fig.axes] == [2 + 2] * 4  # one per arm, the zero line and the mark
    bars = viz.intervals_figure(frame)
    assert len(bars.axes) == 4 and len(bars.axes[0].patches) == 4
    assert [t.get_text() for t in bars.axes[0].get_yticklabels()] == ["gradient 0.03", "gradient 3.6", "random 0.03", "random 3.6"]
    assert bars.axes[0].yaxis_inverted()  # the first setting on top
    viz.save(bars, "bars", tmp_path)
    assert (tmp_path / "bars.png").is_file() and (tmp_path / "bars.pdf").is_file()


def test_the_selector_studys_test_tables_are_the_headline_cells(tmp_path, monkeypatch):
    headline = ex.Sweep(baselines=("persam",), etas=(ex.DEFAULT_ETA["object"],), seeds=(0,), episodes=2, steps=2)
    cells = ex.Lab(ex.Setup(), tmp_path, workers=1).sweep(headline, progress=False)
    counter = Counting(ex.refine)
    monkeypatch.setattr(ex, "refine", counter)
    tables = ex.study_tables(ex.Setup(), ("persam",), ("object",), n_dev=1, n_test=2, seeds=(0,), steps=2,
                             cache_dir=tmp_path, progress=False)
    development, test = tables[("persam", "object")]
    assert counter.calls == 1  # only the development trajectory is new: the test ones are notebook 04's
    pd.testing.assert_frame_equal(test, cells)
    assert set(development.episode).isdisjoint(test.episode)  # another episode seed: other scenes
