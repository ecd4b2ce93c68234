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
# # 01 · Walkthrough: one episode, step by step
#
# One episode through the whole method: the support and the query, the similarity map and the
# prompts at every step, each candidate mask, every selector's scores and the final choice,
# against the oracle that knows the ground truth. An optional slider (`interactive = True`)
# browses the cached trajectory; it shows, it never computes a figure.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 10 s, full 11 s (measured). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

# %% tags=["parameters"]
backend = "tiny"  # "tiny": SAM-Tiny on ShapeWorld; "sam": an official checkpoint on real data
checkpoint = None  # path to sam_vit_{b,l,h}_*.pth (backend "sam"); None: the shipped SAM-Tiny weights
model_type = "vit_b"
dinov2_checkpoint = None  # DINOv2 ViT-L/14 weights for Matcher with backend "sam"
dataset = "shapeworld"  # or "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"
data_root = None
n_episodes = 24
etas = [1e-2, 1e-3, 1e-4, 1e-5]
steps = 5
seeds = [0, 1, 2]
device = "auto"
out_dir = None  # figures + headline JSON; None: notebooks/build/figures (relative: from the repository)
cache_dir = None  # result tables; None: notebooks/build/cache (relative: from the repository)
baselines = ["persam_f", "matcher"]  # the paper's two; "persam" works too
baseline = "persam_f"
episode_index = 0
eta = None  # None: 1e-3 for objects, 1e-4 for parts (the paper's values)
selector = "masked-image"
interactive = False

# %%
NOTEBOOK = "01_walkthrough"
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.baselines import BASELINES
from prmagic_core.figures import notebook_dirs

out_dir, cache_dir = notebook_dirs(out_dir, cache_dir)  # absolute, whatever the working directory
viz.use_style()
figures = viz.FigureSet(out_dir, prefix=NOTEBOOK[:2])
setup = ex.Setup(backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
                 dataset=dataset, data_root=data_root, device=device)
lab = ex.Lab(setup, cache_dir)
available = [b for b in baselines if b in BASELINES]
skipped = [b for b in baselines if b not in BASELINES]
settings = dict(backend=backend, checkpoint=checkpoint, model_type=setup.sam_type, dataset=dataset, kind=lab.kind,
                n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds, baselines=available,
                device=lab.device.type)
if skipped:
    display(Markdown(f"Not available in this installation, so left out: {', '.join(skipped)}."))
eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
seed = seeds[0]
trace = lab.trace(baseline, episode_index, eta=eta, seed=seed, sweep=ex.Sweep(steps=steps))
settings.update(baseline=baseline, episode_index=episode_index, eta=eta, selector=selector, seed=seed)

# %% [markdown]
# ## The episode
#
# The support image comes with a mask of the object to find; the query is a new image of the
# same class. Colour varies within a ShapeWorld class, so colour misleads a similarity map.

# %%
figures.save(viz.episode_figure(trace), "episode")
display(Markdown(f"Episode `{trace.episode}`, class **{trace.class_name}**, baseline {baseline}, "
                 f"eta = {eta:g}, gamma = 0.1, {trace.steps} steps, seed {seed}."))

# %% [markdown]
# ## Similarity maps, prompts and candidates
#
# Step 0 is the baseline itself: the similarity $S_0$ between the support prototype and the query
# embedding $z_0$, the prompts sampled from it, and the mask decoded from them ($m_0$, "B"). Each
# later step moves the embedding along the decoder's gradient plus noise, recomputes the
# similarity from the moved embedding, resamples the prompts, and decodes a new candidate from
# the *original* $z_0$. Dashed white: the ground truth.

# %%
figures.save(viz.steps_figure(trace, selector), "steps")
figures.save(viz.trajectory_figure(trace), "prompt_trajectory")
moved = sum(len(p) != len(trace.prompts[0]) or (p != trace.prompts[0]).any() for p in trace.prompts[1:])
display(Markdown(
    f"The prompts differ from step 0's at {moved} of {trace.steps} later steps. Per step the drift moved "
    f"the embedding by an L2 norm of {trace.drift_norm.mean():.3g} on average and the noise by "
    f"{trace.noise_norm.mean():.3g}, {trace.noise_norm.mean() / max(trace.drift_norm.mean(), 1e-30):.0f} times more."))

# %% [markdown]
# ## Choosing the final mask
#
# The top-1 selector represents each candidate's masked query object and the support object the
# same way and keeps the most similar (`masked-image` as released, `crop-pool` as the paper
# describes, `pooled` without an extra encoder pass). The oracle keeps the candidate of highest IoU,
# an upper bound no method can use. Red rings mark each one's pick.

# %%
figures.save(viz.scores_figure(trace), "scores")
t, o = trace.chosen(selector), trace.oracle_index
display(Markdown(
    f"B (step 0) has IoU {trace.ious[0]:.3f}. The {selector} selector picks step {t} (IoU {trace.ious[t]:.3f}), "
    f"the oracle step {o} (IoU {trace.ious[o]:.3f}): "
    + ("the selector found the best candidate." if trace.ious[t] >= trace.ious[o] else
       f"the selector misses {trace.ious[o] - trace.ious[t]:.3f} IoU.")
    + (" Here refinement changed nothing measurable." if trace.ious.max() - trace.ious.min() < 1e-9 else "")))

# %%
if interactive:  # a widget frontend is needed; papermill runs keep interactive = False
    viz.step_explorer(trace, selector)

# %%
headline = ex.write_headline(NOTEBOOK, {
    "iou": {"baseline": trace.ious[0], "top1": trace.ious[t], "oracle": trace.ious[o]},
    "top1_step": t, "oracle_step": o,
    "mean_drift_norm": float(trace.drift_norm.mean()), "mean_noise_norm": float(trace.noise_norm.mean()),
}, settings, figures.names, out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
