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
# # 01 · Walkthrough: the method, one idea per cell
#
# PR-MaGIC on one episode, written out with the core's own small functions: encode the support
# and the query, pool the support prototype, compute the similarity map, draw the prompts, decode,
# take d_phi and its gradient, make one flow step, recompute the similarity from the moved
# embedding and draw new prompts; then the loop (`refine`) does the same T times and a selector
# picks the final mask. The baseline is PerSAM-F, the paper's main one (notebooks 02-06 run
# PerSAM-F and Matcher through the same loop). An optional slider (`interactive = True`) browses
# the steps; it shows, it never computes.
#
# **Runtime.** CPU, `backend="tiny"`: 115 s of wall time and 28 s of CPU time top to bottom
# (`jupyter nbconvert --execute`, kernel start included, 2026-11-29) on 2 cores shared with many
# other jobs (load average ~14), so alone it should take about its CPU time; not measured alone.
# GPU, `backend="sam"`: not measured (no GPU was available); the cost is the encoder: 2 passes for
# support and query, and up to 2 (T + 1) + 2 for the two re-encoding selectors.

# %% tags=["parameters"]
backend = "tiny"  # "tiny": SAM-Tiny on ShapeWorld; "sam": an official checkpoint on real data
checkpoint = None  # path to sam_vit_{b,l,h}_*.pth (backend "sam"); None: the shipped SAM-Tiny weights
model_type = "vit_b"
dinov2_checkpoint = None  # unused here (PerSAM-F needs no DINOv2); kept so every notebook takes the same parameters
dataset = "shapeworld"  # or "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"
data_root = None
n_episodes = 24  # unused here: one episode
etas = [1e-2, 1e-3, 1e-4, 1e-5]  # unused here: eta below
steps = 5
seeds = [0, 1, 2]  # the first one seeds the noise
device = "auto"
out_dir = None  # figures + headline JSON; None: notebooks/build/figures (relative: from the repository)
cache_dir = None  # result tables; None: notebooks/build/cache (relative: from the repository)
baselines = ["persam_f"]  # unused here: the walkthrough is PerSAM-F
episode_index = 0
eta = None  # None: 1e-3 for objects, 1e-4 for parts (the paper's values)
gamma = 0.1
clip = 0.1
selector = "masked-image"
interactive = False

# %%
NOTEBOOK = "01_walkthrough"
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from prmagic_core import experiments as ex, viz
from prmagic_core.baselines import PERSAM_F_POINTS
from prmagic_core.baselines.persam import (PerSAMF, PerSAMFPrompter, encode_episode, fit_mask_weights,
                                           prepared_target, similarity_map)
from prmagic_core.evaluation import episode_seed
from prmagic_core.figures import notebook_dirs
from prmagic_core.flow import FlowConfig, d_phi, flow_step
from prmagic_core.masks import iou
from prmagic_core.presets import get_preset
from prmagic_core.models.encoding import to_grid
from prmagic_core.refine import refine
from prmagic_core.select import SELECTORS, oracle, select

out_dir, cache_dir = notebook_dirs(out_dir, cache_dir)  # absolute, whatever the working directory
viz.use_style()
figures = viz.FigureSet(out_dir, prefix=NOTEBOOK[:2])
lab = ex.Lab(ex.Setup(backend=backend, checkpoint=checkpoint, model_type=model_type, dataset=dataset,
                      data_root=data_root, device=device), cache_dir)
eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
seed = seeds[0]
flow = FlowConfig(eta=eta, gamma=gamma, clip=clip)
preset = get_preset("release")  # every component as the authors' code computes it (README: presets)
settings = dict(backend=backend, checkpoint=checkpoint, model_type=lab.setup.sam_type, dataset=dataset, kind=lab.kind,
                baseline="persam_f", episode_index=episode_index, steps=steps, eta=eta, gamma=gamma, clip=clip,
                selector=selector, seed=seed, device=lab.device.type)
print(f"SAM ({lab.setup.sam_type}) on {lab.device}; flow: eta = {eta:g}, gamma = {gamma:g}, clip = {clip:g}, T = {steps}")

