# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Baseline, top-1 and oracle
#
# B (the baseline's mask, step 0), T (the top-1 selector's pick among the T + 1 candidates) and O
# (the oracle, the candidate of highest IoU) per baseline and selector: `masked-image` (as
# released), `crop-pool` (as the paper describes) and `pooled` (no extra encoder pass). The gap
# O - T is what a better selector could still gain. Then every episode on its own, and the cases
# where the selector picks wrong.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 9 s (measured); full 1001 s alone on 2 cores after 02, whose 100 episodes at eta 1e-3 it reuses (computing 200 more per cell; 2026-12-03). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

# %% tags=["parameters"]
backend = "tiny"  # "tiny": SAM-Tiny on ShapeWorld; "sam": an official checkpoint on real data
checkpoint = None  # path to sam_vit_{b,l,h}_*.pth (backend "sam"); None: the shipped SAM-Tiny weights
model_type = "vit_b"
dinov2_checkpoint = None  # DINOv2 ViT-L/14 weights for Matcher and GF-SAM with backend "sam"
matching_encoder = None  # what Matcher and GF-SAM match with on backend "tiny": "dino-tiny" or "sam-tiny" (None: the default)
dataset = "shapeworld"  # or "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"
data_root = None
image_size = 512  # ShapeWorld's side in px (the release evaluates at 518; SAM-Tiny resizes to its 128)
fold = 0  # ShapeWorld: episodes of this fold's NOVEL classes (None: every class); a benchmark's fold
n_episodes = 24
etas = [1e-2, 1e-3, 1e-4, 1e-5]
steps = 5
seeds = [0, 1, 2]
device = "auto"
out_dir = None  # figures + headline JSON; None: notebooks/build/figures (relative: from the repository)
cache_dir = None  # result tables; None: notebooks/build/cache (relative: from the repository)
baselines = ["persam_f", "matcher"]  # the paper's two; "persam" and "gfsam" work too
eta = None  # None: 1e-3 for objects, 1e-4 for parts
n_misses = 4

# %%
NOTEBOOK = "04_oracle_vs_top1"
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)
eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
settings.update(eta=eta)
table = lab.sweep(ex.Sweep(baselines=available, etas=[eta], seeds=seeds, episodes=n_episodes, steps=steps))
selectors = an.selectors_in(table)
summary = an.over_seeds(an.bto(table), ["baseline", "variant", "selector"])
wide = {m: an.bto_wide(summary, m, by=["baseline"]) for m in ("miou", "mean_iou")}
episodes = an.per_episode(table)

# %% [markdown]
# ## B / T / O
#
# Means over seeds; error bars are one standard deviation across seeds. Top: class-wise mIoU
# (the few-shot protocol); bottom: mean per-episode IoU.

# %%
figures.save(viz.bto_figure(summary, labels=an.METRIC_LABELS), "bto")
for m, w in wide.items():
    display(Markdown(f"**{an.METRIC_LABELS[m]}**\n\n" + an.markdown_table(w)))

# %% [markdown]
# ## Does top-1 improve on the baseline, and how far is the oracle?

# %%
paper_b, paper_t, paper_o = an.PAPER_BTO[("persam_f", "fss")]
lines, gains = [], {}
for b in available:
    rows = episodes[episodes.baseline == b]
    for s in selectors:
        gain = an.paired_interval(100 * rows[f"iou_T {s}"], 100 * rows.iou_B, clusters=rows.episode)
        gap = an.paired_interval(100 * rows.iou_O, 100 * rows[f"iou_T {s}"], clusters=rows.episode)
        gains[f"{b}/{s}"] = {"T-B": gain["mean"], "T-B_low": gain["low"], "T-B_high": gain["high"],
                             "O-T": gap["mean"]}
        lines.append(f"- **{b}, {s}**: T - B = {gain['mean']:+.2f} points of mean IoU "
                     f"(95% interval {gain['low']:+.2f} to {gain['high']:+.2f}, bootstrap over "
                     f"{gain['clusters']} episodes x {rows.seed.nunique()} seeds): "
                     f"T is {an.direction(gain)} B. O - T = {gap['mean']:.2f}.")
display(Markdown(
    f"The paper reports T above B for PerSAM-F on every dataset (e.g. FSS-1000: T - B = {paper_t - paper_b:+.2f}, "
    f"O - T = {paper_o - paper_t:.2f} class-wise mIoU). Measured here (eta = {eta:g}, T = {steps}):\n\n" + "\n".join(lines)))

# %% [markdown]
# ## Every episode
#
# Each point is one trajectory: its baseline IoU against the IoU after refinement and selection.
# Points above the diagonal gained, below it lost.

# %%
figures.save(viz.scatter_figure(episodes, selectors), "scatter")

# %% [markdown]
# ## Where the selector picks wrong
#
# The trajectories where the first selector's pick falls furthest below the oracle's candidate
# (masks read from the table; ground truth dashed).

# %%
cases = ex.miss_cases(lab, table[table.baseline == available[0]], selectors[0], n_misses, n_episodes)
figures.save(viz.misses_figure(cases), "misses")

# %%
headline = ex.write_headline(NOTEBOOK, {
    "miou": {f"{r.baseline}/{r.variant}{'/' + r.selector if r.selector else ''}": r.miou for r in summary.itertuples()},
    "mean_iou": {f"{r.baseline}/{r.variant}{'/' + r.selector if r.selector else ''}": r.mean_iou for r in summary.itertuples()},
    "paired_mean_iou_gains": gains,
    "failed_trajectories": int(len(an.failures(table))),
}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
