"""Where one flow step pushes: what a step of a given L2 norm from z0 does to the similarity map,
the prompts and d_phi, along the decoder gradient, its sign, the foreground reduction's gradient,
or a random direction.

The refined embedding reaches the method only through the similarity map (prompts are re-sampled
from it; candidates are decoded from z0), so a step matters where it moves the map's top region,
where the prompts come from. Two d_phi changes are measured: with the prompts held fixed and the
decoder run on the moved embedding (what the gradient promises to first order), and of the next
candidate, decoded from z0 with the prompts the moved map gives (what the method can get).
"""
from __future__ import annotations

import numpy as np
import torch

from .flow import d_phi, unit_direction
from .masks import iou

# The direction arms of the direction test: (direction of flow.unit_direction, d_phi reduction whose gradient).
ARMS = {"gradient": ("gradient", "sum"), "sign": ("sign", "sum"), "foreground": ("gradient", "foreground"),
        "random": ("random", "sum")}


def top_region(similarity: torch.Tensor, fraction: float) -> np.ndarray:
    """The pixels of the map's top ``fraction`` (at least one): where the prompts are drawn from."""
    values = similarity.detach().float().cpu().numpy()
    k = max(1, int(round(fraction * values.size)))
    threshold = np.partition(values.ravel(), values.size - k)[values.size - k]
    return values >= threshold


def _peak(similarity: torch.Tensor) -> np.ndarray:
    flat = int(torch.argmax(similarity))
    return np.array(divmod(flat, similarity.shape[-1]), dtype=float)


def push(prompter, memo, truth: np.ndarray, norms, arms=tuple(ARMS), generator: torch.Generator | None = None,
         reduction: str = "sum", top_fraction: float = 0.01) -> list:
    """One row per (arm, norm): a single step of that norm from z0 along that arm's direction.

    ``memo``: the prompter's :class:`~prmagic_core.refine.DecodeMemo`. ``generator`` is seeded as
    ``refine`` seeds a trajectory, so the prompts at z0 are the trajectory's first ones; the random
    arm draws one direction per call, shared by every norm. ``truth``: the query mask, for the IoUs.
    Row columns: ``arm``, ``norm``, ``top_iou`` (IoU of the map's top region before and after),
    ``peak_shift`` (pixels the map's maximum moved), ``similarity_change`` (mean |S - S0|),
    ``d_phi_same_prompts`` (change of d_phi decoded on the moved embedding with the same prompts),
    ``prompts_moved``, ``d_phi_next`` (change of the next candidate's d_phi), ``iou_next`` (change of
    its IoU).
    """
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; expected some of {tuple(ARMS)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    prompt_seed = int(torch.randint(0, 2**62, (1,), generator=generator))  # as refine draws it

    def sample(similarity):
        return prompter.sample_prompts(similarity, torch.Generator().manual_seed(prompt_seed))

    z0 = prompter.query.embedding.detach()
    with torch.no_grad():
        s0 = prompter.similarity(z0)
    prompts0 = sample(s0)
    mask0, _, d0, _, _ = memo(prompts0, s0, reduction, gradient=False)
    iou0, top0, peak0 = iou(mask0, truth), top_region(s0, top_fraction), _peak(s0)
    rows = []
    for arm in arms:
        direction, arm_reduction = ARMS[arm]
        _, _, _, grad, _ = memo(prompts0, s0, arm_reduction)
        unit = unit_direction(grad, direction, generator)
        for norm in norms:
            z = z0 + float(norm) * unit
            with torch.no_grad():
                s = prompter.similarity(z)
                _, logits_same, *_ = prompter.decode(z, prompts0, s0)  # a decode may add selector evidence
            prompts = sample(s)
            mask, logits, _, _, _ = memo(prompts, s, reduction, gradient=False)
            rows.append({
                "arm": arm, "norm": float(norm), "top_iou": iou(top0, top_region(s, top_fraction)),
                "peak_shift": float(np.linalg.norm(_peak(s) - peak0)),
                "similarity_change": float((s - s0).abs().mean()),
                "d_phi_same_prompts": float(d_phi(logits_same, reduction)) - d0,
                "prompts_moved": int(prompts.fingerprint() != prompts0.fingerprint()),
                "d_phi_next": float(d_phi(logits, reduction)) - d0, "iou_next": iou(mask, truth) - iou0,
            })
    return rows
