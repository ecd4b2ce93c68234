import numpy as np
import pandas as pd
import pytest

from prmagic_core import experiments as ex
from prmagic_core import study
from prmagic_core.select import FAMILY, choose


def test_offline_scores_of_every_selector_equal_the_live_choice(tmp_path):
    """A table's recorded signals give every rule the pick it makes on the live trajectory."""
    lab = ex.Lab(ex.Setup(), tmp_path)
    sweep = ex.Sweep(baselines=("persam",), etas=(1e-2,), gammas=(0.5,), seeds=(3,), episodes=2, steps=3)
    table = lab.sweep(sweep, progress=False)
    for index in range(2):
        episode = lab.episode(index)
        prompter = lab.prepare("persam", episode)
        scored = ex.run_trajectory(prompter, lab.encoder, episode, sweep.flow(1e-2, 0.5, True), 3, 3, "fixed", ())
        rows = table[table.episode == episode.name]
        for name in FAMILY:
            offline = study.selector_picks(rows, name)
            constants = {"seed": study.episode_seed(3, episode.name)} if name == "random" else {}
            live = choose(name, scored.trajectory, lab.encoder, prompter.query, episode.support_images,
                          episode.support_masks, truth=episode.query_mask, **constants)
            assert int(offline.step_T.iloc[0]) == live.index, name
            assert int(offline.passes.iloc[0]) == live.passes or FAMILY[name].family not in ("release", "fork"), name
            assert bool(offline.fallback.iloc[0]) == live.fallback, name


def _frame(iou_b, iou_t, iou_o, episodes, seeds=None):
    n = len(iou_b)
    return pd.DataFrame({"baseline": "b", "eta": 0.1, "gamma": 0.1, "drift": True,
                         "seed": seeds if seeds is not None else [0] * n, "episode": episodes, "class": "c",
                         "iou_B": iou_b, "iou_T": iou_t, "iou_O": iou_o, "step_T": 1, "fallback": [False] * n,
                         "passes": [2] * n, "tau": np.linspace(-1, 1, n)})


def test_cell_summary_known_answers():
    episodes = [f"e{i}" for i in range(10)]
    b = np.full(10, 0.5)
    release = _frame(b, b + 0.01, b + 0.05, episodes)
    t = b + np.array([0.03] * 9 + [-0.05])
    s = study.cell_summary(_frame(b, t, b + 0.05, episodes), release, n_boot=200)
    assert s["t_minus_b"]["mean"] == pytest.approx(100 * (0.27 - 0.05) / 10)
    assert s["t_minus_release"]["mean"] == pytest.approx(100 * ((0.27 - 0.05) / 10 - 0.01))
    assert s["closure"]["mean"] == pytest.approx(((0.27 - 0.05) / 10 - 0.01) / 0.04)
    assert s["non_degradation"]["mean"] == pytest.approx(0.9)
    assert s["p5_change"]["mean"] == pytest.approx(np.percentile(100 * (t - b), 5))
    assert s["passes"]["mean"] == 2 and s["fallback"]["mean"] == 0
    for metric in ("t_minus_b", "closure", "non_degradation"):
        assert s[metric]["low"] <= s[metric]["mean"] <= s[metric]["high"]
    assert s["episodes"] == 10 and s["trajectories"] == 10


def test_the_bootstrap_resamples_episodes_not_trajectories():
    # two seeds per episode with identical values: the interval must not shrink as if there were 2x the data
    episodes = [f"e{i}" for i in range(12)]
    rng = np.random.default_rng(0)
    b = np.full(12, 0.5)
    t = b + rng.normal(0, 0.05, 12)
    single = study.cell_summary(_frame(b, t, b + 0.2, episodes), _frame(b, b, b + 0.2, episodes), n_boot=500)
    doubled = study.cell_summary(_frame(np.r_[b, b], np.r_[t, t], np.r_[b, b] + 0.2, episodes * 2, [0] * 12 + [1] * 12),
                                 _frame(np.r_[b, b], np.r_[b, b], np.r_[b, b] + 0.2, episodes * 2, [0] * 12 + [1] * 12),
                                 n_boot=500)
    width = lambda s: s["t_minus_b"]["high"] - s["t_minus_b"]["low"]  # noqa: E731
    assert width(doubled) == pytest.approx(width(single), rel=0.05)
    assert doubled["closure"]["mean"] == pytest.approx(single["closure"]["mean"])