# %% [markdown]
# ## 1. The episode
#
# A support image with a mask of the object to find, and a query image of the same class. Colour
# varies within a ShapeWorld class, so colour misleads a similarity map. Dashed white, here and
# below: the query's ground truth, which the method never sees (only the oracle and the IoUs use it).

# %%
episode = lab.episode(episode_index)
print(f"episode {episode.name}: class {episode.class_name!r}, {episode.shots} shot(s)")
print("support image", episode.support_images[0].shape, "support mask", episode.support_masks[0].shape,
      "query image", episode.query_image.shape)
fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
viz.overlay(axes[0], episode.support_images[0], episode.support_masks[0], title=f"support: {episode.class_name}")
viz.overlay(axes[1], episode.query_image, truth=episode.query_mask, title="query (ground truth dashed)")
figures.save(fig, "episode")

# %% [markdown]
# ## 2. Encode the support and the query
#
# SAM's image encoder turns each image into an embedding: C channels on an h x w grid. The query's
# is $z_0$, the point the flow starts from. The encoder caches by content, so nothing below encodes
# these two images again.

# %%
encoder = lab.encoder
supports, query = encode_episode(encoder, episode.support_images, episode.query_image)
z0 = query.embedding
print("support embedding", tuple(supports[0].embedding.shape), "| query embedding z0", tuple(z0.shape))
print(f"{z0.shape[1]} channels on a {query.grid[0]}x{query.grid[1]} grid; SAM's input side {query.side} px; "
      f"encoder passes so far: {encoder.passes}")

# %% [markdown]
# ## 3. The support prototype
#
# The support mask, brought onto the embedding grid, selects the support features of the object;
# PerSAM-F pools them into one target feature: per channel the mean of (max, mean) over those cells.

# %%
target = prepared_target(encoder, supports, episode.support_masks, "maxmean", preset)
inside = to_grid(episode.support_masks[0], supports[0]) > 0
print("support mask on the grid", tuple(inside.shape), f"({int(inside.sum())} cells inside) -> target feature",
      tuple(target.embedding.shape))
fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8), gridspec_kw={"width_ratios": [1, 2]})
axes[0].imshow(inside.cpu(), cmap="gray")
axes[0].set_title("support mask on the grid", fontsize=9)
axes[1].bar(range(len(target.embedding)), target.embedding.cpu())
axes[1].set_title("the target feature, per channel", fontsize=9)
viz.show(fig)

# %% [markdown]
# ## 4. The similarity map
#
# $S_0$: the cosine of the target feature with every query feature of $z_0$, resized to the query
# image. Where it is high, the query looks like the support object.

# %%
S0 = similarity_map(target, z0, query, preset.similarity_upsampling)
print("S0", tuple(S0.shape), f"cosine from {S0.min():.3f} to {S0.max():.3f}")
fig, ax = plt.subplots(figsize=(3.4, 3.4))
ax.imshow(S0.cpu(), cmap="magma")
ax.contour(episode.query_mask, levels=[0.5], colors=["white"], linewidths=1.0, linestyles="--")
ax.set_title("S_0", fontsize=9)
figures.save(fig, "similarity")

# %% [markdown]
# ## 5. PerSAM-F's one-off fit on the support
#
# PerSAM-F mixes SAM's three multimask outputs with weights fitted on the support image (prompted
# there, as the release does, with the top-1 point and band points of its own similarity map). This
# happens once per episode, before any refinement.

# %%
points = PERSAM_F_POINTS[lab.kind]
fit = PerSAMF(points=points, settings=preset).fit_prompts(lab.sam, supports[0], target)
weights, losses = fit_mask_weights(lab.sam, supports[0], episode.support_masks[0], fit, iters=1000)
prompter = PerSAMFPrompter(lab.sam, target, query, weights, losses, points, preset, fit)
print("mixing weights", tuple(weights.shape), np.round(weights.cpu().numpy(), 3),
      f"| loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} iterations")

# %% [markdown]
# ## 6. The prompt draw
#
# PR-MaGIC's PerSAM-F sampler: the top-1 point of $S_0$, then random points from two top quantile
# bands (on a 128-px image those bands hold 1 and 2 pixels). The random choices come from one seed,
# drawn from the episode's noise generator, and are reused at every step ("fixed" resampling, so
# prompts move only where the similarity map moved; the release re-draws them every step, "fresh",
# which the loop below can do too).

