"""Writes the notebooks of this folder from the cells below: `python notebooks/_build.py`.

The .ipynb files are generated (without outputs) so that review happens here, in Python.
Every notebook opens with a markdown cell (what it shows, how long it takes), then a cell
tagged ``parameters`` holding literal defaults only (papermill overrides them), then a cell
of derived values. Code calls prmagic_core; figures go through ``viz`` into ``out_dir``.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# CPU times: `prmagic figures` on 2 cores shared with a SAM-Tiny training job (niced, 1 thread),
# with the early SAM-Tiny checkpoint; "estimated" ones come from measured per-trajectory costs
# (PerSAM-F 0.26 s, Matcher 1.8 s per T = 5 trajectory), the full run itself could not finish.
NOT_ON_GPU = "not measured (no GPU was available); the cost is vit_b encoder passes, about 2 (T + 1) + 2 per trajectory"
RUNTIME = {
    "00_theory": ("smoke 11 s, full 13 s (measured)", "the same: no SAM involved"),
    "01_walkthrough": ("smoke 10 s, full 11 s (measured)", NOT_ON_GPU),
    "02_eta_sensitivity": ("smoke 20 s (measured), full ~11 min (estimated)", NOT_ON_GPU),
    "03_optimal_step_histograms": ("smoke 7 s (measured); full ~10 s when 02's table is cached", NOT_ON_GPU),
    "04_oracle_vs_top1": ("smoke 9 s (measured); full ~15 s when 02's table is cached", NOT_ON_GPU),
    "05_drift_vs_noise": ("smoke 21 s (measured), full ~8 min (estimated)", NOT_ON_GPU),
    "06_main_results": ("smoke 17 s (measured), full ~3 min (estimated)", NOT_ON_GPU),
}

COMMON_PARAMETERS = """\
backend = "tiny"  # "tiny": SAM-Tiny on ShapeWorld; "sam": an official checkpoint on real data
checkpoint = None  # path to sam_vit_{b,l,h}_*.pth (backend "sam"); None: the shipped SAM-Tiny weights
model_type = "vit_b"
dinov2_checkpoint = None  # DINOv2 ViT-L/14 weights for Matcher and GF-SAM with backend "sam"
dataset = "shapeworld"  # or "folder", "fss", "coco", "lvis", "paco", "pascal_part", "dis5k"
data_root = None
n_episodes = 24
etas = [1e-2, 1e-3, 1e-4, 1e-5]
steps = 5
seeds = [0, 1, 2]
device = "auto"
out_dir = "../figures"
cache_dir = "build/cache"
baselines = ["persam_f", "matcher"]  # the paper's two; "persam" and "gfsam" work too
"""

COMMON_SETUP = """\
from IPython.display import Markdown, display

