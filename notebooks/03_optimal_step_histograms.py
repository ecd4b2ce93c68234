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
# # 03 · Which step is best? Per-episode optimal steps
#
# For each episode, the step whose candidate has the highest IoU (the oracle step; the earliest
# when several tie), its histogram, mean and standard deviation, next to the paper's Tab. 2
# (mean about 3, std about 1.8 with T = 5). A wide spread is the paper's argument for keeping
# every step's candidate and selecting afterwards.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 7 s (measured); full 29 s when 02's table is cached (measured alone, 2026-12-03). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

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

# %%
NOTEBOOK = "03_optimal_step_histograms"
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
optimal = an.optimal_steps(table)
stats = {b: an.optimal_step_stats(optimal[optimal.baseline == b]) for b in available}

# %%
figures.save(viz.optimal_step_figure(optimal, an.PAPER_OPTIMAL_STEP, steps), "optimal_step_histogram")

# %%
paper = an.PAPER_OPTIMAL_STEP
lines = []
for b, s in stats.items():
    se = s["std"] / max(s["trajectories"], 1) ** 0.5
    lines.append(
        f"- **{b}**: oracle step mean {s['mean']:.2f}, std {s['std']:.2f} over {s['trajectories']} trajectories "
        f"(paper: {paper['mean']:.1f} and {paper['std']:.1f} with T = 5). In {100 * s['flat_fraction']:.0f}% of them "
        f"every candidate has the same IoU, so step 0 wins by the tie rule"
        + (f"; without those, mean {s['moving_mean']:.2f}, std {s['moving_std']:.2f}" if s["moving_trajectories"] > 1 else "")
        + ". The paper's mean is "
        + ("within" if abs(s["mean"] - paper["mean"]) <= 2 * se else "outside")
        + f" two standard errors ({2 * se:.2f}) of the measured one.")
display(Markdown(f"eta = {eta:g}, T = {steps}.\n\n" + "\n".join(lines)))

# %%
headline = ex.write_headline(NOTEBOOK, {b: {k: v for k, v in s.items() if v == v} for b, s in stats.items()}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
