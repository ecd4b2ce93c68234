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
# # 00 · Theory: the discriminator gradient flow behind PR-MaGIC
#
# What the refinement loop is a discretisation of: the gradient flow of an f-divergence with
# entropy regularisation, whose density ratio a discriminator provides. The notebook plots the
# drift weight s(d) of three divergences, runs the flow on a 2-D toy where a small trained
# discriminator moves particles from a fake distribution to the real one (with the same
# `flow_step` the loop uses), and compares noise and drift at the paper's constants.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 11 s, full 13 s (measured). GPU, `backend="sam"`: the same: no SAM involved. Rows already in `cache_dir` are read, not recomputed.

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
gamma = 0.1
clip = 0.1
toy_particles = 400
toy_train_steps = 300
toy_steps = 200
toy_eta = 0.02
toy_gamma = 0.01
toy_retrain_every = 10

# %%
NOTEBOOK = "00_theory"
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)
import numpy as np

from prmagic_core.flow import DIVERGENCES, FlowConfig, drift_weight
from prmagic_core.toy import toy_flow

seed = seeds[0]
paper_eta = 1e-3
print(f"figures and the headline JSON go to {figures.out_dir}")

# %% [markdown]
# ## The flow
#
# Let $\rho$ be the distribution of query embeddings and $\mu$ the distribution of embeddings that
# decode to the right mask. PR-MaGIC minimises the entropy-regularised functional
# $F_\mu(\rho) = \mathrm{KL}(\mu \,\|\, \rho) - \gamma H(\rho)$. Its Wasserstein gradient flow is a
# Fokker-Planck equation, whose particle form is the SDE
# $dz = s(d)\,\nabla_z d_\phi(z)\,dt + \sqrt{2\gamma}\,dW$, where the density ratio
# $\rho/\mu = (1 - D_\phi)/D_\phi = e^{-d_\phi}$ comes from a discriminator $D_\phi = \sigma(d_\phi)$.
# Euler-Maruyama with step $\eta$ gives the update of the loop,
#
# $$\delta_{t+1} = \delta_t + \eta\, s(d)\, \mathrm{clip}(\nabla d_\phi) + \sqrt{2\eta\gamma}\,\xi, \qquad \xi \sim \mathcal N(0, I),$$
#
# with $z_{t+1} = z_0 + \delta_{t+1}$. SAM's mask decoder plays the discriminator: $d_\phi$ is the sum of
# its low-resolution logits. The f-divergence sets the drift weight: $s = 1$ for KL,
# $1/(1+e^{d})$ for logD, $1/(1+e^{-d})$ for JS (DGflow, Ansari et al. 2021).

# %%
d = np.linspace(-8, 8, 401)
weights = {name: [drift_weight(x, name) for x in d] for name in DIVERGENCES}
figures.save(viz.drift_weights_figure(d, weights), "drift_weights")

# %% [markdown]
# KL pushes every embedding with the full gradient. logD pushes hardest where the discriminator
# says "fake" (d < 0) and stops where it is already convinced; JS does the opposite. PR-MaGIC
# uses KL, for which the drift is the clipped gradient itself.
#
# ## A 2-D toy: a trained discriminator drives the particles
#
# Real samples come from a narrow Gaussian, particles start in a wider one elsewhere. A small
# MLP is trained for a few hundred steps to tell them apart (logistic loss); its logit is
# $d_\phi$. The particles then follow the same `flow_step` as the loop, with the gradient taken
# at the moved particles (the paper's equation). The energy distance to the real samples
# measures how close they get. First the discriminator stays fixed, as SAM's decoder does in
# PR-MaGIC; then it is trained a little further against the current particles every
# `toy_retrain_every` steps, so that $d_\phi$ keeps estimating $\log \mu / \rho_t$.

# %%
toy_config = FlowConfig(eta=toy_eta, gamma=toy_gamma, clip=None)
toy = toy_flow(toy_config, steps=toy_steps, n=toy_particles, train_steps=toy_train_steps, seed=seed)
figures.save(viz.toy_flow_figure(toy, f"fixed discriminator: eta = {toy_eta:g}, gamma = {toy_gamma:g}, no clipping"),
             "toy_flow")
retrained = toy_flow(toy_config, steps=toy_steps, n=toy_particles, train_steps=toy_train_steps, seed=seed,
                     retrain_every=toy_retrain_every)
figures.save(viz.toy_flow_figure(retrained, f"discriminator retrained every {toy_retrain_every} steps"),
             "toy_flow_retrained")
paper_toy = toy_flow(FlowConfig(eta=paper_eta, gamma=gamma, clip=clip), steps=steps, n=toy_particles,
                     train_steps=toy_train_steps, seed=seed, record=(0, steps))
figures.save(viz.toy_flow_figure(paper_toy, f"paper constants: eta = {paper_eta:g}, gamma = {gamma:g}, "
                                 f"clip = {clip:g}, T = {steps}"), "toy_flow_paper_constants")
figures.save(viz.toy_distance_figure({"fixed discriminator": toy, "retrained discriminator": retrained,
                                      f"paper constants, T = {steps}": paper_toy}), "toy_distance")

def ending(run):
    best = int(np.argmin(run.distance))
    after = "rises again after it" if run.distance[-1] > 2 * run.distance[best] else "stays near it"
    return (f"falls from {run.distance[0]:.3f} to a minimum of {run.distance[best]:.3f} at step {best}, "
            f"{after}, and ends at {run.distance[-1]:.3f} after {len(run.distance) - 1} steps")

display(Markdown(
    f"The discriminator's logistic loss fell from {toy.losses[0]:.3f} to {toy.losses[toy_train_steps - 1]:.3f} "
    f"in {toy_train_steps} training steps. "
    f"With a fixed discriminator the energy distance {ending(toy)}. Retrained along the way, it {ending(retrained)}. "
    f"At the paper's constants the {steps} steps move it from {paper_toy.distance[0]:.3f} to "
    f"{paper_toy.distance[-1]:.3f} ({100 * (paper_toy.distance[-1] / paper_toy.distance[0] - 1):+.2f}%)."))

# %% [markdown]
# ## Noise against drift at the paper's constants
#
# Each element of the embedding moves per step by at most $\eta \cdot \text{clip}$ through the drift,
# while the noise has standard deviation $\sqrt{2\eta\gamma}$. The ratio does not depend on the model.

# %%
scale = an.noise_vs_drift(etas, gamma=gamma, clip=clip)
figures.save(viz.scale_figure(scale), "noise_vs_drift")
display(Markdown(an.markdown_table(scale, ".3g")))
at = scale.set_index("eta").ratio
display(Markdown(" ".join(
    f"At eta = {e:g} the noise std is {at[e]:.0f} times the largest possible drift per element." for e in at.index)))

# %%
headline = ex.write_headline(NOTEBOOK, {
    "drift_weight_at_0": {name: drift_weight(0.0, name) for name in DIVERGENCES},
    "toy_energy_distance": {name: {"start": run.distance[0], "min": float(run.distance.min()),
                                   "min_step": int(np.argmin(run.distance)), "end": run.distance[-1]}
                            for name, run in (("fixed", toy), ("retrained", retrained))},
    "toy_paper_constants_energy_distance": {"start": paper_toy.distance[0], "end": paper_toy.distance[-1]},
    "noise_to_max_drift_ratio": {f"{e:g}": float(r) for e, r in at.items()},
}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
