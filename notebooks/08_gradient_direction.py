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
# # 08 · Is the gradient's direction informative? And an adaptive step
#
# Notebook 05 found the noise term ~140x the largest drift at the paper's constants, and the
# drift alone moving nothing. This notebook asks whether the decoder gradient's DIRECTION helps
# when the step is large enough to matter. Every step here is deterministic (gamma = 0) and of a
# set L2 norm, swept from the paper's largest drift (eta x clip x sqrt(n)) through the noise's
# norm sqrt(2 eta gamma n) and past it, along four directions: the gradient of d_phi (`sum`
# reduction, as released), its sign (what the saturated clip makes of it), the gradient of the
# `foreground` reduction (the `mean` reduction's gradient is the sum's divided by n: the same
# direction), and a random direction (the control). Then: where one step pushes the similarity
# map and d_phi, whether a candidate's IoU rises when its d_phi rises (the method's premise),
# and three adaptive step sizes (the paper's future work) against notebook 02's fixed etas on
# the same episodes. Intervals are 95%, by a bootstrap over episodes (all seeds of an episode
# resampled together).
#
# **Runtime.** CPU, `backend="tiny"`: smoke 590 s measured with ~8 other jobs on the 2 cores (about 50 s alone); full (the profile runs it on PerSAM-F at one noise seed: 512 px, 100 episodes, 5 norms x 4 directions, 3 adaptive steps, 4 etas x 2) 759 s alone on 2 cores after the paper's figures (2026-12-03 19:39; 839 s in a cold full-profile run before the decoder attention change). Both baselines at 3 seeds (`-p baselines '["persam_f", "matcher"]' -p seeds "[0, 1, 2]"`) is about 2 hours more on such a CPU. GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

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
n_episodes = 12
etas = [1e-2, 1e-3, 1e-4, 1e-5]  # notebook 02's fixed etas, the adaptive steps' reference
steps = 5
seeds = [0, 1]
device = "auto"
out_dir = None  # figures + headline JSON; None: notebooks/build/figures (relative: from the repository)
cache_dir = None  # result tables; None: notebooks/build/cache (relative: from the repository)
baselines = ["persam_f", "matcher"]  # the paper's two; "persam" and "gfsam" work too
eta = None  # None: 1e-3 for objects, 1e-4 for parts (sets the paper-drift and noise norms)
gamma = 0.1  # only sets the noise's norm here: every direction step is noise-free
clip = 0.1
selector = "masked-image"
arms = ["gradient", "sign", "foreground", "random"]
norms_between = 1  # geometric points between the paper's drift and the noise's norm
norms_past = [4.0, 16.0]  # multiples of the noise's norm
top_fraction = 0.01  # the similarity map's top region: this share of its pixels
policies = ["relative", "backtrack", "grow"]  # adaptive steps: FlowConfig.step names
policy_sizes = [0.02, 0.1, 10.0]  # relative, backtrack: fractions of ||z0||; grow: eta's factor
preset = "release"  # prmagic_core.presets: the baselines' settings (the direction test and the adaptive steps use fixed draws)

# %%
NOTEBOOK = "08_gradient_direction"
from dataclasses import replace

import pandas as pd
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook
from prmagic_core.presets import get_preset

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)
eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
policies = dict(zip(policies, policy_sizes))
norms = an.step_norm_grid(eta, gamma, clip, lab.embedding_size, norms_between, norms_past)
settings.update(eta=eta, gamma=gamma, clip=clip, selector=selector, arms=arms, norms=norms, policies=policies,
                top_fraction=top_fraction, resampling="fixed", grad_at="z0", preset=preset)
base = ex.Sweep(baselines=available, etas=[eta], seeds=seeds, episodes=n_episodes, steps=steps, clip=clip,
                selectors=[selector], resampling="fixed", preset=preset)
cells = {(arm, label): base.along(arm, norm) for arm in arms for label, norm in norms.items()}
adaptive = {name: replace(base, gammas=[0.0], step=name, step_size=size) for name, size in policies.items()}
fixed = ex.Sweep(baselines=available, etas=etas, seeds=seeds, episodes=n_episodes, steps=steps,
                 preset=preset)  # notebook 02's (with the preset's resampling)
fixed_drift = replace(fixed, gammas=[0.0])
grid = [*cells.values(), *adaptive.values(), fixed, fixed_drift]
tables = dict(zip([*cells, *adaptive, "fixed", "fixed drift only"], lab.sweeps(grid)))
caption = (f"{an.counts_note(tables['fixed'])}; {backend} backend, {dataset} ({lab.kind}), "
           f"{lab.image_size} px, preset: {preset}; T = {steps}, eta = {eta:g}; fixed prompt draws, except notebook "
           f"02's etas, which use the preset's ({get_preset(preset).resampling})")
display(Markdown(f"Step norms: " + ", ".join(f"{k} = {v:.4g}" for k, v in norms.items())
                 + f" (n = {lab.embedding_size} embedding elements). {caption}."))

