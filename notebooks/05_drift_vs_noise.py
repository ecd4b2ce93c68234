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
# # 05 · Drift or noise: which term does the work?
#
# An ablation the paper does not have. With the paper's constants the noise term is hundreds of
# times larger than the largest drift (see 00_theory), so the question is whether the gain comes
# from the decoder's gradient at all. Five flows with the same seeds: drift only (gamma = 0), noise
# only (the gradient zeroed), both (the method), resampling only (eta = gamma = 0 with
# `resampling="fresh"`: nothing moves, but the prompts' random choices are drawn anew every step,
# as the release does: the gain that needs no flow at all), and neither (the control: nothing
# moves and the draws are fixed, so every candidate equals the baseline's). The four flows above
# use fixed draws.
#
# **Runtime.** CPU, `backend="tiny"`: smoke 21 s (measured with another job on the 2 cores); full (512 px, 100 episodes x 3 seeds, PerSAM-F and Matcher with DINO-Tiny) 1248 s alone on 2 cores after the paper's figures (2026-12-03 19:09; 1641 s in a cold full-profile run before the decoder attention change; 649 s at one seed). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

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
gamma = 0.1
selector = "masked-image"
preset = "release"  # prmagic_core.presets: the baselines' settings; the four flows use fixed draws whatever it says

# %%
NOTEBOOK = "05_drift_vs_noise"
import pandas as pd
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)
eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
settings.update(eta=eta, gamma=gamma, selector=selector, preset=preset)
flows, resampled = lab.sweeps([
    ex.Sweep(baselines=available, etas=[eta], gammas=[0.0, gamma], drifts=[True, False], seeds=seeds,
             episodes=n_episodes, steps=steps, resampling="fixed", preset=preset),
    ex.Sweep(baselines=available, etas=[0.0], gammas=[0.0], seeds=seeds, episodes=n_episodes, steps=steps,
             resampling="fresh", preset=preset)])
parts = {"fixed": flows, "fresh": resampled}  # the regime names need to know the resampling
table = pd.concat([t.assign(regime=an.regimes(t, r)) for r, t in parts.items()], ignore_index=True)
order = ["both", "drift only", "noise only", "resampling only", "neither"]
summary = an.over_seeds(an.bto(table, [selector], by=["baseline", "regime", "seed"]),
                        ["baseline", "regime", "variant", "selector"])

# %% [markdown]
# ## B / T / O under each flow

# %%
ordered = summary.sort_values("regime", key=lambda r: r.map(order.index), kind="stable")
figures.save(viz.bto_figure(ordered, labels=an.METRIC_LABELS, by="regime", panel="baseline"), "regimes")
per_step = an.step_metrics(table, by=["baseline", "regime", "seed"])
figures.save(viz.metric_vs_step_figure(per_step, hue="regime", labels=an.METRIC_LABELS), "regime_steps")

# %% [markdown]
# ## How large is each term?

# %%
norms = an.step_norms(table, by=["baseline", "regime"])
figures.save(viz.norms_figure(norms[norms.regime == "both"], hue="baseline"), "norms")
both = norms[norms.regime == "both"]
ratio = float((both.noise_norm / both.drift_norm).mean())
display(Markdown(f"In the full flow the noise term's L2 norm is on average {ratio:.0f} times the drift term's "
                 f"(eta = {eta:g}, gamma = {gamma:g}, clip = 0.1). The noise norm is the same for every baseline: "
                 f"the same seeds draw the same noise, of norm sqrt(2 eta gamma) times the root of the embedding size."))

# %%
wide = an.bto_wide(summary, "mean_iou", by=["baseline", "regime"]).set_index(["baseline", "regime"])
episodes = pd.concat([an.per_episode(t, [selector]).pipe(lambda f, r=r: f.assign(regime=an.regimes(f, r)))
                      for r, t in parts.items()], ignore_index=True)
gains = {}
lines = []
for b in available:
    for r in order:
        rows = episodes[(episodes.baseline == b) & (episodes.regime == r)]
        gain = an.paired_interval(100 * rows[f"iou_T {selector}"], 100 * rows.iou_B, clusters=rows.episode)
        gains[f"{b}/{r}"] = {"T-B": gain["mean"], "low": gain["low"], "high": gain["high"],
                             "O-B": float(100 * (rows.iou_O - rows.iou_B).mean())}
        lines.append(f"- {b}, **{r}**: T - B = {gain['mean']:+.2f} (95% interval over {gain['clusters']} episodes {gain['low']:+.2f} to "
                     f"{gain['high']:+.2f}: T is {an.direction(gain)} B); O - B = {gains[f'{b}/{r}']['O-B']:.2f}.")
    full, noise = gains[f"{b}/both"], gains[f"{b}/noise only"]
    if abs(full["O-B"]) > 1e-9:
        lines.append(f"  Noise alone reaches {100 * noise['O-B'] / full['O-B']:.0f}% of the full flow's oracle gain "
                     f"for {b}; drift alone {100 * gains[f'{b}/drift only']['O-B'] / full['O-B']:.0f}%; "
                     f"resampling alone {100 * gains[f'{b}/resampling only']['O-B'] / full['O-B']:.0f}%.")
display(Markdown(f"Mean per-episode IoU, points ({selector} selector; {an.counts_note(flows)}; {lab.image_size} px, "
                 f"preset: {settings['preset']}):\n\n" + "\n".join(lines)))

# %%
headline = ex.write_headline(NOTEBOOK, {"gains": gains, "noise_to_drift_norm_ratio": ratio,
      "resampling_only": {b: gains[f"{b}/resampling only"] for b in available},
      "mean_iou": {f"{r.baseline}/{r.regime}/{r.variant}": r.mean_iou for r in summary.itertuples()},
      "miou": {f"{r.baseline}/{r.regime}/{r.variant}": r.miou for r in summary.itertuples()}}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