from prmagic_core import analysis as an, experiments as ex, viz
from prmagic_core.baselines import BASELINES

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
"""


def code(source: str, tags=()):
    cell = nbformat.v4.new_code_cell(textwrap.dedent(source).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(source: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(source).strip("\n"))


def opening(name: str, title: str, shows: str):
    cpu, gpu = RUNTIME[name]
    return md(f"# {title}\n\n{textwrap.dedent(shows).strip()}\n\n"
              f"**Runtime.** CPU, `backend=\"tiny\"` (2 cores shared with another job): {cpu}. "
              f"GPU, `backend=\"sam\"`: {gpu}. Rows already in `cache_dir` are read, not recomputed.")


def parameters(extra: str = ""):
    return code(COMMON_PARAMETERS + textwrap.dedent(extra), tags=["parameters"])


def setup(name: str, extra: str = ""):
    return code(f'NOTEBOOK = "{name}"\n' + COMMON_SETUP + textwrap.dedent(extra))


def headline(numbers: str):
    return code(f"""\
        ex.write_headline(NOTEBOOK, {numbers}, settings, figures.names, out_dir)
        display(Markdown(f"Wrote `{{out_dir}}/{{NOTEBOOK}}.json` and {{len(figures.names)}} figures."))
        """)


# ---------------------------------------------------------------- 00 theory

THEORY = [
    opening("00_theory", "00 · Theory: the discriminator gradient flow behind PR-MaGIC", """
        What the refinement loop is a discretisation of: the gradient flow of an f-divergence with
        entropy regularisation, whose density ratio a discriminator provides. The notebook plots the
        drift weight s(d) of three divergences, runs the flow on a 2-D toy where a small trained
        discriminator moves particles from a fake distribution to the real one (with the same
        `flow_step` the loop uses), and compares noise and drift at the paper's constants."""),
    parameters("""\
        gamma = 0.1
        clip = 0.1
        toy_particles = 400
        toy_train_steps = 300
        toy_steps = 200
        toy_eta = 0.02
        toy_gamma = 0.01
        toy_retrain_every = 10
        """),
    setup("00_theory", """\
        import numpy as np

        from prmagic_core.flow import DIVERGENCES, FlowConfig, drift_weight
        from prmagic_core.toy import toy_flow

        seed = seeds[0]
        paper_eta = 1e-3
        """),
    md(r"""
        ## The flow

        Let $\rho$ be the distribution of query embeddings and $\mu$ the distribution of embeddings that
        decode to the right mask. PR-MaGIC minimises the entropy-regularised functional
        $F_\mu(\rho) = \mathrm{KL}(\mu \,\|\, \rho) - \gamma H(\rho)$. Its Wasserstein gradient flow is a
        Fokker-Planck equation, whose particle form is the SDE
        $dz = s(d)\,\nabla_z d_\phi(z)\,dt + \sqrt{2\gamma}\,dW$, where the density ratio
        $\rho/\mu = (1 - D_\phi)/D_\phi = e^{-d_\phi}$ comes from a discriminator $D_\phi = \sigma(d_\phi)$.
        Euler-Maruyama with step $\eta$ gives the update of the loop,

        $$\delta_{t+1} = \delta_t + \eta\, s(d)\, \mathrm{clip}(\nabla d_\phi) + \sqrt{2\eta\gamma}\,\xi, \qquad \xi \sim \mathcal N(0, I),$$

        with $z_{t+1} = z_0 + \delta_{t+1}$. SAM's mask decoder plays the discriminator: $d_\phi$ is the sum of
        its low-resolution logits. The f-divergence sets the drift weight: $s = 1$ for KL,
        $1/(1+e^{d})$ for logD, $1/(1+e^{-d})$ for JS (DGflow, Ansari et al. 2021).
        """),
    code("""\
        d = np.linspace(-8, 8, 401)
        weights = {name: [drift_weight(x, name) for x in d] for name in DIVERGENCES}
        figures.save(viz.drift_weights_figure(d, weights), "drift_weights")
        """),
    md("""
        KL pushes every embedding with the full gradient. logD pushes hardest where the discriminator
        says "fake" (d < 0) and stops where it is already convinced; JS does the opposite. PR-MaGIC
        uses KL, for which the drift is the clipped gradient itself.

        ## A 2-D toy: a trained discriminator drives the particles

        Real samples come from a narrow Gaussian, particles start in a wider one elsewhere. A small
        MLP is trained for a few hundred steps to tell them apart (logistic loss); its logit is
        $d_\\phi$. The particles then follow the same `flow_step` as the loop, with the gradient taken
        at the moved particles (the paper's equation). The energy distance to the real samples
        measures how close they get. First the discriminator stays fixed, as SAM's decoder does in
        PR-MaGIC; then it is trained a little further against the current particles every
        `toy_retrain_every` steps, so that $d_\\phi$ keeps estimating $\\log \\mu / \\rho_t$.
        """),
    code("""\
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
        """),
    md("""
        ## Noise against drift at the paper's constants

        Each element of the embedding moves per step by at most $\\eta \\cdot \\text{clip}$ through the drift,
        while the noise has standard deviation $\\sqrt{2\\eta\\gamma}$. The ratio does not depend on the model.
        """),
    code("""\
        scale = an.noise_vs_drift(etas, gamma=gamma, clip=clip)
        figures.save(viz.scale_figure(scale), "noise_vs_drift")
        display(Markdown(an.markdown_table(scale, ".3g")))
        at = scale.set_index("eta").ratio
        display(Markdown(" ".join(
            f"At eta = {e:g} the noise std is {at[e]:.0f} times the largest possible drift per element." for e in at.index)))
        """),
    headline("""{
            "drift_weight_at_0": {name: drift_weight(0.0, name) for name in DIVERGENCES},
            "toy_energy_distance": {name: {"start": run.distance[0], "min": float(run.distance.min()),
                                           "min_step": int(np.argmin(run.distance)), "end": run.distance[-1]}
                                    for name, run in (("fixed", toy), ("retrained", retrained))},
            "toy_paper_constants_energy_distance": {"start": paper_toy.distance[0], "end": paper_toy.distance[-1]},
            "noise_to_max_drift_ratio": {f"{e:g}": float(r) for e, r in at.items()},
        }"""),
]

