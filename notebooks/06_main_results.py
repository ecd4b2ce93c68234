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
# # 06 · Main results
#
# The results table in the paper's format: B / T / O per task, dataset and baseline. Two metrics,
# never mixed: the class-wise mIoU of the few-shot protocol (summed intersections and unions per
# class, averaged over classes) and the mean per-episode IoU; the release's per-episode FB mIoU is
# listed too. With `backend="tiny"` the tasks are ShapeWorld objects (semantic) and parts; with
# `backend="sam"` the real benchmarks under `data_root/<benchmark>`.
#
# **Runtime.** CPU, `backend="tiny"` (2 cores shared with another job): smoke 17 s (measured), full 714 s alone on 2 cores after 04, whose object tables it reuses (computing the part rows; 2026-12-03). GPU, `backend="sam"`: not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory. Rows already in `cache_dir` are read, not recomputed.

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
benchmarks = ["fss", "coco", "lvis", "paco", "pascal_part", "dis5k"]
selector = "masked-image"

# %%
NOTEBOOK = "06_main_results"
from dataclasses import replace

import pandas as pd
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.notebook import open_notebook

figures, lab, available, settings = open_notebook(
    NOTEBOOK, backend=backend, checkpoint=checkpoint, model_type=model_type, dinov2_checkpoint=dinov2_checkpoint,
    matching_encoder=matching_encoder, dataset=dataset, data_root=data_root, device=device,
    out_dir=out_dir, cache_dir=cache_dir, image_size=image_size,
    fold=fold, baselines=baselines, n_episodes=n_episodes, etas=etas, steps=steps, seeds=seeds)

if backend == "tiny":
    tasks = {"ShapeWorld objects": replace(lab.setup, kind="object"), "ShapeWorld parts": replace(lab.setup, kind="part")}
elif data_root is None:
    raise ValueError("backend 'sam' needs data_root: a folder with one subfolder per benchmark (data_root/fss, ...)")
else:
    tasks = {name: replace(lab.setup, dataset=name, data_root=f"{data_root}/{name}") for name in benchmarks}
settings.update(selector=selector, tasks=list(tasks))

# %%
results = []
for task, task_setup in tasks.items():
    task_lab = ex.Lab(task_setup, lab.cache_dir)
    eta = ex.DEFAULT_ETA[task_lab.kind]
    table = task_lab.sweep(ex.Sweep(baselines=available, etas=[eta], seeds=seeds, episodes=n_episodes, steps=steps))
    summary = an.over_seeds(an.bto(table, [selector]), ["baseline", "variant"])
    for b in available:
        row = {"dataset": task, "task": "part" if task_lab.kind == "part" else "semantic", "baseline": b, "eta": eta}
        for r in summary[summary.baseline == b].itertuples():
            for m in ("miou", "mean_iou", "episode_fb_miou"):
                row[f"{r.variant}_{m}"] = getattr(r, m)
        row["episodes"] = int(summary[(summary.baseline == b) & (summary.variant == "B")].episodes.iloc[0])
        row["failed"] = int((an.failures(table).baseline == b).sum())
        results.append(row)
results = pd.DataFrame(results)

# %% [markdown]
# ## The table

# %%
for m in ("miou", "mean_iou", "episode_fb_miou"):
    shown = results[["task", "dataset", "baseline", f"B_{m}", f"T_{m}", f"O_{m}", "episodes", "failed"]]
    shown = shown.rename(columns={f"{v}_{m}": v for v in "BTO"})
    display(Markdown(f"**{an.METRIC_LABELS[m]}** (B = baseline, T = top-1 with {selector}, O = oracle; "
                     f"mean over {len(seeds)} seed(s), T = {steps})\n\n" + an.markdown_table(shown)))
paper = pd.DataFrame([{"dataset": d, "baseline": b, "B": v[0], "T": v[1], "O": v[2]} for (b, d), v in an.PAPER_BTO.items()])
display(Markdown("The paper's 1-shot class-wise mIoU %, for reference (real benchmarks, official SAM):\n\n"
                 + an.markdown_table(paper)))
figures.save(viz.main_results_figure(results, labels=an.METRIC_LABELS), "main_results")

# %% [markdown]
# ## Measured against the paper's claims

# %%
paper_up = int((paper["T"] > paper["B"]).sum())
up = {m: int((results[f"T_{m}"] > results[f"B_{m}"]).sum()) for m in ("miou", "mean_iou")}
above = int((results["O_miou"] >= results["T_miou"]).sum())
display(Markdown(
    f"In the paper T exceeds B in {paper_up} of {len(paper)} rows. Here T exceeds B in {up['miou']} of {len(results)} "
    f"rows by class-wise mIoU and in {up['mean_iou']} by mean IoU; O is at least T in {above} of {len(results)}. "
    f"Largest class-wise T - B here: {(results.T_miou - results.B_miou).max():+.2f} points "
    f"(paper: {(paper['T'] - paper['B']).max():+.2f})."))

# %%
headline = ex.write_headline(NOTEBOOK, {
    "rows": {f"{r['dataset']}/{r['baseline']}": {k: v for k, v in r.items() if k not in ("dataset", "baseline", "task")}
             for r in results.to_dict("records")},
    "rows_with_T_above_B": up, "paper_rows_with_T_above_B": paper_up,
}, settings, figures.names, figures.out_dir)
print("Wrote", headline, *figures.paths, sep="\n  ")
