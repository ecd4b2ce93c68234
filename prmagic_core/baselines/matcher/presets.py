"""Matcher's per-benchmark settings, one named preset each (values from Matcher's released runs).

- ``fss`` (FSS-1000): the matched points are clustered into 8 k-means centres, subsets of
  4..6 centres prompt SAM (single-mask output), candidates are ranked by
  0.8 * emd + 0.2 * purity * coverage and the top 10 whose score is above 0.7 of the best merge.
- ``coco`` (COCO-20i and LVIS-92i): the raw matched points prompt SAM in subsets of 1..6
  (three-mask output, all three kept), SAM's own filters (predicted IoU 0.85, stability 0.9),
  a purity filter (0.02), then the score filter on distances 1 - emd (0.33 absolute, 0.1
  relative to the spread) and the union of up to 9 candidates.
- ``part`` (PACO-Part, Pascal-Part, DIS5K): raw points in subsets of 3..6 plus the box around
  all matched points, a coverage filter (0.3), score 0.5 * emd + 0.5 * purity, top 5 merged.

``launcher-*`` (:data:`LAUNCHER_PRESETS`): the settings PR-MaGIC's release ran Matcher with
(``scripts/launch_matcher_pr.py``), which differ from Matcher's own scripts; the ``release``
project preset uses them (``matcher_settings="launcher"``), see :func:`launcher_preset`.

The paper's prompt-point counts ("Matcher: 8 points semantic, 5 part") are the 8 centres of
``fss`` and the 5 masks ``part`` merges; Matcher's part setting has no 5-point prompt.

Subsets are the cost: every subset is a SAM decode, per refinement step. ``tiny_subsets_per_size``
caps the subsets of each size on SAM-Tiny (CPU runs); on official SAM the preset's own
counts apply (all combinations when at most 8 points, else ``draws_per_size`` random ones).
"""
from __future__ import annotations

from dataclasses import dataclass

MERGES = ("topk", "score_filter")


@dataclass(frozen=True)
class MatcherPreset:
    name: str
    centres: int | None  # k-means centres on the matched points; None: the matched points themselves
    subset_sizes: tuple  # (smallest, largest) prompt subset
    draws_per_size: int  # random subsets per size when there are more than 8 prompt points
    tiny_subsets_per_size: int
    box: bool  # the box around all matched points joins every subset's prompt
    multimask: bool  # SAM's three outputs per subset (all kept as candidates) instead of one
    alpha: float  # score = alpha * emd + beta * purity * coverage ** exp
    beta: float
    exp: float
    min_coverage: float = 0.0  # filters, applied in this order (0 turns one off)
    min_emd: float = 0.0
    min_purity: float = 0.0
    min_predicted_iou: float = 0.0  # SAM's own candidate filters
    min_stability: float = 0.0
    merge: str = "topk"
    merge_count: int = 10
    topk_relative_score: float = 0.7  # "topk": keep score / best score above this
    max_distance: float = 0.33  # "score_filter": keep 1 - score below this ...
    max_relative_distance: float = 0.1  # ... and below this after min-max scaling

    def __post_init__(self):
        low, high = self.subset_sizes
        if not 1 <= low <= high:
            raise ValueError(f"preset {self.name}: subset_sizes must be 1 <= low <= high, got {self.subset_sizes}")
        if self.merge not in MERGES:
            raise ValueError(f"preset {self.name}: merge must be one of {MERGES}, got {self.merge!r}")
        if min(self.draws_per_size, self.tiny_subsets_per_size, self.merge_count) < 1 or (self.centres or 1) < 1:
            raise ValueError(f"preset {self.name}: counts must be >= 1")


FSS = MatcherPreset(
    name="fss", centres=8, subset_sizes=(4, 6), draws_per_size=30, tiny_subsets_per_size=8,
    box=False, multimask=False, alpha=0.8, beta=0.2, exp=1.0, merge="topk", merge_count=10,
)
COCO = MatcherPreset(
    name="coco", centres=None, subset_sizes=(1, 6), draws_per_size=64, tiny_subsets_per_size=4,
    box=False, multimask=True, alpha=1.0, beta=0.0, exp=0.0, min_purity=0.02,
    min_predicted_iou=0.85, min_stability=0.9, merge="score_filter", merge_count=9,
)
PART = MatcherPreset(
    name="part", centres=None, subset_sizes=(3, 6), draws_per_size=128, tiny_subsets_per_size=6,
    box=True, multimask=False, alpha=0.5, beta=0.5, exp=0.0, min_coverage=0.3, merge="topk", merge_count=5,
)

PRESETS = {p.name: p for p in (FSS, COCO, PART)}
# The preset each benchmark of ``data.benchmarks`` runs with, and the default per task kind.
BENCHMARK_PRESETS = {"fss": "fss", "coco": "coco", "lvis": "coco",
                     "paco": "part", "pascal_part": "part", "dis5k": "part"}
KIND_PRESETS = {"object": "fss", "part": "part"}


def launcher_preset(name: str, centres: int, alpha: float, beta: float, exp: float, merge_count: int) -> MatcherPreset:
    """PR-MaGIC's ``scripts/launch_matcher_pr.py`` (with pr_magic_for_matcher.py's defaults): k-means
    centres, subsets of 4..6, 30 random draws per size, single-mask output, no SAM or metric
    filter on the point subsets, the score-filter merge (0.33 / 0.1), no box; per benchmark
    (alpha, beta, exp, masks merged) and the centres (8, or 5 for part benchmarks and DIS5K).
    Its box NMS (0.65) acts on the everything-mode masks this Matcher does not pool."""
    return MatcherPreset(name=name, centres=centres, subset_sizes=(4, 6), draws_per_size=30, tiny_subsets_per_size=8,
                         box=False, multimask=False, alpha=alpha, beta=beta, exp=exp, merge="score_filter",
                         merge_count=merge_count)


LAUNCHER_PRESETS = {p.name: p for p in (
    launcher_preset("launcher-coco", 8, 1.0, 0.0, 0.0, 9),
    launcher_preset("launcher-fss", 8, 0.8, 0.2, 1.0, 10),
    launcher_preset("launcher-lvis", 8, 1.0, 0.0, 0.0, 9),
    launcher_preset("launcher-part", 5, 0.5, 0.5, 0.0, 5),  # paco_part and pascal_part
    launcher_preset("launcher-dis", 5, 0.8, 0.2, 1.0, 10),
)}
LAUNCHER_BENCHMARKS = {"fss": "launcher-fss", "coco": "launcher-coco", "lvis": "launcher-lvis",
                       "paco": "launcher-part", "pascal_part": "launcher-part", "dis5k": "launcher-dis"}
LAUNCHER_KINDS = {"object": "launcher-fss", "part": "launcher-part"}


def settings_preset(matcher_settings: str, kind: str, benchmark: str | None = None) -> str:
    """The Matcher preset's name for a task: from the PR-MaGIC launcher (``"launcher"``) or from
    Matcher's own scripts (``"matcher"``); by benchmark when known, else by task kind."""
    if matcher_settings == "launcher":
        return LAUNCHER_BENCHMARKS.get(benchmark) or LAUNCHER_KINDS[kind]
    return BENCHMARK_PRESETS.get(benchmark) or KIND_PRESETS[kind]


def get_preset(name: str) -> MatcherPreset:
    known = {**PRESETS, **LAUNCHER_PRESETS}
    if name not in known:
        raise ValueError(f"unknown Matcher preset {name!r}; expected one of {', '.join(known)}")
    return known[name]