# %% [markdown]
# ## O - B and T - B per direction and step norm
#
# O - B: what the candidates offer (the oracle's pick over the baseline's mask); T - B: what the
# top-1 selector gets. Paired per episode, in IoU points.

# %%
contrasts = {f"T-B {selector}": "T - B", "O-B": "O - B"}
directions = pd.concat([
    an.episode_differences(tables[cell], [selector], by=["baseline"]).assign(arm=cell[0], label=cell[1],
                                                                           norm=norms[cell[1]])
    for cell in cells], ignore_index=True)
directions = directions[directions.contrast.isin(list(contrasts))].assign(contrast=lambda f: f.contrast.map(contrasts))
marks = {"paper drift": norms["paper drift"], "noise": norms["noise"]}
figures.save(viz.intervals_vs_norm_figure(directions, marks=marks), "direction_norm")
shown = directions[["baseline", "arm", "label", "contrast", "mean", "low", "high", "episodes", "seeds"]]
display(Markdown(f"IoU points, 95% intervals ({caption})\n\n" + an.markdown_table(shown)))

# %% [markdown]
# ## The gradient's direction against a random one, at the same norm

# %%
versus = pd.concat([
    an.table_contrast(tables[(arm, label)], tables[("random", label)], selector).assign(
        arm=arm, label=label, norm=norm)
    for arm in arms if arm != "random" and "random" in arms for label, norm in norms.items()], ignore_index=True)
versus = versus.assign(contrast=versus.variant.map({"T": "T: arm - random", "O": "O: arm - random"}))
figures.save(viz.intervals_vs_norm_figure(versus, marks=marks), "direction_vs_random")
lines = []
for (b, arm, variant), rows in versus.groupby(["baseline", "arm", "variant"], sort=False):
    wins = [r.label for r in rows.itertuples() if r.low > 0]
    losses = [r.label for r in rows.itertuples() if r.high < 0]
    lines.append(f"- {b}, **{arm}**, {variant}: above random at {', '.join(wins) or 'no norm'}; "
                 f"below at {', '.join(losses) or 'no norm'} (largest gap {rows['mean'].abs().max():.2f} points).")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Where one step pushes
#
# One step from z0 of each norm along each direction (the same seeds, episodes and first prompts):
# IoU of the similarity map's top region before and after; the change of d_phi with the prompts
# held (decoded on the moved embedding: what the gradient promises to first order); whether the
# prompts moved; and the change of the next candidate's d_phi and IoU (decoded from z0 with the
# new prompts: what the method can get).

# %%
pushes = pd.concat([lab.pushes(b, n_episodes, list(norms.values()), seeds, arms, top_fraction=top_fraction,
                              preset=preset)
                    for b in available], ignore_index=True).assign(iou_next=lambda f: 100 * f.iou_next)
measures = {"top_iou": "top-region IoU after vs before", "d_phi_same_prompts": "d_phi change, same prompts",
            "prompts_moved": "share of steps that move the prompts", "d_phi_next": "next candidate's d_phi change",
            "iou_next": "next candidate's IoU change (points)"}
pushed = an.interval_summary(pushes, ["baseline", "arm", "norm"], list(measures))
figures.save(viz.intervals_vs_norm_figure(pushed, panel="measure", marks=marks, labels=measures), "push")

# %% [markdown]
# ## Does the candidate's IoU rise when d_phi rises?
#
# Over consecutive candidates whose prompts differ, in every trajectory of the direction test and
# of the adaptive steps (d_phi of a candidate = the `sum` reduction on z0 with its prompts; the
# `foreground` arm's tables hold that reduction instead, so they are left out).

# %%
pair_tables = [t for key, t in tables.items() if not (isinstance(key, tuple) and key[0] == "foreground")]
pairs = pd.concat([an.moved_pairs(t) for t in pair_tables], ignore_index=True)
premise = {b: an.premise(pairs[pairs.baseline == b]) for b in available}
lines = []
for b, p in premise.items():
    line = f"- **{b}**: {p['pairs']} moves over {p['episodes']} episodes; d_phi rose in {p.get('d_up_pairs', 0)}"
    if "d_up_iou_up_share" in p:
        up = p["d_up_iou_change"]
        line += (f", and then IoU rose in {100 * p['d_up_iou_up_share']:.0f}% of them (mean IoU change "
                 f"{up['mean']:+.2f} points, 95% interval {up['low']:+.2f} to {up['high']:+.2f})")
    if "d_down_iou_up_share" in p:
        down = p["d_down_iou_change"]
        line += (f"; when d_phi fell, IoU rose in {100 * p['d_down_iou_up_share']:.0f}% (mean "
                 f"{down['mean']:+.2f}, {down['low']:+.2f} to {down['high']:+.2f})")
    if "spearman" in p:
        line += f"; rank correlation of the two changes {p['spearman']:+.2f}"
    lines.append(line + ".")
display(Markdown("\n".join(lines) or "No step moved the prompts."))