# ---------------------------------------------------------------- 01 walkthrough

WALKTHROUGH = [
    opening("01_walkthrough", "01 · Walkthrough: one episode, step by step", """
        One episode through the whole method: the support and the query, the similarity map and the
        prompts at every step, each candidate mask, every selector's scores and the final choice,
        against the oracle that knows the ground truth. An optional slider (`interactive = True`)
        browses the cached trajectory; it shows, it never computes a figure."""),
    parameters("""\
        baseline = "persam_f"
        episode_index = 0
        eta = None  # None: 1e-3 for objects, 1e-4 for parts (the paper's values)
        selector = "masked-image"
        interactive = False
        """),
    setup("01_walkthrough", """\
        eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
        seed = seeds[0]
        trace = lab.trace(baseline, episode_index, eta=eta, seed=seed, sweep=ex.Sweep(steps=steps))
        settings.update(baseline=baseline, episode_index=episode_index, eta=eta, selector=selector, seed=seed)
        """),
    md("""
        ## The episode

        The support image comes with a mask of the object to find; the query is a new image of the
        same class. Colour varies within a ShapeWorld class, so colour misleads a similarity map.
        """),
    code("""\
        figures.save(viz.episode_figure(trace), "episode")
        display(Markdown(f"Episode `{trace.episode}`, class **{trace.class_name}**, baseline {baseline}, "
                         f"eta = {eta:g}, gamma = 0.1, {trace.steps} steps, seed {seed}."))
        """),
    md("""
        ## Similarity maps, prompts and candidates

        Step 0 is the baseline itself: the similarity $S_0$ between the support prototype and the query
        embedding $z_0$, the prompts sampled from it, and the mask decoded from them ($m_0$, "B"). Each
        later step moves the embedding along the decoder's gradient plus noise, recomputes the
        similarity from the moved embedding, resamples the prompts, and decodes a new candidate from
        the *original* $z_0$. Dashed white: the ground truth.
        """),
    code("""\
        figures.save(viz.steps_figure(trace, selector), "steps")
        figures.save(viz.trajectory_figure(trace), "prompt_trajectory")
        moved = sum(len(p) != len(trace.prompts[0]) or (p != trace.prompts[0]).any() for p in trace.prompts[1:])
        display(Markdown(
            f"The prompts differ from step 0's at {moved} of {trace.steps} later steps. Per step the drift moved "
            f"the embedding by an L2 norm of {trace.drift_norm.mean():.3g} on average and the noise by "
            f"{trace.noise_norm.mean():.3g}, {trace.noise_norm.mean() / max(trace.drift_norm.mean(), 1e-30):.0f} times more."))
        """),
    md("""
        ## Choosing the final mask

        The top-1 selector represents each candidate's masked query object and the support object the
        same way and keeps the most similar (`masked-image` as released, `crop-pool` as the paper
        describes, `pooled` without an extra encoder pass). The oracle keeps the candidate of highest IoU,
        an upper bound no method can use. Red rings mark each one's pick.
        """),
    code("""\
        figures.save(viz.scores_figure(trace), "scores")
        t, o = trace.chosen(selector), trace.oracle_index
        display(Markdown(
            f"B (step 0) has IoU {trace.ious[0]:.3f}. The {selector} selector picks step {t} (IoU {trace.ious[t]:.3f}), "
            f"the oracle step {o} (IoU {trace.ious[o]:.3f}): "
            + ("the selector found the best candidate." if trace.ious[t] >= trace.ious[o] else
               f"the selector misses {trace.ious[o] - trace.ious[t]:.3f} IoU.")
            + (" Here refinement changed nothing measurable." if trace.ious.max() - trace.ious.min() < 1e-9 else "")))
        """),
    code("""\
        if interactive:  # a widget frontend is needed; papermill runs keep interactive = False
            viz.step_explorer(trace, selector)
        """),
    headline("""{
            "iou": {"baseline": trace.ious[0], "top1": trace.ious[t], "oracle": trace.ious[o]},
            "top1_step": t, "oracle_step": o,
            "mean_drift_norm": float(trace.drift_norm.mean()), "mean_noise_norm": float(trace.noise_norm.mean()),
        }"""),
]