def test_best_selector_needs_the_lower_bound_on_the_gain_over_the_release():
    def summary(closure, low):
        return {"closure": {"mean": closure}, "t_minus_release": {"low": low}}

    summaries = {"masked-image": summary(0.0, 0.0), "vote": summary(0.6, -0.3), "contrastive": summary(0.3, -0.1),
                 "oracle": summary(1.0, 5.0)}
    assert study.best_selector(summaries) == "contrastive"
    assert study.best_selector({**summaries, "contrastive": summary(0.3, -0.5)}) == "masked-image"
    goal = {n: {"closure": {"mean": c}, "non_degradation": {"mean": nd}}
            for n, c, nd in (("vote", 0.6, 0.96), ("contrastive", 0.7, 0.9), ("oracle", 1.0, 1.0))}
    assert study.reaching_goal(goal) == ["vote"]
    no_gap = {n: summary(float("nan"), 0.0) for n in ("masked-image", "vote")}
    assert study.best_selector(no_gap) == "masked-image"


def test_tune_picks_the_development_constants_by_mean_iou():
    # two trajectories: switching away from candidate 0 pays only when the vote margin is large
    trajectories = [
        ({"baseline": "b", "eta": 0.1, "gamma": 0.1, "drift": True, "seed": 0, "episode": "a", "class": "c"},
         {"vote": np.array([0.90, 0.905]), "iou": np.array([0.8, 0.6]), "step": np.arange(2)},
         {"masked-image": 1, "crop-pool": 1}),
        ({"baseline": "b", "eta": 0.1, "gamma": 0.1, "drift": True, "seed": 0, "episode": "b", "class": "c"},
         {"vote": np.array([0.50, 0.90]), "iou": np.array([0.3, 0.9]), "step": np.arange(2)},
         {"masked-image": 1, "crop-pool": 1}),
    ]
    assert study.tune(trajectories, "vote") == {"delta": 0.01}
    assert study.tune(trajectories, "fixed-step") == {"step": 1}
    assert study.tune(trajectories, "guarded") == {}
    picks = study.selector_picks(trajectories, "vote", delta=0.01)
    np.testing.assert_array_equal(picks.step_T, [0, 1])
    assert list(picks.fallback) == [True, False]


def test_worst_misses_sorted_by_the_gap_to_the_oracle_and_empty_without_one():
    episodes = ["a", "b", "c"]
    chosen = _frame([0.5] * 3, [0.5, 0.2, 0.6], [0.9, 0.8, 0.6], episodes)
    misses = study.worst_misses(chosen, 5)
    assert list(misses.episode) == ["b", "a"] and misses.gap.tolist() == pytest.approx([0.6, 0.4])
    assert study.worst_misses(chosen[chosen.episode == "c"], 2).empty


def test_study_figures_render_from_summaries(tmp_path):
    from prmagic_core import viz

    episodes = [f"e{i}" for i in range(6)]
    b = np.full(6, 0.5)
    release = _frame(b, b + 0.01, b + 0.05, episodes)
    summaries = {"masked-image": study.cell_summary(release, release, n_boot=50),
                 "vote": study.cell_summary(_frame(b, b + 0.03, b + 0.05, episodes), release, n_boot=50),
                 "oracle": study.cell_summary(_frame(b, b + 0.05, b + 0.05, episodes), release, n_boot=50)}
    frame = pd.concat([study.summary_frame(summaries).assign(cell=c) for c in ("persam_f, objects", "matcher, parts")])
    assert set(frame.family) == {"release", "ours", "reference"}
    assert frame[frame.selector == "vote"].closure.iloc[0] == pytest.approx(0.5)
    for fig, name in ((viz.closure_figure(frame), "closure"), (viz.tau_figure(frame), "tau")):
        assert len(viz.save(fig, name, tmp_path)) == 2 and (tmp_path / f"{name}.png").stat().st_size > 0


def test_oracle_wins_tell_a_redrawn_boundary_from_another_instance():
    target = np.zeros((8, 8), bool)
    target[1:5, 1:5] = True  # B's mask: 16 pixels
    grown = target.copy()
    grown[1:5, 5] = True  # the oracle redraws B's boundary: 20 pixels, 16 shared
    other = np.zeros((8, 8), bool)
    other[6:8, 6:8] = True  # the oracle takes another instance

    def trajectory(episode, masks, ious):
        return pd.DataFrame({"baseline": "b", "eta": 0.1, "gamma": 0.1, "drift": True, "seed": 0, "episode": episode,
                             "step": range(len(masks)), "status": "ok", "iou": ious,
                             "mask": [ex.mask_to_text(m) for m in masks]})

    table = pd.concat([trajectory("boundary", [target, grown, target], [0.5, 0.7, 0.5]),
                       trajectory("instance", [target, target, other], [0.1, 0.1, 0.9]),
                       trajectory("no win", [target, other], [0.6, 0.61])], ignore_index=True)
    wins = study.oracle_wins(table).set_index("episode")
    assert list(wins.index) == ["boundary", "instance"]
    assert wins.overlap.tolist() == pytest.approx([16 / 20, 0.0])
    assert wins.loc["instance", "iou_O"] == 0.9 and wins.loc["boundary", "iou_B"] == 0.5
