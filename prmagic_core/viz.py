"""Figures: overlays of masks and prompts, prompt trajectories, and the notebooks' standard plots.

Every plot function returns a matplotlib Figure built from data already computed (a table
from :mod:`prmagic_core.experiments`, a :class:`~prmagic_core.experiments.Trace`); nothing
here runs a model. :func:`save` writes a figure as PNG and PDF into the figures directory.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

VARIANT_COLOURS = {"B": "#7f7f7f", "T": "#1f77b4", "O": "#2ca02c"}
STEP_CMAP = "viridis"


def use_style() -> None:
    """The notebooks' look: seaborn's whitegrid at paper scale, PDF text kept as text."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    matplotlib.rcParams.update({"pdf.fonttype": 42, "figure.dpi": 100, "savefig.bbox": "tight"})


def save(fig, name: str, out_dir) -> list:
    """Write ``fig`` as ``<out_dir>/<name>.png`` (150 dpi) and ``.pdf``; returns the two paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


class FigureSet:
    """A notebook's figures: ``save(fig, what)`` writes ``<out_dir>/<prefix>_<what>.{png,pdf}`` and
    remembers the name (for the headline record) and the absolute paths written."""

    def __init__(self, out_dir, prefix: str):
        self.out_dir = Path(out_dir).resolve()
        self.prefix = prefix
        self.names: list = []
        self.paths: list = []

    def save(self, fig, what: str) -> None:
        """Write the figure, show it once in a notebook (whatever the matplotlib backend), close it."""
        name = f"{self.prefix}_{what}"
        self.paths += save(fig, name, self.out_dir)
        self.names.append(name)
        show(fig)


def show(fig, dpi: int = 72) -> None:
    """Show ``fig`` once in a notebook, and close it. The picture is made here because under the agg
    backend (papermill runs) a displayed Figure is only its text repr, and executed notebooks should
    keep their pictures: a JPEG, as textured ShapeWorld scenes make PNGs of 100-700 kB (the files
    saved by :func:`save` stay PNG and PDF)."""
    try:  # IPython comes with the notebooks extra; without it there is nothing to show in
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        picture = io.BytesIO()
        fig.savefig(picture, format="jpeg", dpi=dpi, pil_kwargs={"quality": 85})
        display(Image(picture.getvalue(), format="jpeg"))
    plt.close(fig)


# ---------------------------------------------------------------- images, masks, prompts

def _prompt_array(prompts) -> np.ndarray:
    """(N, 3) x, y, label from a Prompts object or an array."""
    if hasattr(prompts, "coords"):
        return np.column_stack([prompts.coords, prompts.labels])
    return np.asarray(prompts, dtype=float).reshape(-1, 3)


def draw_prompts(ax, prompts, size: float = 60) -> None:
    """Positive points as green stars, negative ones as red crosses."""
    p = _prompt_array(prompts)
    pos, neg = p[p[:, 2] > 0], p[p[:, 2] <= 0]
    ax.scatter(pos[:, 0], pos[:, 1], marker="*", s=size, c="#00e000", edgecolors="black", linewidths=0.6, zorder=3)
    ax.scatter(neg[:, 0], neg[:, 1], marker="X", s=size * 0.7, c="#ff3030", edgecolors="black", linewidths=0.6,
               zorder=3)


def overlay(ax, image, mask=None, prompts=None, truth=None, title: str | None = None, colour: str = "#ff7f0e"):
    """The image, a translucent ``mask`` with its outline, the ground-truth outline (dashed), prompts."""
    ax.imshow(image)
    if mask is not None and np.any(mask):
        tint = np.zeros((*mask.shape, 4))
        tint[..., :3] = matplotlib.colors.to_rgb(colour)
        tint[..., 3] = 0.45 * np.asarray(mask, dtype=float)
        ax.imshow(tint)
        ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
    if truth is not None and np.any(truth):
        ax.contour(truth, levels=[0.5], colors=["white"], linewidths=1.0, linestyles="--")
    if prompts is not None:
        draw_prompts(ax, prompts)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def prompt_trajectory(ax, image, prompts_per_step, mask=None, title: str | None = None):
    """Each step's prompts coloured by step; a prompt's successive positions joined by a line."""
    overlay(ax, image, mask, title=title)
    steps = [_prompt_array(p) for p in prompts_per_step]
    colours = plt.get_cmap(STEP_CMAP)(np.linspace(0, 1, max(len(steps), 2)))
    width = min(len(p) for p in steps)
    for i in range(width):  # the i-th prompt of every step (the sampler orders its points the same way)
        path = np.array([p[i, :2] for p in steps])
        ax.plot(path[:, 0], path[:, 1], color="white", lw=0.8, alpha=0.8, zorder=2)
    for t, p in enumerate(steps):
        ax.scatter(p[:, 0], p[:, 1], color=colours[t], s=28, edgecolors="black", linewidths=0.5, zorder=3,
                   marker="o", label=f"step {t}")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.7)
    return ax


# ---------------------------------------------------------------- one trajectory (walkthrough)

def episode_figure(trace):
    """Support with its mask, query with its ground truth."""
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    overlay(axes[0], trace.support_image, trace.support_mask, title=f"support: {trace.class_name}")
    overlay(axes[1], trace.query_image, trace.query_mask, colour="#ffbf00", title="query and its ground truth")
    fig.tight_layout()
    return fig


def steps_figure(trace, selector: str):
    """Row 1: the similarity map and prompts of every step; row 2: every candidate with its IoU and score."""
    n = trace.steps + 1
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.8), squeeze=False)
    chosen, best = trace.chosen(selector), trace.oracle_index
    for t in range(n):
        ax = axes[0, t]
        ax.imshow(trace.similarities[t], cmap="magma")
        draw_prompts(ax, trace.prompts[t], size=50)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"step {t}: S_{t} and P_{t}", fontsize=9)
        marks = (" [T]" if t == chosen else "") + (" [O]" if t == best else "")
        overlay(axes[1, t], trace.query_image, trace.masks[t], truth=trace.query_mask,
                title=f"m_{t}: IoU {trace.ious[t]:.3f}{marks}\n{selector} {trace.scores[selector][t]:.4f}")
    fig.tight_layout()
    return fig


def scores_figure(trace):
    """IoU of each candidate and every selector's score, with the step each picks."""
    names = list(trace.scores)
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.0 * (1 + len(names)), 2.8), squeeze=False)
    steps = np.arange(trace.steps + 1)
    series = [("IoU with ground truth (oracle)", trace.ious, trace.oracle_index, VARIANT_COLOURS["O"])]
    series += [(f"score: {n}", trace.scores[n], trace.chosen(n), VARIANT_COLOURS["T"]) for n in names]
    for ax, (title, values, pick, colour) in zip(axes[0], series):
        ax.plot(steps, values, "o-", color=colour)
        ax.plot([pick], [values[pick]], "o", ms=12, mfc="none", mec="red", mew=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_xticks(steps)
    fig.tight_layout()
    return fig


def trajectory_figure(trace):
    """Where the prompts go across steps, over the query with the last candidate."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    prompt_trajectory(ax, trace.query_image, trace.prompts, trace.masks[-1], title="prompts across steps")
    return fig


def step_explorer(trace, selector: str):
    """An ipywidgets slider over the steps of a cached trace (display only; saves nothing)."""
    import ipywidgets

    def show_step(step):
        print(f"step {step} of {trace.steps}: IoU {trace.ious[step]:.3f}, {selector} score {trace.scores[selector][step]:.4f}")
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2))
        axes[0].imshow(trace.similarities[step], cmap="magma")
        draw_prompts(axes[0], trace.prompts[step])
        axes[0].set_title(f"S_{step} and P_{step}", fontsize=9)
        overlay(axes[1], trace.query_image, trace.masks[step], truth=trace.query_mask, title=f"m_{step}")
        show(fig)

    return ipywidgets.interact(show_step, step=ipywidgets.IntSlider(min=0, max=trace.steps, value=0))


# ---------------------------------------------------------------- theory

def drift_weights_figure(d, weights: dict):
    """s(d) of each f-divergence against the discriminator logit d."""
    fig, ax = plt.subplots(figsize=(4.4, 3.0))
    for name, values in weights.items():
        ax.plot(d, values, label=name, lw=2)
    ax.set_xlabel("discriminator logit d")
    ax.set_ylabel("drift weight s(d)")
    ax.legend()
    fig.tight_layout()
    return fig


def toy_flow_figure(toy, title: str = ""):
    """Particles at a few steps over the discriminator's logit field, with the real samples."""
    steps = sorted(toy.snapshots)
    fig, axes = plt.subplots(1, len(steps), figsize=(2.8 * len(steps), 2.9), sharex=True, sharey=True, squeeze=False)
    xs, ys, field = toy.grid
    for ax, t in zip(axes[0], steps):
        ax.contourf(xs, ys, field, levels=20, cmap="coolwarm", alpha=0.5)
        ax.scatter(*toy.real.T, s=4, c="black", alpha=0.35, label="real")
        ax.scatter(*toy.snapshots[t].T, s=4, c="#d62728", alpha=0.6, label="particles")
        ax.set_title(f"step {t}: energy dist. {toy.distance[t]:.3f}", fontsize=9)
        ax.set_aspect("equal")
    axes[0, 0].legend(fontsize=7, loc="upper left", markerscale=3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def toy_distance_figure(runs: dict):
    """Energy distance to the real distribution per step, one line per run."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for label, toy in runs.items():
        ax.plot(np.arange(len(toy.distance)), toy.distance, label=label)
    ax.set_xlabel("Euler-Maruyama step")
    ax.set_ylabel("energy distance to real")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def scale_figure(scale: pd.DataFrame):
    """Per element and step: noise std vs the largest possible drift, against eta."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.loglog(scale.eta, scale.noise_std, "o-", label="noise std sqrt(2 eta gamma)")
    ax.loglog(scale.eta, scale.max_drift, "s-", label="max drift eta * clip")
    for row in scale.itertuples():
        ax.annotate(f"x{row.ratio:.0f}", (row.eta, np.sqrt(row.noise_std * row.max_drift)), fontsize=8, ha="center")
    ax.set_xlabel("eta")
    ax.set_ylabel("per-element magnitude")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- sweeps

def metric_vs_step_figure(frame: pd.DataFrame, hue: str, col: str = "baseline",
                          metrics=("miou", "mean_iou"), labels: dict | None = None):
    """Each metric against the step, one column per ``col`` value, lines per ``hue``; bands span seeds (sd)."""
    labels = labels or {}
    cols = list(dict.fromkeys(frame[col]))
    fig, axes = plt.subplots(len(metrics), len(cols), figsize=(3.6 * len(cols), 2.8 * len(metrics)),
                             squeeze=False, sharex=True)
    hue_values = list(dict.fromkeys(frame[hue]))
    palette = dict(zip(hue_values, sns.color_palette("viridis", len(hue_values))))
    for j, value in enumerate(cols):
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            sns.lineplot(data=frame[frame[col] == value], x="step", y=metric, hue=hue, palette=palette,
                         errorbar="sd", marker="o", ax=ax, legend=(i == 0 and j == len(cols) - 1))
            ax.set_title(f"{col} = {value}" if i == 0 else "", fontsize=9)
            ax.set_ylabel(labels.get(metric, metric))
            ax.set_xticks(sorted(frame.step.unique()))
    fig.tight_layout()
    return fig


def optimal_step_figure(steps: pd.DataFrame, paper: dict, max_step: int, by: str = "baseline"):
    """Histogram of the per-trajectory oracle step, one panel per ``by`` value, with the measured
    and the paper's mean (std in the legend); trajectories whose candidates all tie are shown apart."""
    groups = list(dict.fromkeys(steps[by]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.2), squeeze=False)
    bins = np.arange(max_step + 2) - 0.5
    for ax, group in zip(axes[0], groups):
        rows = steps[steps[by] == group]
        mean, std = rows.oracle_step.mean(), rows.oracle_step.std(ddof=1)
        ax.hist([rows.oracle_step[~rows.flat], rows.oracle_step[rows.flat]], bins=bins, stacked=True,
                color=["#1f77b4", "#c7c7c7"], label=["candidates differ", "all candidates tie"])
        ax.axvline(mean, color="#1f77b4", lw=2, label=f"measured mean {mean:.2f} (std {std:.2f})")
        ax.axvline(paper["mean"], color="#d62728", ls="--", lw=2,
                   label=f"paper mean {paper['mean']:.1f} (std {paper['std']:.1f})")
        ax.set_xlabel("oracle step (earliest best candidate)")
        ax.set_ylabel("trajectories")
        ax.set_xticks(range(max_step + 1))
        ax.set_title(f"{by} = {group}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _variant_label(frame: pd.DataFrame) -> pd.Series:
    return frame.variant + frame.selector.map(lambda s: f" {s}" if s else "")


def bto_figure(summary: pd.DataFrame, metrics=("miou", "mean_iou"), labels: dict | None = None, by: str = "baseline",
               panel: str | None = None):
    """B / T per selector / O as points per ``by`` value (error bars: sd over seeds when given),
    one row of panels per metric, one column per ``panel`` value. Points, not bars: the
    differences are often small next to the values, and the axis zooms to them."""
    labels = labels or {}
    data = summary.assign(method=_variant_label(summary))
    order = list(dict.fromkeys(data.method))
    markers = {"B": "s", "T": "o", "O": "^"}
    t_shades = sns.color_palette("Blues_d", max(1, sum(m.startswith("T") for m in order)))
    colours, t_index = [], 0
    for method in order:
        if method.startswith("T"):
            colours.append(t_shades[t_index])
            t_index += 1
        else:
            colours.append(VARIANT_COLOURS[method[0]])
    panels = [None] if panel is None else list(dict.fromkeys(data[panel]))
    widest = max(len(dict.fromkeys(data[by] if p is None else data[data[panel] == p][by])) for p in panels)
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=((1.2 * widest + 2.0) * len(panels), 2.9 * len(metrics)),
                             squeeze=False)
    width = 0.7 / len(order)
    for i, metric in enumerate(metrics):
        for j, value in enumerate(panels):
            ax = axes[i, j]
            part = data if value is None else data[data[panel] == value]
            groups = list(dict.fromkeys(part[by]))
            for k, method in enumerate(order):
                rows = part[part.method == method].set_index(by).reindex(groups)
                x = np.arange(len(groups)) + (k - (len(order) - 1) / 2) * width
                spread = rows[f"{metric}_sd"] if f"{metric}_sd" in rows else None
                ax.errorbar(x, rows[metric], yerr=spread, fmt=markers[method[0]], color=colours[k], ms=6, capsize=2,
                            label=method)
            ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
            ax.set_xlim(-0.6, len(groups) - 0.4)
            ax.set_ylabel(labels.get(metric, metric) if j == 0 else "")
            if i == 0 and value is not None:
                ax.set_title(f"{panel} = {value}", fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def scatter_figure(wide: pd.DataFrame, selectors, baseline_col: str = "baseline"):
    """Per trajectory: T's IoU (each selector) and O's IoU against B's IoU; the diagonal is 'no change'."""
    groups = list(dict.fromkeys(wide[baseline_col]))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.8 * len(groups), 3.6), squeeze=False)
    markers = ["o", "s", "^", "D"]
    for ax, group in zip(axes[0], groups):
        rows = wide[wide[baseline_col] == group]
        for k, name in enumerate(selectors):
            ax.scatter(rows.iou_B, rows[f"iou_T {name}"], s=14, alpha=0.6, marker=markers[k % 4], label=f"T {name}")
        ax.scatter(rows.iou_B, rows.iou_O, s=10, alpha=0.5, c=VARIANT_COLOURS["O"], marker="+", label="O")
        ax.plot([0, 1], [0, 1], color="black", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("IoU of B (baseline)")
        ax.set_ylabel("IoU after refinement")
        ax.set_title(group, fontsize=9)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def misses_figure(cases: list):
    """Selector failures: each row the query with B's, T's and O's masks (ground truth dashed).

    ``cases``: dicts with ``image``, ``truth``, ``masks`` (label -> mask), ``prompts`` (label ->
    (N, 3)) and ``title``.
    """
    if not cases:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no trajectory where the selector missed the oracle", ha="center", va="center")
        return fig
    width = max(len(case["masks"]) for case in cases)  # rows may come from different selectors
    fig, axes = plt.subplots(len(cases), width, figsize=(2.6 * width, 2.7 * len(cases)), squeeze=False)
    colours = {"B": VARIANT_COLOURS["B"], "T": VARIANT_COLOURS["T"], "O": VARIANT_COLOURS["O"]}
    for row, case in zip(axes, cases):
        for ax in row[len(case["masks"]):]:
            ax.axis("off")
        for ax, label in zip(row, case["masks"]):
            overlay(ax, case["image"], case["masks"][label], prompts=case["prompts"].get(label), truth=case["truth"],
                    colour=colours.get(label[0], "#1f77b4"), title=f"{label}\n{case['titles'][label]}")
        row[0].set_ylabel(case["title"], fontsize=8)
    fig.tight_layout()
    return fig


def norms_figure(norms: pd.DataFrame, hue: str):
    """Drift and noise norms per step (log scale), one line per ``hue`` value."""
    long = norms.melt(id_vars=[hue, "step"], value_vars=["drift_norm", "noise_norm"], var_name="term", value_name="norm")
    long = long[long.norm > 0]
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    sns.lineplot(data=long, x="step", y="norm", hue=hue, style="term", marker="o", ax=ax, errorbar=None)
    ax.set_yscale("log")
    ax.set_ylabel("L2 norm of the step's term")
    ax.set_xticks(sorted(long.step.unique()))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main_results_figure(results: pd.DataFrame, metrics=("miou", "mean_iou"), labels: dict | None = None):
    """B / T / O of every (dataset, baseline) row of the main table (columns ``<variant>_<metric>``)."""
    long = []
    for row in results.to_dict("records"):
        for variant in ("B", "T", "O"):
            long.append({"row": f"{row['dataset']}\n{row['baseline']}", "variant": variant, "selector": "",
                         **{m: row[f"{variant}_{m}"] for m in metrics}})
    return bto_figure(pd.DataFrame(long), metrics=metrics, labels=labels, by="row")


FAMILY_COLOURS = {"release": "#1f77b4", "fork": "#ff7f0e", "ours": "#2ca02c", "reference": "#7f7f7f"}


def _cells_grid(frame: pd.DataFrame, width: float = 4.6, height: float = 3.6):
    cells = list(dict.fromkeys(frame.cell))
    cols = min(2, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    return fig, list(zip(cells, axes.flat))


def closure_figure(frame: pd.DataFrame, closure_goal: float = 0.5, non_degradation_goal: float = 0.95):
    """Per cell: each selector a point at (non-degradation, oracle-gap closure) with 95% intervals,
    coloured by family; the shaded corner is the goal. ``frame``: study.summary_frame rows with ``cell``."""
    fig, cells = _cells_grid(frame)
    for cell, ax in cells:
        rows = frame[(frame.cell == cell) & (frame.family != "reference")]
        for r in rows.itertuples():
            colour = FAMILY_COLOURS[r.family]
            ax.errorbar(r.non_degradation, r.closure, xerr=[[r.non_degradation - r.non_degradation_low],
                                                            [r.non_degradation_high - r.non_degradation]],
                        yerr=[[r.closure - r.closure_low], [r.closure_high - r.closure]], fmt="o", color=colour,
                        ms=4, lw=0.8, alpha=0.85)
            ax.annotate(r.selector, (r.non_degradation, r.closure), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.fill_between([non_degradation_goal, 1.0], closure_goal, 1.0, color="#2ca02c", alpha=0.12, lw=0)
        ax.axhline(0, color="#7f7f7f", lw=0.8, ls="--")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -2.0), max(high, 1.05))  # a tiny oracle gap makes closures explode; the goal is in [0.5, 1]
        ax.set_xlabel("non-degradation rate (IoU >= B's)")
        ax.set_ylabel("oracle-gap closure vs the release")
        ax.set_title(cell, fontsize=9)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in FAMILY_COLOURS.items() if f != "reference"]
    cells[0][1].legend(handles=handles, fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def intervals_vs_norm_figure(frame: pd.DataFrame, panel: str = "contrast", hue: str = "arm", row: str = "baseline",
                             marks: dict | None = None, labels: dict | None = None):
    """Means with 95% interval bands against the step's L2 norm (log scale): one column per ``panel``
    value, one row per ``row`` value, one line per ``hue``; ``marks`` ({label: norm}) draws dotted verticals."""
    labels = labels or {}
    panels, rows = list(dict.fromkeys(frame[panel])), list(dict.fromkeys(frame[row]))
    hues = list(dict.fromkeys(frame[hue]))
    palette = dict(zip(hues, sns.color_palette("colorblind", len(hues))))
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3.8 * len(panels), 2.9 * len(rows)), squeeze=False,
                             sharex=True)
    for i, r in enumerate(rows):
        for j, p in enumerate(panels):
            ax = axes[i, j]
            part = frame[(frame[row] == r) & (frame[panel] == p)]
            for h in hues:
                line = part[part[hue] == h].sort_values("norm")
                ax.plot(line.norm, line["mean"], marker="o", color=palette[h], label=h)
                ax.fill_between(line.norm, line.low, line.high, color=palette[h], alpha=0.15)
            ax.axhline(0.0, color="black", linewidth=0.6)
            for name, norm in (marks or {}).items():
                ax.axvline(norm, color="grey", linestyle=":", linewidth=0.8)
                ax.annotate(name, (norm, 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                            va="top", ha="right", color="grey")
            ax.set_xscale("log")
            ax.set_title(f"{r}: {labels.get(p, p)}", fontsize=9)
            ax.set_xlabel("L2 norm of one step" if i == len(rows) - 1 else "")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def tau_figure(frame: pd.DataFrame):
    """Per cell: each selector's mean within-trajectory Kendall tau between its score and the candidates'
    IoU, with 95% intervals (0: the score says nothing about which candidate is better)."""
    fig, cells = _cells_grid(frame, height=4.2)
    for cell, ax in cells:
        rows = frame[(frame.cell == cell) & (frame.selector != "oracle")].sort_values("tau")
        y = np.arange(len(rows))
        ax.barh(y, rows.tau, xerr=[rows.tau - rows.tau_low, rows.tau_high - rows.tau],
                color=[FAMILY_COLOURS[f] for f in rows.family], alpha=0.85, error_kw={"lw": 0.8})
        ax.set_yticks(y, rows.selector, fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("Kendall tau, score vs IoU (within trajectory)")
        ax.set_title(cell, fontsize=9)
    fig.tight_layout()
    return fig


def intervals_figure(frame: pd.DataFrame, label: str = "setting", panel: str = "contrast", row: str = "baseline",
                     labels: dict | None = None):
    """One horizontal bar (mean) with its 95% interval per ``label`` value, per ``panel`` and ``row`` value."""
    labels = labels or {}
    panels, rows = list(dict.fromkeys(frame[panel])), list(dict.fromkeys(frame[row]))
    names = list(dict.fromkeys(frame[label]))
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3.8 * len(panels), 0.35 * len(names) * len(rows) + 1.2),
                             squeeze=False, sharey=True)
    for i, r in enumerate(rows):
        for j, p in enumerate(panels):
            ax = axes[i, j]
            part = frame[(frame[row] == r) & (frame[panel] == p)].set_index(label).reindex(names)
            y = np.arange(len(names))
            ax.barh(y, part["mean"], color=VARIANT_COLOURS["T"] if p.startswith("T") else VARIANT_COLOURS["O"], alpha=0.6)
            ax.errorbar(part["mean"], y, xerr=[part["mean"] - part.low, part.high - part["mean"]], fmt="none",
                        ecolor="black", capsize=2)
            ax.axvline(0.0, color="black", linewidth=0.6)
            ax.set_yticks(y, names)
            ax.set_title(f"{r}: {labels.get(p, p)}", fontsize=9)
    axes[0, 0].invert_yaxis()  # the axes share y: once puts the first label on top of every panel
    fig.tight_layout()
    return fig