# ---------------------------------------------------------------- 02 eta sensitivity

ETA = [
    opening("02_eta_sensitivity", "02 · Sensitivity to the step size eta", """
        The paper's Sec. 4.3: the mIoU of the candidate at a fixed step, against the step, for
        eta in {1e-2, 1e-3, 1e-4, 1e-5}. The paper reports that 1e-2 improves early and then degrades,
        while 1e-4 and 1e-5 converge too slowly. Lines are means over seeds, bands one standard
        deviation across seeds."""),
    parameters(),
    setup("02_eta_sensitivity", """\
        table = lab.sweep(ex.Sweep(baselines=available, etas=etas, seeds=seeds, episodes=n_episodes, steps=steps))
        per_step = an.step_metrics(table)
        curves = an.over_seeds(per_step, ["baseline", "eta", "step"])
        """),
    md("""
        ## mIoU against the step

        Step 0 is the baseline's own mask; every eta starts there. Both metrics are shown:
        the class-wise mIoU of the few-shot protocol (intersections and unions summed per class) and
        the mean of per-episode IoUs.
        """),
    code("""\
        figures.save(viz.metric_vs_step_figure(per_step.assign(eta=per_step.eta.map("{:g}".format)), hue="eta",
                                               labels=an.METRIC_LABELS), "eta_sensitivity")
        for m in ("miou", "mean_iou"):
            by_step = curves.pivot_table(index=["baseline", "eta"], columns="step", values=m).add_prefix("step ").reset_index()
            display(Markdown(f"**{an.METRIC_LABELS[m]}**, mean over {len(seeds)} seed(s)\\n\\n"
                             + an.markdown_table(by_step, formats={"eta": "g"})))
        """),
    md("## Does the paper's pattern hold here?"),
    code("""\
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
        display(Markdown("Changes of 0.5 points or less count as none.\\n\\n" + "\\n".join(lines)))
        """),
    headline("""{
            "miou_per_step": {f"{b}/eta={e:g}": c.sort_values("step").miou.tolist() for (b, e), c in curves.groupby(["baseline", "eta"])},
            "mean_iou_per_step": {f"{b}/eta={e:g}": c.sort_values("step").mean_iou.tolist() for (b, e), c in curves.groupby(["baseline", "eta"])},
            "shape": {f"{b}/eta={e:g}": s["shape"] for (b, e), s in shapes.items()},
            "failed_trajectories": int(len(an.failures(table))),
        }"""),
]

# ---------------------------------------------------------------- 03 optimal step

OPTIMAL = [
    opening("03_optimal_step_histograms", "03 · Which step is best? Per-episode optimal steps", """
        For each episode, the step whose candidate has the highest IoU (the oracle step; the earliest
        when several tie), its histogram, mean and standard deviation, next to the paper's Tab. 2
        (mean about 3, std about 1.8 with T = 5). A wide spread is the paper's argument for keeping
        every step's candidate and selecting afterwards."""),
    parameters("""\
        eta = None  # None: 1e-3 for objects, 1e-4 for parts
        """),
    setup("03_optimal_step_histograms", """\
        eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
        settings.update(eta=eta)
        table = lab.sweep(ex.Sweep(baselines=available, etas=[eta], seeds=seeds, episodes=n_episodes, steps=steps))
        optimal = an.optimal_steps(table)
        stats = {b: an.optimal_step_stats(optimal[optimal.baseline == b]) for b in available}
        """),
    code("""\
        figures.save(viz.optimal_step_figure(optimal, an.PAPER_OPTIMAL_STEP, steps), "optimal_step_histogram")
        """),
    code("""\
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
        display(Markdown(f"eta = {eta:g}, T = {steps}.\\n\\n" + "\\n".join(lines)))
        """),
    headline("""{b: {k: v for k, v in s.items() if v == v} for b, s in stats.items()}"""),
]

# ---------------------------------------------------------------- 04 oracle vs top-1