# %%
generator = torch.Generator().manual_seed(episode_seed(seed, episode.name))  # as `prmagic evaluate` seeds it
prompt_seed = int(torch.randint(0, 2**62, (1,), generator=generator))


def draw(similarity):
    return prompter.sample_prompts(similarity, torch.Generator().manual_seed(prompt_seed))


P0 = draw(S0)
print("P0: coords", P0.coords.shape, "(x, y) =", P0.coords.astype(int).tolist(), "labels", P0.labels.astype(int).tolist())
fig, ax = plt.subplots(figsize=(3.4, 3.4))
ax.imshow(S0.cpu(), cmap="magma")
viz.draw_prompts(ax, P0)
ax.set_title("S_0 and its prompts P_0", fontsize=9)
figures.save(fig, "prompts")

# %% [markdown]
# ## 7. One decode
#
# SAM's prompt encoder and mask decoder turn $z_0$ and $P_0$ into a mask (PerSAM-F: the three outputs
# mixed by the fitted weights, then two refining decoder calls). This mask $m_0$ is the baseline's
# own answer, "B".

# %%
with torch.no_grad():
    m0, logits0, _ = prompter.decode(z0, P0, S0)
print("mask m0", m0.shape, m0.dtype, "| low-res logits", tuple(logits0.shape), f"| IoU with the truth {iou(m0, episode.query_mask):.3f}")
fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
viz.overlay(axes[0], episode.query_image, m0, P0, truth=episode.query_mask, title="m_0 (B)")
axes[1].imshow(logits0.cpu(), cmap="coolwarm")
axes[1].set_title("its low-res logits", fontsize=9)
figures.save(fig, "decode")

# %% [markdown]
# ## 8. d_phi and its gradient
#
# The mask decoder plays the discriminator: $d_\phi$ is the sum of its low-res logits (the released
# reduction). Its gradient with respect to the query embedding says how to move $z$ so that the
# decoder is more sure of a foreground. The gradient is taken at $z_0$ with the current prompts, as
# released (`grad_at="z0"`).

# %%
z = z0.detach().clone().requires_grad_(True)
with torch.enable_grad():
    _, logits, _ = prompter.decode(z, P0, S0)
    d = d_phi(logits, flow.reduction)
    (grad,) = torch.autograd.grad(d, z)
d = float(d.detach())
print(f"d_phi = {d:.1f} | gradient {tuple(grad.shape)}, norm {float(grad.norm()):.3g}, "
      f"{100 * float((grad.abs() > clip).float().mean()):.1f}% of its elements beyond the clip {clip:g}")
fig, ax = plt.subplots(figsize=(3.4, 3.4))
ax.imshow(grad[0].norm(dim=0).cpu(), cmap="viridis")
ax.set_title("|grad d_phi| per grid cell", fontsize=9)
figures.save(fig, "gradient")

# %% [markdown]
# ## 9. One flow step
#
# Euler-Maruyama: $\delta_1 = \delta_0 + \eta\, s(d)\, \mathrm{clip}(\nabla d_\phi) + \sqrt{2\eta\gamma}\,\xi$
# with $\delta_0 = 0$ and $s = 1$ for KL. The noise $\xi$ comes from the same generator that gave the
# prompt seed, so this is exactly the loop's first step.

# %%
delta1, norms = flow_step(torch.zeros_like(z0), grad, d, flow, generator)
print("delta1", tuple(delta1.shape), f"| drift norm {norms.drift:.3g}, noise norm {norms.noise:.3g} "
      f"({norms.noise / max(norms.drift, 1e-30):.0f} times the drift)")

# %% [markdown]
# ## 10. The moved similarity and the new prompts
#
# The moved embedding $z_1 = z_0 + \delta_1$ only re-computes the similarity map and re-draws the
# prompts; the new candidate $m_1$ is decoded from the *original* $z_0$ with $P_1$.

# %%
S1 = similarity_map(target, z0 + delta1, query, preset.similarity_upsampling)
P1 = draw(S1)
with torch.no_grad():
    m1, _, _ = prompter.decode(z0, P1, S1)
