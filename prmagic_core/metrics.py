"""Few-shot segmentation scores, accumulated over episodes and mergeable across shards.

Two protocols are kept apart on purpose (SPEC section 5): the standard class-wise mIoU and
FB-IoU of FSS / HSNet / Matcher, which sum intersections and unions before dividing, and the
PR-MaGIC release's per-episode mean(IoU_bg, IoU_fg), which divides first and then averages.
A union of zero (nothing predicted, nothing to find) counts as perfect agreement.
"""
from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = {
    "miou": "class-wise mIoU % (FSS/HSNet/Matcher protocol: summed I / summed U per class, mean over classes)",
    "fb_iou": "FB-IoU % (summed I / summed U for background and foreground, mean of the two)",
    "episode_fb_miou": "per-episode mean(IoU_bg, IoU_fg) %, averaged over episodes (PR-MaGIC release script)",
    "episodes": "episodes scored",
    "failed_episodes": "episodes that failed and were not scored",
}


def _ratio(intersection: int, union: int) -> float:
    return 1.0 if union == 0 else intersection / union


def _as_mask(array, what: str) -> np.ndarray:
    array = np.asarray(array)
    # A float array is most likely a probability map; thresholding it here would hide that.
    if array.dtype.kind not in "biu":
        raise ValueError(f"{what} must be a boolean (or integer 0/1) mask, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{what} must be HxW, got shape {array.shape}")
    return array != 0


def episode_counts(pred, truth) -> list:
    """[I_fg, U_fg, I_bg, U_bg] of one predicted mask against its ground truth."""
    pred = _as_mask(pred, "prediction")
    truth = _as_mask(truth, "ground truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction has shape {pred.shape} but ground truth has shape {truth.shape}")
    return [
        int(np.count_nonzero(pred & truth)),
        int(np.count_nonzero(pred | truth)),
        int(np.count_nonzero(~pred & ~truth)),
        int(np.count_nonzero(~pred | ~truth)),
    ]


class IoUAccumulator:
    """Integer intersection/union sums per class plus one score per episode.

    Integers keep :meth:`merge` exact: shards gathered in any order give the same numbers
    as one accumulator that saw every episode.
    """

    def __init__(self):
        # class -> [I_fg, U_fg, I_bg, U_bg] summed over that class's episodes
        self._sums: dict[str, list[int]] = {}
        self._episode_scores: list[float] = []
        self._failures: list[tuple[str, str]] = []

    def add(self, pred, truth, class_name: str) -> float:
        """Score one episode; returns its mean(IoU_bg, IoU_fg) as a fraction."""
        return self.add_counts(episode_counts(pred, truth), class_name)

    def add_counts(self, counts, class_name: str) -> float:
        """Score one episode from its :func:`episode_counts` (e.g. read back from a results file)."""
        counts = [int(c) for c in counts]
        sums = self._sums.setdefault(class_name, [0, 0, 0, 0])
        for i, count in enumerate(counts):
            sums[i] += count
        score = (_ratio(counts[0], counts[1]) + _ratio(counts[2], counts[3])) / 2
        self._episode_scores.append(score)
        return score

    def add_failure(self, class_name: str, reason: str) -> None:
        """Record an episode that could not be scored, so it is reported rather than lost."""
        self._failures.append((class_name, str(reason)))

    @property
    def episodes(self) -> int:
        return len(self._episode_scores)

    @property
    def failures(self) -> list:
        return list(self._failures)

    def per_class(self) -> dict:
        """Class -> foreground IoU % from that class's summed intersection and union."""
        return {name: 100.0 * _ratio(s[0], s[1]) for name, s in sorted(self._sums.items())}

    def miou(self) -> float:
        """Mean over the classes seen of per-class IoU % (NaN before any episode)."""
        ious = list(self.per_class().values())
        return math.fsum(ious) / len(ious) if ious else math.nan

    def fb_iou(self) -> float:
        """Mean of background and foreground IoU %, each from sums over all episodes."""
        if not self._sums:
            return math.nan
        totals = [sum(s[i] for s in self._sums.values()) for i in range(4)]
        return 50.0 * (_ratio(totals[0], totals[1]) + _ratio(totals[2], totals[3]))

    def episode_fb_miou(self) -> float:
        """Per-episode mean(IoU_bg, IoU_fg), averaged over episodes, in % (NaN before any episode)."""
        if not self._episode_scores:
            return math.nan
        # fsum is exactly rounded, so the result does not depend on the order shards are merged.
        return 100.0 * math.fsum(self._episode_scores) / len(self._episode_scores)

    def summary(self) -> dict:
        """Every metric of :data:`METRIC_NAMES`, keyed by name."""
        return {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "episode_fb_miou": self.episode_fb_miou(),
            "episodes": self.episodes,
            "failed_episodes": len(self._failures),
        }

    def merge(self, other: "IoUAccumulator") -> "IoUAccumulator":
        """Add ``other``'s episodes and failures into this accumulator; returns self."""
        for name, other_sums in other._sums.items():
            sums = self._sums.setdefault(name, [0, 0, 0, 0])
            for i, count in enumerate(other_sums):
                sums[i] += count
        self._episode_scores.extend(other._episode_scores)
        self._failures.extend(other._failures)
        return self

    def state_dict(self) -> dict:
        """Plain lists, dicts, ints and floats: safe for ``json.dump``."""
        return {
            "class_sums": {name: list(s) for name, s in self._sums.items()},
            "episode_scores": list(self._episode_scores),
            "failures": [list(f) for f in self._failures],
        }

    @classmethod
    def from_state(cls, state: dict) -> "IoUAccumulator":
        acc = cls()
        acc._sums = {name: [int(c) for c in s] for name, s in state["class_sums"].items()}
        acc._episode_scores = [float(x) for x in state["episode_scores"]]
        acc._failures = [(str(c), str(r)) for c, r in state["failures"]]
        return acc