ORACLE = [
    opening("04_oracle_vs_top1", "04 · Baseline, top-1 and oracle", """
        B (the baseline's mask, step 0), T (the top-1 selector's pick among the T + 1 candidates) and O
        (the oracle, the candidate of highest IoU) per baseline and selector: `masked-image` (as
        released), `crop-pool` (as the paper describes) and `pooled` (no extra encoder pass). The gap
        O - T is what a better selector could still gain. Then every episode on its own, and the cases
        where the selector picks wrong."""),
    parameters("""\
        eta = None  # None: 1e-3 for objects, 1e-4 for parts
        n_misses = 4
        """),
    setup("04_oracle_vs_top1", """\
        eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
        settings.update(eta=eta)
        table = lab.sweep(ex.Sweep(baselines=available, etas=[eta], seeds=seeds, episodes=n_episodes, steps=steps))
        selectors = an.selectors_in(table)
        summary = an.over_seeds(an.bto(table), ["baseline", "variant", "selector"])
        wide = {m: an.bto_wide(summary, m, by=["baseline"]) for m in ("miou", "mean_iou")}
        episodes = an.per_episode(table)
        """),
    md("""
        ## B / T / O

        Means over seeds; error bars are one standard deviation across seeds. Top: class-wise mIoU
        (the few-shot protocol); bottom: mean per-episode IoU.
        """),
    code("""\
        figures.save(viz.bto_figure(summary, labels=an.METRIC_LABELS), "bto")
        for m, w in wide.items():
            display(Markdown(f"**{an.METRIC_LABELS[m]}**\\n\\n" + an.markdown_table(w)))
        """),
    md("## Does top-1 improve on the baseline, and how far is the oracle?"),
    code("""\
        paper_b, paper_t, paper_o = an.PAPER_BTO[("persam_f", "fss")]
        lines, gains = [], {}
        for b in available:
            rows = episodes[episodes.baseline == b]
            for s in selectors:
                gain = an.paired_interval(100 * rows[f"iou_T {s}"], 100 * rows.iou_B)
                gap = an.paired_interval(100 * rows.iou_O, 100 * rows[f"iou_T {s}"])
                gains[f"{b}/{s}"] = {"T-B": gain["mean"], "T-B_low": gain["low"], "T-B_high": gain["high"],
                                     "O-T": gap["mean"]}
                lines.append(f"- **{b}, {s}**: T - B = {gain['mean']:+.2f} points of mean IoU "
                             f"(95% interval {gain['low']:+.2f} to {gain['high']:+.2f}, {gain['n']} trajectories): "
                             f"T is {an.direction(gain)} B. O - T = {gap['mean']:.2f}.")
        display(Markdown(
            f"The paper reports T above B for PerSAM-F on every dataset (e.g. FSS-1000: T - B = {paper_t - paper_b:+.2f}, "
            f"O - T = {paper_o - paper_t:.2f} class-wise mIoU). Measured here (eta = {eta:g}, T = {steps}):\\n\\n" + "\\n".join(lines)))
        """),
    md("""
        ## Every episode

        Each point is one trajectory: its baseline IoU against the IoU after refinement and selection.
        Points above the diagonal gained, below it lost.
        """),
    code("""\
        figures.save(viz.scatter_figure(episodes, selectors), "scatter")
        """),
    md("""
        ## Where the selector picks wrong

        The trajectories where the first selector's pick falls furthest below the oracle's candidate
        (masks read from the table; ground truth dashed).
        """),
    code("""\
        cases = ex.miss_cases(lab, table[table.baseline == available[0]], selectors[0], n_misses, n_episodes)
        figures.save(viz.misses_figure(cases), "misses")
        """),
    headline("""{
            "miou": {f"{r.baseline}/{r.variant}{'/' + r.selector if r.selector else ''}": r.miou for r in summary.itertuples()},
            "mean_iou": {f"{r.baseline}/{r.variant}{'/' + r.selector if r.selector else ''}": r.mean_iou for r in summary.itertuples()},
            "paired_mean_iou_gains": gains,
            "failed_trajectories": int(len(an.failures(table))),
        }"""),
]

# ---------------------------------------------------------------- 05 drift vs noise