moved = not np.array_equal(P0.coords, P1.coords)
print("S1", tuple(S1.shape), f"| largest change of S {float((S1 - S0).abs().max()):.4f} | P1 (x, y) =",
      P1.coords.astype(int).tolist(), "(moved)" if moved else "(unchanged)",
      f"| IoU of m1 {iou(m1, episode.query_mask):.3f} (m0: {iou(m0, episode.query_mask):.3f})")
fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.3))
for ax, (image, prompts, title) in zip(axes, ((S1, P1, "S_1 and P_1"), (S1 - S0, None, "S_1 - S_0"), (None, P1, "m_1"))):
    if image is None:
        viz.overlay(ax, episode.query_image, m1, prompts, truth=episode.query_mask, title=title)
        continue
    ax.imshow(image.cpu(), cmap="magma" if prompts is not None else "coolwarm")
    if prompts is not None:
        viz.draw_prompts(ax, prompts)
    ax.set_title(title, fontsize=9)
figures.save(fig, "moved")

# %% [markdown]
# ## 11. The loop
#
# `refine` repeats steps 7-10 T times from the same seed: T + 1 candidates, each with its similarity
# map, prompts, d_phi, gradient and the norms of both terms. Its first step is the one made above.

# %%
trajectory = refine(prompter, steps, flow, torch.Generator().manual_seed(episode_seed(seed, episode.name)))
first = trajectory.steps[1]
print(f"{len(trajectory.candidates)} candidates, each {trajectory.candidates[0].shape}; step 1 as made by hand: "
      f"prompts {np.array_equal(first.prompts.coords, P1.coords)}, mask {np.array_equal(first.mask, m1)}")
best = oracle(trajectory.candidates, episode.query_mask)
print("IoU per step:", np.round(best.scores, 3).tolist())

# %% [markdown]
# ## 12. The selector
#
# The top-1 selector represents each candidate's masked query object and the support object the
# same way and keeps the most similar (`masked-image` as released, `crop-pool` as the paper
# describes, `pooled` without an extra encoder pass). The oracle keeps the candidate of highest IoU,
# an upper bound no method can use. Top row below: each step's similarity map and prompts; bottom
# row: each candidate, [T] the selector's pick, [O] the oracle's.

# %%
selections = {name: select(name, trajectory.candidates, encoder, query, episode.support_images, episode.support_masks)
              for name in SELECTORS}
trace = ex.Trace.from_scored(ex.Scored(trajectory, selections, best), episode, settings)
figures.save(viz.steps_figure(trace, selector), "steps")
figures.save(viz.trajectory_figure(trace), "prompt_trajectory")
figures.save(viz.scores_figure(trace), "scores")
t, o = trace.chosen(selector), trace.oracle_index
display(Markdown(
    f"B (step 0) has IoU {trace.ious[0]:.3f}. The {selector} selector picks step {t} (IoU {trace.ious[t]:.3f}), "
    f"the oracle step {o} (IoU {trace.ious[o]:.3f}): "
    + ("the selector found the best candidate." if trace.ious[t] >= trace.ious[o] else
       f"the selector misses {trace.ious[o] - trace.ious[t]:.3f} IoU.")
    + (" Here refinement changed nothing measurable." if trace.ious.max() - trace.ious.min() < 1e-9 else "")
    + f" Per step the noise moved the embedding {trace.noise_norm.mean() / max(trace.drift_norm.mean(), 1e-30):.0f} "
      "times as far as the drift."))

# %%
if interactive:  # needs a widget frontend (JupyterLab); papermill runs keep interactive = False
    viz.step_explorer(trace, selector)
else:
    print(f"interactive = False: set it to True (in JupyterLab) for a slider over the {trace.steps + 1} steps")

# %%
headline = ex.write_headline(NOTEBOOK, {
    "iou": {"baseline": trace.ious[0], "top1": trace.ious[t], "oracle": trace.ious[o]},
    "top1_step": t, "oracle_step": o,
    "mean_drift_norm": float(trace.drift_norm.mean()), "mean_noise_norm": float(trace.noise_norm.mean()),
}, settings, figures.names, out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
