import json
import math

import numpy as np
import pytest

from prmagic_core.metrics import METRIC_NAMES, IoUAccumulator


def mask(rows):
    """A bool mask from strings of '#' (foreground) and '.' (background)."""
    return np.array([[c == "#" for c in row] for row in rows])


# 4x4 truth: the top-left 2x2 square; prediction: the whole top row.
TRUTH = mask(["##..", "##..", "....", "...."])
PRED = mask(["####", "....", "....", "...."])


def test_single_episode_by_hand():
    acc = IoUAccumulator()
    score = acc.add(PRED, TRUTH, "square")
    # foreground: I = 2 pixels, U = 4 + 4 - 2 = 6; background: I = 16 - 6 = 10, U = 16 - 2 = 14
    iou_fg, iou_bg = 2 / 6, 10 / 14
    assert score == pytest.approx((iou_fg + iou_bg) / 2)
    assert acc.miou() == pytest.approx(100 * iou_fg)
    assert acc.per_class() == {"square": pytest.approx(100 * iou_fg)}
    assert acc.fb_iou() == pytest.approx(50 * (iou_fg + iou_bg))
    assert acc.episode_fb_miou() == pytest.approx(50 * (iou_fg + iou_bg))
    assert acc.episodes == 1


def build_two_class_case():
    """Class a: a large perfect hit and a small half hit; class b: a complete miss."""
    return [
        (mask(["####", "####", "....", "...."]), mask(["####", "####", "....", "...."]), "a"),
        (mask(["##..", "....", "....", "...."]), mask(["#...", "....", "....", "...."]), "a"),
        (mask(["....", "....", "....", "...."]), mask(["....", "....", "..##", "..##"]), "b"),
    ]


def test_classwise_accumulation_differs_from_episode_averaging():
    acc = IoUAccumulator()
    for pred, truth, name in build_two_class_case():
        acc.add(pred, truth, name)
    # class a sums I = 8 + 1 and U = 8 + 2; class b: I = 0, U = 4
    assert acc.per_class() == {"a": pytest.approx(90.0), "b": pytest.approx(0.0)}
    assert acc.miou() == pytest.approx(45.0)
    # averaging the foreground IoU per episode instead would give (1 + 0.5 + 0) / 3 = 50%
    assert acc.miou() != pytest.approx(100 * (1 + 0.5 + 0) / 3)
    # background per episode: I/U = 8/8, 14/15, 12/16
    expected_episode = [(1 + 1) / 2, (0.5 + 14 / 15) / 2, (0 + 12 / 16) / 2]
    assert acc.episode_fb_miou() == pytest.approx(100 * sum(expected_episode) / 3)
    # summed over all episodes: fg I = 9, U = 14; bg I = 8 + 14 + 12 = 34, U = 8 + 15 + 16 = 39
    assert acc.fb_iou() == pytest.approx(50 * (9 / 14 + 34 / 39))


def test_empty_truth_and_empty_prediction_count_as_perfect():
    empty = np.zeros((4, 4), dtype=bool)
    acc = IoUAccumulator()
    assert acc.add(empty, empty, "ghost") == 1.0
    acc.add(PRED, TRUTH, "square")
    assert acc.per_class()["ghost"] == 100.0
    assert acc.miou() == pytest.approx((100 + 100 * 2 / 6) / 2)
    assert acc.episode_fb_miou() == pytest.approx(100 * (1 + (2 / 6 + 10 / 14) / 2) / 2)


def test_prediction_on_empty_truth_scores_zero_foreground():
    acc = IoUAccumulator()
    acc.add(PRED, np.zeros((4, 4), dtype=bool), "ghost")
    assert acc.miou() == 0.0
    # background: I = 12, U = 16
    assert acc.episode_fb_miou() == pytest.approx(100 * (0 + 12 / 16) / 2)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        IoUAccumulator().add(PRED, np.zeros((4, 5), dtype=bool), "square")


def test_probability_maps_are_rejected():
    with pytest.raises(ValueError, match="dtype float"):
        IoUAccumulator().add(PRED.astype(float), TRUTH, "square")


def test_integer_masks_are_accepted():
    acc = IoUAccumulator()
    acc.add(PRED.astype(np.uint8) * 255, TRUTH.astype(np.int64), "square")
    assert acc.miou() == pytest.approx(100 * 2 / 6)


def test_failures_are_counted_and_listed_not_scored():
    acc = IoUAccumulator()
    acc.add(PRED, TRUTH, "square")
    acc.add_failure("circle", "no prompt point survived filtering")
    acc.add_failure("star", RuntimeError("decoder blew up"))
    assert acc.episodes == 1
    assert acc.failures == [("circle", "no prompt point survived filtering"), ("star", "decoder blew up")]
    summary = acc.summary()
    assert summary["episodes"] == 1
    assert summary["failed_episodes"] == 2
    assert summary["miou"] == pytest.approx(100 * 2 / 6)


def test_summary_keys_are_described():
    summary = IoUAccumulator().summary()
    assert set(summary) == set(METRIC_NAMES)
    assert all(isinstance(text, str) and text for text in METRIC_NAMES.values())
    assert math.isnan(summary["miou"]) and summary["episodes"] == 0


def test_merge_equals_one_accumulator_fed_everything():
    episodes = build_two_class_case() + [(PRED, TRUTH, "a"), (TRUTH, PRED, "c")]
    whole = IoUAccumulator()
    for pred, truth, name in episodes:
        whole.add(pred, truth, name)
    whole.add_failure("b", "timeout")

    first, second = IoUAccumulator(), IoUAccumulator()
    for pred, truth, name in episodes[:2]:
        first.add(pred, truth, name)
    for pred, truth, name in episodes[2:]:
        second.add(pred, truth, name)
    second.add_failure("b", "timeout")

    merged = IoUAccumulator().merge(first).merge(second)
    assert merged.summary() == whole.summary()
    assert merged.per_class() == whole.per_class()
    assert merged.failures == whole.failures
    assert merged.state_dict() == whole.state_dict()
    # shards may arrive in any order
    assert IoUAccumulator().merge(second).merge(first).summary() == whole.summary()


def test_state_round_trip_through_json():
    acc = IoUAccumulator()
    for pred, truth, name in build_two_class_case():
        acc.add(pred, truth, name)
    acc.add_failure("b", "timeout")
    restored = IoUAccumulator.from_state(json.loads(json.dumps(acc.state_dict())))
    assert restored.summary() == acc.summary()
    assert restored.per_class() == acc.per_class()
    assert restored.failures == acc.failures
    # the restored accumulator keeps accumulating like the original
    restored.add(PRED, TRUTH, "a")
    acc.add(PRED, TRUTH, "a")
    assert restored.summary() == acc.summary()