DRIFT = [
    opening("05_drift_vs_noise", "05 · Drift or noise: which term does the work?", """
        An ablation the paper does not have. With the paper's constants the noise term is hundreds of
        times larger than the largest drift (see 00_theory), so the question is whether the gain comes
        from the decoder's gradient at all. Four flows with the same seeds: drift only (gamma = 0), noise
        only (the gradient zeroed), both (the method), and neither (a control: nothing moves, so every
        candidate equals the baseline's)."""),
    parameters("""\
        eta = None  # None: 1e-3 for objects, 1e-4 for parts
        gamma = 0.1
        selector = "masked-image"
        """),
    setup("05_drift_vs_noise", """\
        eta = ex.DEFAULT_ETA[lab.kind] if eta is None else eta
        settings.update(eta=eta, gamma=gamma, selector=selector)
        table = lab.sweep(ex.Sweep(baselines=available, etas=[eta], gammas=[0.0, gamma], drifts=[True, False],
                                   seeds=seeds, episodes=n_episodes, steps=steps))
        table = table.assign(regime=an.regimes(table))
        order = ["both", "drift only", "noise only", "neither"]
        summary = an.over_seeds(an.bto(table, [selector], by=["baseline", "regime", "seed"]),
                                ["baseline", "regime", "variant", "selector"])
        """),
    md("## B / T / O under each flow"),
    code("""\
        ordered = summary.sort_values("regime", key=lambda r: r.map(order.index), kind="stable")
        figures.save(viz.bto_figure(ordered, labels=an.METRIC_LABELS, by="regime", panel="baseline"), "regimes")
        per_step = an.step_metrics(table, by=["baseline", "regime", "seed"])
        figures.save(viz.metric_vs_step_figure(per_step, hue="regime", labels=an.METRIC_LABELS), "regime_steps")
        """),
    md("## How large is each term?"),
    code("""\
        norms = an.step_norms(table, by=["baseline", "regime"])
        figures.save(viz.norms_figure(norms[norms.regime == "both"], hue="baseline"), "norms")
        both = norms[norms.regime == "both"]
        ratio = float((both.noise_norm / both.drift_norm).mean())
        display(Markdown(f"In the full flow the noise term's L2 norm is on average {ratio:.0f} times the drift term's "
                         f"(eta = {eta:g}, gamma = {gamma:g}, clip = 0.1). The noise norm is the same for every baseline: "
                         f"the same seeds draw the same noise, of norm sqrt(2 eta gamma) times the root of the embedding size."))
        """),
    code("""\
        wide = an.bto_wide(summary, "mean_iou", by=["baseline", "regime"]).set_index(["baseline", "regime"])
        episodes = an.per_episode(table.drop(columns="regime"), [selector]).assign(
            regime=lambda f: an.regimes(f))
        gains = {}
        lines = []
        for b in available:
            for r in order:
                rows = episodes[(episodes.baseline == b) & (episodes.regime == r)]
                gain = an.paired_interval(100 * rows[f"iou_T {selector}"], 100 * rows.iou_B)
                gains[f"{b}/{r}"] = {"T-B": gain["mean"], "low": gain["low"], "high": gain["high"],
                                     "O-B": float(100 * (rows.iou_O - rows.iou_B).mean())}
                lines.append(f"- {b}, **{r}**: T - B = {gain['mean']:+.2f} (95% interval {gain['low']:+.2f} to "
                             f"{gain['high']:+.2f}: T is {an.direction(gain)} B); O - B = {gains[f'{b}/{r}']['O-B']:.2f}.")
            full, noise = gains[f"{b}/both"], gains[f"{b}/noise only"]
            if abs(full["O-B"]) > 1e-9:
                lines.append(f"  Noise alone reaches {100 * noise['O-B'] / full['O-B']:.0f}% of the full flow's oracle gain "
                             f"for {b}; drift alone {100 * gains[f'{b}/drift only']['O-B'] / full['O-B']:.0f}%.")
        display(Markdown(f"Mean per-episode IoU, points ({selector} selector):\\n\\n" + "\\n".join(lines)))
        """),
    headline("""{"gains": gains, "noise_to_drift_norm_ratio": ratio,
              "mean_iou": {f"{r.baseline}/{r.regime}/{r.variant}": r.mean_iou for r in summary.itertuples()},
              "miou": {f"{r.baseline}/{r.regime}/{r.variant}": r.miou for r in summary.itertuples()}}"""),
]

# ---------------------------------------------------------------- 06 main results