# %% [markdown]
# ## Adaptive steps against notebook 02's fixed etas
#
# `relative`: every drift of norm (step_size x ||z0||); `backtrack`: from (step_size x ||z0||), halve
# until the step moves the prompts to a candidate of higher d_phi; `grow`: the paper's drift with
# eta x step_size after each step that leaves the prompts in place, stopping at the first move
# that does not raise d_phi. All drift only (gamma = 0), fixed draws. Beside them: notebook 02's fixed etas
# (with noise, gamma = 0.1) and the same etas drift only.

# %%
def settings_rows(table, label, by=("baseline",)):
    rows = an.episode_differences(table, [selector], by=list(by))
    return rows[rows.contrast.isin(list(contrasts))].assign(contrast=lambda f: f.contrast.map(contrasts), setting=label)

compared = [settings_rows(tables[name], f"{name} {size:g}") for name, size in policies.items()]
for key, suffix in (("fixed", " + noise"), ("fixed drift only", " drift only")):
    for e in etas:
        compared.append(settings_rows(tables[key][tables[key].eta == e], f"eta {e:g}{suffix}"))
compared = pd.concat(compared, ignore_index=True)
figures.save(viz.intervals_figure(compared), "adaptive")
best_fixed, versus_best = {}, {}
for b in available:
    fixed_rows = compared[(compared.baseline == b) & compared.setting.str.startswith("eta ")]
    for variant, contrast in (("T", "T - B"), ("O", "O - B")):
        candidates = fixed_rows[fixed_rows.contrast == contrast]
        best = candidates.loc[candidates["mean"].idxmax()].setting  # ties: notebook 02's (with noise) first
        best_fixed[f"{b}/{variant}"] = best
        e, kind = float(best.split()[1]), ("fixed" if best.endswith("noise") else "fixed drift only")
        reference = tables[kind][tables[kind].eta == e]
        for name in policies:
            row = an.table_contrast(tables[name], reference, selector).set_index(["baseline", "variant"]).loc[(b, variant)]
            versus_best[f"{b}/{name}/{variant}"] = {k: float(row[k]) for k in ("mean", "low", "high")}
lines = [f"- {b}, {name}, {v}: {r['mean']:+.2f} points against the best fixed setting ({best_fixed[f'{b}/{v}']}), "
         f"95% interval {r['low']:+.2f} to {r['high']:+.2f}"
         for key, r in versus_best.items() for b, name, v in [key.split("/")]]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Verdict in numbers

# %%
verdict = []
for b in available:
    gradient = versus[(versus.baseline == b) & (versus.arm == "gradient")] if "gradient" in arms else versus.iloc[:0]
    for variant in ("O", "T"):
        rows = gradient[gradient.variant == variant]
        wins = [f"{r.label} ({r.mean:+.2f}, {r.low:+.2f} to {r.high:+.2f})" for r in rows.itertuples() if r.low > 0]
        verdict.append(f"- {b}, {variant}: the gradient's direction beats a random one at "
                       + ("; ".join(wins) if wins else "no norm") + ".")
    for name in policies:
        t, o = versus_best[f"{b}/{name}/T"], versus_best[f"{b}/{name}/O"]
        verdict.append(f"- {b}, adaptive `{name}`: T {t['mean']:+.2f} ({t['low']:+.2f} to {t['high']:+.2f}), "
                       f"O {o['mean']:+.2f} ({o['low']:+.2f} to {o['high']:+.2f}) points against the best fixed eta: "
                       f"{an.direction(t)} it on T, {an.direction(o)} it on O.")
display(Markdown(f"{caption}\n\n" + "\n".join(verdict)))

# %%
headline = ex.write_headline(NOTEBOOK, {
    "norms": norms,
    "directions": {f"{r.baseline}/{r.arm}/{r.label}/{r.contrast}": {"mean": r.mean, "low": r.low, "high": r.high}
                   for r in directions.itertuples()},
    "random": {f"{r.baseline}/{r.label}/{r.contrast}": {"mean": r.mean, "low": r.low, "high": r.high}
               for r in directions[directions.arm == "random"].itertuples()},
    "versus_random": {f"{r.baseline}/{r.arm}/{r.label}/{r.variant}": {"mean": r.mean, "low": r.low, "high": r.high}
                      for r in versus.itertuples()},
    "push": {f"{r.baseline}/{r.arm}/{r.norm:.4g}/{r.measure}": {"mean": r.mean, "low": r.low, "high": r.high}
             for r in pushed.itertuples()},
    "premise": premise,
    "adaptive": {f"{r.baseline}/{r.setting}/{r.contrast}": {"mean": r.mean, "low": r.low, "high": r.high}
                 for r in compared[~compared.setting.str.startswith("eta ")].itertuples()},
    "fixed": {f"{r.baseline}/{r.setting}/{r.contrast}": {"mean": r.mean, "low": r.low, "high": r.high}
              for r in compared[compared.setting.str.startswith("eta ")].itertuples()},
    "adaptive_vs_best_fixed": versus_best, "best_fixed": best_fixed,
    "episodes": n_episodes, "seeds": seeds,
}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
