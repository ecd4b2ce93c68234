"""Evaluate a baseline with and without PR-MaGIC over many episodes: B / T / O.

Every finished episode is one row of a :class:`~prmagic_core.results.ResultsFile` (when
``out`` is given), written atomically; a rerun skips the episodes already there, and the
scores are always recomputed from the rows, so a killed and resumed run reports exactly
what an uninterrupted one does. Episodes that fail (also those whose files cannot be read)
are recorded with their reason and counted, never dropped silently.

A ``shard`` = (rank, world) runs episodes rank, rank + world, ...; each episode's noise seed
depends only on (seed, episode id), so shards gathered back in protocol order
(:func:`in_protocol_order`) are the rows of one process's run.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

from segment_anything.utils.transforms import ResizeLongestSide
from tqdm.auto import tqdm

from .baselines.base import Baseline
from .errors import UserError
from .flow import FlowConfig
from .metrics import METRIC_NAMES, IoUAccumulator, episode_counts
from .models.encoding import Encoder
from .overlays import save_overlays
from .pipeline import run_episode
from .presets import Preset
from .results import ResultsFile
from .workers import ordered_map

VARIANTS = ("baseline", "top1", "oracle")
# A benchmark that cannot load an episode raises BenchmarkError, a ValueError.
EPISODE_ERRORS = (ValueError, RuntimeError, FloatingPointError, OSError)


def episode_seed(seed: int, episode_id: str) -> int:
    """The noise seed of one episode: independent of episode order and of sharding."""
    return zlib.crc32(f"{seed}:{episode_id}".encode())


def episode_ids(episodes, limit: int | None = None) -> list:
    """The ids of the first ``limit`` episodes (a lazy sequence's ``episode_ids``, else the episodes' names)."""
    ids = getattr(episodes, "episode_ids", None)
    return list(ids if ids is not None else (e.name for e in episodes))[:limit]


def shard_path(out, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` keeps its rows: ``results.rank0-of-2.csv`` beside ``results.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world}{out.suffix}")


def in_protocol_order(rows, ids) -> list:
    """``rows`` (e.g. gathered from shards) sorted as their episodes come in ``ids``."""
    position = {episode_id: i for i, episode_id in enumerate(ids)}
    return sorted(rows, key=lambda row: position[row["episode"]])


def _row(episode, result) -> dict:
    picks = {"baseline": 0, "top1": result.top1_index, "oracle": result.oracle_index}
    row = {
        "episode": episode.name, "class": episode.class_name, "kind": episode.kind, "status": "ok", "reason": "",
        "top1_index": result.top1_index, "oracle_index": result.oracle_index,
        "candidate_ious": json.dumps([round(x, 6) for x in result.ious]),
        "selector_scores": json.dumps([round(x, 6) for x in result.selector_scores]),
        "seconds": json.dumps({k: round(v, 4) for k, v in result.seconds.items()}),
    }
    for variant, index in picks.items():
        row[f"counts_{variant}"] = json.dumps(episode_counts(result.candidates[index], episode.query_mask))
    return row


def _failed_row(episode_id: str, class_name: str, err: Exception) -> dict:
    return {"episode": episode_id, "class": class_name, "status": "failed", "reason": f"{type(err).__name__}: {err}"}


def failure_lines(rows, shown: int = 5) -> list:
    """Why episodes failed: one line per failed episode for the first ``shown``, then a count of the rest."""
    failed = [row for row in rows if row["status"] != "ok"]
    lines = [f"episode {row['episode']} failed: {row['reason']}" for row in failed[:shown]]
    if len(failed) > shown:
        lines.append(f"... and {len(failed) - shown} more failed episodes (--out keeps every reason)")
    return lines


def _check_in_memory(episodes, ids: list, encoder: Encoder, need_truth: bool = True) -> None:
    """Episodes already in memory (not a lazy benchmark) are checked before any work: each has
    ground truth to score against (unless ``need_truth`` is off: --save-masks draws unscored photos
    too), and images that survive SAM's resize to the encoder's input."""
    if hasattr(episodes, "episode_ids"):
        return
    chosen = episodes[:len(ids)]
    unscored = [episode.name for episode in chosen if episode.query_mask is None]
    if unscored and need_truth:
        raise UserError(f"episode {unscored[0]} has no query mask to score against ({len(unscored)} of {len(ids)} "
                        "episodes lack one; a folder episode needs query_mask.png)")
    side = encoder.sam.image_encoder.img_size
    for episode in chosen:
        for image in (*episode.support_images, episode.query_image):
            height, width = image.shape[:2]
            if min(ResizeLongestSide.get_preprocess_shape(height, width, side)) < 1:
                raise UserError(f"episode {episode.name}: a {width}x{height} image is too thin for the "
                                f"{side}-pixel encoder input (its short side resizes to 0 pixels)")


def check_row(row: dict) -> None:
    """Raise ValueError on a stored row that :func:`accumulate` could not use (a resumed run computes it again)."""
    if row["status"] == "ok":
        for variant in VARIANTS:
            counts = json.loads(row[f"counts_{variant}"])
            if not (isinstance(counts, list) and len(counts) == 4 and all(isinstance(c, int) for c in counts)):
                raise ValueError(f"counts_{variant} is not four integers")
    elif row["status"] != "failed":
        raise ValueError(f"unknown status {row['status']!r}")


def accumulate(rows) -> dict:
    """B / T / O accumulators rebuilt from result rows."""
    accs = {v: IoUAccumulator() for v in VARIANTS}
    for row in rows:
        for variant, acc in accs.items():
            if row["status"] == "ok":
                acc.add_counts(json.loads(row[f"counts_{variant}"]), row["class"])
            else:
                acc.add_failure(row["class"], row["reason"])
    return accs


def paired_differences(rows, n_boot: int = 2000) -> dict:
    """T - B and O - B in foreground-IoU points, episode by episode (the same episode's masks compared),
    with 95% bootstrap intervals over episodes: what a mean over classes does not show."""
    from .analysis import paired_interval

    ious = {v: [] for v in VARIANTS}
    for row in rows:
        if row["status"] == "ok":
            for v in VARIANTS:
                i_fg, u_fg = json.loads(row[f"counts_{v}"])[:2]
                ious[v].append(100.0 * i_fg / u_fg if u_fg else 100.0)
    if not ious["baseline"]:
        return {}
    return {f"{name}_minus_b": {k: round(v, 2) if isinstance(v, float) else v
                                for k, v in paired_interval(ious[v], ious["baseline"], n_boot=n_boot).items()}
            for name, v in (("t", "top1"), ("o", "oracle"))}


def summarise(accs: dict, settings: dict, rows=()) -> dict:
    """The headline numbers: class-wise mIoU for B/T/O first, every metric labelled; with ``rows``, the
    paired per-episode differences (:func:`paired_differences`)."""
    out = {f"{v}_miou": round(accs[v].miou(), 2) for v in VARIANTS}
    for v in VARIANTS:
        out[f"{v}_fb_iou"] = round(accs[v].fb_iou(), 2)
        out[f"{v}_episode_fb_miou"] = round(accs[v].episode_fb_miou(), 2)
    out["episodes"] = accs["baseline"].episodes
    out["failed_episodes"] = len(accs["baseline"].failures)
    out["metric"] = METRIC_NAMES["miou"]
    out["metrics"] = {k: METRIC_NAMES[k] for k in ("miou", "fb_iou", "episode_fb_miou")}
    out["differences"] = paired_differences(rows)
    out["settings"] = settings
    return out


def bto_table(summary: dict) -> str:
    """The B / T / O table ``prmagic evaluate`` prints: rows are which mask, columns which metric, all in %."""
    settings = summary.get("settings", {})
    n, steps = summary["episodes"], settings.get("steps", "?")
    rows = (("baseline", "B", "baseline: its own mask (step 0)"),
            ("top1", "T", f"top-1: the {settings.get('selector', '')} selector's pick"),
            ("oracle", "O", "oracle: the candidate of highest IoU"))
    lines = [f"{n} episode{'' if n == 1 else 's'} ({summary['failed_episodes']} failed), "
             f"{settings.get('baseline', '')} with PR-MaGIC, steps={steps}, preset {settings.get('preset', '?')}; rows: which mask, columns: which metric, in %",
             f"{'':<42}{'mIoU %':>8}{'FB-IoU %':>10}{'ep-FB-mIoU %':>14}"]
    for key, label, what in rows:
        lines.append(f"{label} {what:<40}{summary[key + '_miou']:8.2f}{summary[key + '_fb_iou']:10.2f}"
                     f"{summary[key + '_episode_fb_miou']:14.2f}")
    for key, label in (("t_minus_b", "T - B"), ("o_minus_b", "O - B")):
        d = summary.get("differences", {}).get(key)
        if d:
            lines.append(f"{label}: {d['mean']:+.2f} foreground-IoU points per episode, 95% interval {d['low']:+.2f} to "
                         f"{d['high']:+.2f} (bootstrap over {d['clusters']} episodes)")
    lines.append("mIoU: class-wise (per class, summed intersection / summed union, then the mean over classes); "
                 "FB-IoU: mean of foreground and background IoU; ep-FB-mIoU: each episode's mean of foreground and "
                 "background IoU, averaged over episodes (the release's PerSAM script)")
    return "\n".join(lines)


def evaluate(baseline: Baseline, encoder: Encoder, episodes, steps: int = 5, flow: FlowConfig = FlowConfig(),
             selector: str = "masked-image", seed: int = 0, resampling: str | None = None, out=None,
             settings: dict | None = None, shard: tuple = (0, 1), limit: int | None = None,
             progress: bool = True, save_masks=None, preset: Preset | str | None = None,
             workers: int = 1) -> list:
    """Run this ``shard`` = (rank, world)'s share of the first ``limit`` episodes, skipping those already
    in ``out``; returns the shard's rows, the ones found in ``out`` included.

    ``preset`` (default ``release``) sets the loop's and the selector's behaviour (``resampling``
    overrides its resampling); ``settings`` is what the results file records (name the preset there).
    ``save_masks``: a folder; each episode run gets ``<save_masks>/<episode>/`` with its B, T, O and
    every candidate drawn on the query image (:func:`prmagic_core.overlays.save_overlays`), also an
    episode without a query mask, which is then recorded as failed (it cannot be scored).

    ``episodes`` is a sequence of :class:`Episode`, or any lazy sequence with ``episode_ids``.
    ``workers`` > 1 runs the episodes in that many forked processes (:mod:`prmagic_core.workers`);
    the rows are those of one process.
    """
    settings = dict(settings or {})
    ids = episode_ids(episodes, limit)
    if len(set(ids)) != len(ids):
        raise ValueError("episode names must be unique (they key the results file)")
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    _check_in_memory(episodes, ids, encoder, need_truth=save_masks is None)
    table = ResultsFile(out, settings, check_row=check_row) if out is not None else None
    rows = []
    todo = [i for i in range(rank, len(ids), world) if not (table and table.done(ids[i]))]

    def run_one(index: int) -> dict:
        class_name = "?"
        try:
            episode = episodes[index]
            class_name = episode.class_name
            unscored = f"episode {ids[index]} has no query mask to score against"
            if episode.query_mask is None and save_masks is None:
                raise ValueError(unscored)
            result = run_episode(baseline, encoder, episode, steps, flow, selector,
                                 episode_seed(seed, ids[index]), resampling, preset=preset)
            if save_masks is not None:
                save_overlays(Path(save_masks) / ids[index], episode, result)
            if episode.query_mask is None:
                raise ValueError(f"{unscored} (its masks are in {Path(save_masks) / ids[index]})")
            return _row(episode, result)
        except EPISODE_ERRORS as err:
            return _failed_row(ids[index], class_name, err)

    finished = ordered_map(run_one, todo, workers)
    for row in tqdm(finished, total=len(todo), disable=not progress, desc=f"{baseline.name} steps={steps}",
                    unit="episode"):
        rows.append(row)
        if table is not None:
            table.append([row])
    if table is None:
        return rows
    mine = {ids[i] for i in range(rank, len(ids), world)}
    return [r for r in table.rows if r["episode"] in mine]