MAIN = [
    opening("06_main_results", "06 · Main results", """
        The results table in the paper's format: B / T / O per task, dataset and baseline. Two metrics,
        never mixed: the class-wise mIoU of the few-shot protocol (summed intersections and unions per
        class, averaged over classes) and the mean per-episode IoU; the release's per-episode FB mIoU is
        listed too. With `backend="tiny"` the tasks are ShapeWorld objects (semantic) and parts; with
        `backend="sam"` the real benchmarks under `data_root/<benchmark>`."""),
    parameters("""\
        benchmarks = ["fss", "coco", "lvis", "paco", "pascal_part", "dis5k"]
        selector = "masked-image"
        """),
    setup("06_main_results", """\
        import pandas as pd

        if backend == "tiny":
            tasks = {"ShapeWorld objects": ex.Setup(backend=backend, checkpoint=checkpoint, kind="object", device=device),
                     "ShapeWorld parts": ex.Setup(backend=backend, checkpoint=checkpoint, kind="part", device=device)}
        elif data_root is None:
            raise ValueError("backend 'sam' needs data_root: a folder with one subfolder per benchmark (data_root/fss, ...)")
        else:
            tasks = {name: ex.Setup(backend=backend, checkpoint=checkpoint, model_type=model_type,
                                    dinov2_checkpoint=dinov2_checkpoint, dataset=name, data_root=f"{data_root}/{name}",
                                    device=device) for name in benchmarks}
        settings.update(selector=selector, tasks=list(tasks))
        """),
    code("""\
        results = []
        for task, task_setup in tasks.items():
            task_lab = ex.Lab(task_setup, cache_dir)
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
        """),
    md("## The table"),
    code("""\
        for m in ("miou", "mean_iou", "episode_fb_miou"):
            shown = results[["task", "dataset", "baseline", f"B_{m}", f"T_{m}", f"O_{m}", "episodes", "failed"]]
            shown = shown.rename(columns={f"{v}_{m}": v for v in "BTO"})
            display(Markdown(f"**{an.METRIC_LABELS[m]}** (B = baseline, T = top-1 with {selector}, O = oracle; "
                             f"mean over {len(seeds)} seed(s), T = {steps})\\n\\n" + an.markdown_table(shown)))
        paper = pd.DataFrame([{"dataset": d, "baseline": b, "B": v[0], "T": v[1], "O": v[2]} for (b, d), v in an.PAPER_BTO.items()])
        display(Markdown("The paper's 1-shot class-wise mIoU %, for reference (real benchmarks, official SAM):\\n\\n"
                         + an.markdown_table(paper)))
        figures.save(viz.main_results_figure(results, labels=an.METRIC_LABELS), "main_results")
        """),
    md("## Measured against the paper's claims"),
    code("""\
        paper_up = int((paper["T"] > paper["B"]).sum())
        up = {m: int((results[f"T_{m}"] > results[f"B_{m}"]).sum()) for m in ("miou", "mean_iou")}
        above = int((results["O_miou"] >= results["T_miou"]).sum())
        display(Markdown(
            f"In the paper T exceeds B in {paper_up} of {len(paper)} rows. Here T exceeds B in {up['miou']} of {len(results)} "
            f"rows by class-wise mIoU and in {up['mean_iou']} by mean IoU; O is at least T in {above} of {len(results)}. "
            f"Largest class-wise T - B here: {(results.T_miou - results.B_miou).max():+.2f} points "
            f"(paper: {(paper['T'] - paper['B']).max():+.2f})."))
        """),
    headline("""{
            "rows": {f"{r['dataset']}/{r['baseline']}": {k: v for k, v in r.items() if k not in ("dataset", "baseline", "task")}
                     for r in results.to_dict("records")},
            "rows_with_T_above_B": up, "paper_rows_with_T_above_B": paper_up,
        }"""),
]

NOTEBOOKS = {
    "00_theory": THEORY,
    "01_walkthrough": WALKTHROUGH,
    "02_eta_sensitivity": ETA,
    "03_optimal_step_histograms": OPTIMAL,
    "04_oracle_vs_top1": ORACLE,
    "05_drift_vs_noise": DRIFT,
    "06_main_results": MAIN,
}


def build(out_dir: Path = HERE) -> list:
    paths = []
    for name, cells in NOTEBOOKS.items():
        notebook = nbformat.v4.new_notebook(cells=cells)
        for index, cell in enumerate(notebook.cells):
            cell.id = f"{name[:2]}-{index:02d}"  # stable ids: a rebuild changes only what changed
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        nbformat.validate(notebook)
        path = out_dir / f"{name}.ipynb"
        nbformat.write(notebook, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build():
        print(p.relative_to(HERE.parent))
