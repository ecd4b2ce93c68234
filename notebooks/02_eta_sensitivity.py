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
# # 02 · Sensitivity to the step size eta
#
# The paper's Sec. 4.3: the mIoU of the candidate at a fixed step, against the step, for
# eta in {1e-2, 1e-3, 1e-4, 1e-5}. The paper reports that 1e-2 improves early and then degrades,
# while 1e-4 and 1e-5 converge too slowly. Lines are means over seeds, bands one standard
# deviation across seeds.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 20 s (measured), full 1472 s alone on 2 cores (2 workers) in a cold `prmagic figures --profile full --only paper` run (2026-12-03). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

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

# %%
NOTEBOOK = "02_eta_sensitivity"
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)
table = lab.sweep(ex.Sweep(baselines=available, etas=etas, seeds=seeds, episodes=n_episodes, steps=steps))
per_step = an.step_metrics(table)
curves = an.over_seeds(per_step, ["baseline", "eta", "step"])

# %% [markdown]
# ## mIoU against the step
#
# Step 0 is the baseline's own mask; every eta starts there. Both metrics are shown:
# the class-wise mIoU of the few-shot protocol (intersections and unions summed per class) and
# the mean of per-episode IoUs.

# %%
figures.save(viz.metric_vs_step_figure(per_step.assign(eta=per_step.eta.map("{:g}".format)), hue="eta",
                                       labels=an.METRIC_LABELS), "eta_sensitivity")
for m in ("miou", "mean_iou"):
    by_step = curves.pivot_table(index=["baseline", "eta"], columns="step", values=m).add_prefix("step ").reset_index()
    display(Markdown(f"**{an.METRIC_LABELS[m]}**, mean over {len(seeds)} seed(s)\n\n"
                     + an.markdown_table(by_step, formats={"eta": "g"})))

# %% [markdown]
# ## Does the paper's pattern hold here?

# %%
shapes = {(b, e): an.curve_shape(c.sort_values("step").miou, tol=0.5) for (b, e), c in curves.groupby(["baseline", "eta"])}
lines = []
for b in available:
    big = max(etas)
    s = shapes[(b, big)]
    lines.append(f"- **{b}, eta = {big:g}**: class-wise mIoU {s['shape']} (best at step {s['best_step']}, "
                 f"+{s['rise']:.2f} to it, -{s['fall']:.2f} after it). The paper's 'improves early then degrades' "
                 + ("holds." if s["shape"] == "rises then falls" else "does not show here."))
    reference = shapes.get((b, 1e-3))
    for e in sorted(etas):
        if e < 1e-3:
            s = shapes[(b, e)]
            line = f"- {b}, eta = {e:g}: moves by at most {s['range']:.2f} points over {steps} steps ({s['shape']})"
            if reference is not None:
                slower = s["range"] < reference["range"]
                line += (f", {'less' if slower else 'not less'} than at eta = 1e-3 ({reference['range']:.2f}): "
                         f"the paper's 'converges too slowly' {'fits' if slower else 'does not fit'}")
            lines.append(line + ".")
display(Markdown("Changes of 0.5 points or less count as none.\n\n" + "\n".join(lines)))

# %%
headline = ex.write_headline(NOTEBOOK, {
    "miou_per_step": {f"{b}/eta={e:g}": c.sort_values("step").miou.tolist() for (b, e), c in curves.groupby(["baseline", "eta"])},
    "mean_iou_per_step": {f"{b}/eta={e:g}": c.sort_values("step").mean_iou.tolist() for (b, e), c in curves.groupby(["baseline", "eta"])},
    "shape": {f"{b}/eta={e:g}": s["shape"] for (b, e), s in shapes.items()},
    "failed_trajectories": int(len(an.failures(table))),
}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
