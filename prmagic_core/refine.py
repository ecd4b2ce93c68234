"""The PR-MaGIC loop: move the query embedding by the decoder's gradient flow, re-sample
prompts from the moved embedding, decode every candidate from the ORIGINAL embedding.

    z0 = E(I_q);  P_0 = prompts(sim(z0))
    for t = 0..T:  m_t = decode(z0, P_t)                          (m_0 is the baseline's own mask)
                   z_{t+1} = z0 + delta_{t+1},  delta by one flow step on grad d_phi
                   P_{t+1} = prompts(sim(z_{t+1}))
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .baselines.base import Prompter
from .flow import FlowConfig, d_phi, flow_step, make_policy
from .models.decoding import Prompts

RESAMPLING = ("fixed", "fresh")


@dataclass
class Step:
    """One candidate of the trajectory and the flow step taken after it (None after the last).

    ``d_phi`` is the discriminator's value that drove the step (on z0 with ``grad_at="z0"``, so it
    is this candidate's; on z_t with ``"zt"``); the last candidate, which drives no step, has its own.
    """

    mask: np.ndarray
    logits: torch.Tensor
    prompts: Prompts
    similarity: torch.Tensor
    d_phi: float | None = None
    gradient: torch.Tensor | None = None
    drift_norm: float | None = None
    noise_norm: float | None = None
    evidence: object = None  # what the decode handed the selector (a SelectorEvidence), if anything


@dataclass
class Trajectory:
    steps: list = field(default_factory=list)
    config: FlowConfig = field(default_factory=FlowConfig)

    @property
    def candidates(self) -> list:
        return [s.mask for s in self.steps]

    @property
    def evidence(self) -> list:
        return [s.evidence for s in self.steps]


def _decode(prompter: Prompter, z: torch.Tensor, prompts: Prompts, similarity) -> tuple:
    """(mask, logits, evidence or None): a decode may return the selector's evidence third."""
    mask, logits, *rest = prompter.decode(z, prompts, similarity)
    return mask, logits, (rest[0] if rest else None)


def _gradient(prompter: Prompter, z: torch.Tensor, prompts: Prompts, similarity, reduction: str):
    """(mask, logits, d_phi value, grad of d_phi w.r.t. z, evidence) from one differentiable decode at z."""
    z = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        mask, logits, evidence = _decode(prompter, z, prompts, similarity)
        d = d_phi(logits, reduction)
        (grad,) = torch.autograd.grad(d, z)
    return mask, logits.detach(), float(d.detach()), grad, evidence


class DecodeMemo:
    """Differentiable decodes on z0, keyed by what they depend on: the prompts (and the
    similarity map, for prompters whose decode uses it) and the reduction.

    With ``grad_at="z0"`` the candidate and the gradient are functions of those alone, so
    steps whose prompts did not move, and sweeps over eta, gamma or seeds of one prepared
    episode, share them instead of recomputing. Results are identical either way.
    """

    def __init__(self, prompter: Prompter):
        self.prompter = prompter
        self.z0 = prompter.query.embedding.detach()
        self.calls = 0
        self._entries = {}

    def _key(self, prompts: Prompts, similarity: torch.Tensor, reduction: str):
        key = (prompts.fingerprint(), reduction)
        if self.prompter.decode_uses_similarity:
            key += (similarity.detach().cpu().numpy().tobytes(),)
        return key

    def __call__(self, prompts: Prompts, similarity: torch.Tensor, reduction: str, gradient: bool = True):
        """(mask, logits, d_phi, gradient, evidence) on z0; without ``gradient`` the gradient may be None
        (the decode then builds no autograd graph, a third of its cost)."""
        key = self._key(prompts, similarity, reduction)
        entry = self._entries.get(key)
        if entry is None or (gradient and entry[3] is None):
            self.calls += 1
            if gradient:
                entry = _gradient(self.prompter, self.z0, prompts, similarity, reduction)
            else:
                with torch.no_grad():
                    mask, logits, evidence = _decode(self.prompter, self.z0, prompts, similarity)
                    entry = (mask, logits.detach(), float(d_phi(logits, reduction)), None, evidence)
            self._entries[key] = entry
        return entry


def refine(prompter: Prompter, steps: int = 5, flow: FlowConfig = FlowConfig(),
           generator: torch.Generator | None = None, resampling: str = "fixed",
           memo: DecodeMemo | None = None) -> Trajectory:
    """Run T = ``steps`` refinement steps; returns T + 1 candidates and everything behind them.

    ``resampling="fixed"`` draws each step's random prompt choices from the same seed, so the
    prompts change only where the similarity map changed (eta = gamma = 0 gives T + 1
    identical candidates); ``"fresh"`` draws new random choices at every step, as the release does.
    ``memo`` shares the decodes on z0 between runs on the same prompter (see :class:`DecodeMemo`).
    The step-size policies that look ahead (``flow.step`` "backtrack", "grow") need ``"fixed"``
    resampling and ``grad_at="z0"``: a trial step must give the prompts the real step would, and
    its d_phi must be comparable with the current one.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    memo = memo if memo is not None else DecodeMemo(prompter)
    if memo.prompter is not prompter:
        raise ValueError("the DecodeMemo belongs to another prompter")
    z0 = prompter.query.embedding.detach()
    policy = make_policy(flow, float(z0.norm()))
    if policy.probes and (resampling != "fixed" or flow.grad_at != "z0"):
        raise ValueError(f"step {flow.step!r} needs resampling='fixed' and grad_at='z0', "
                         f"got resampling={resampling!r}, grad_at={flow.grad_at!r}")
    prompt_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    prompt_rng = torch.Generator().manual_seed(prompt_seed)

    def sample(similarity):
        if resampling == "fixed":
            prompt_rng.manual_seed(prompt_seed)
        return prompter.sample_prompts(similarity, prompt_rng)

    def probe(trial_delta):
        """Whether ``trial_delta`` would move the prompts, and the d_phi of the candidate it would give."""
        with torch.no_grad():
            trial_similarity = prompter.similarity(z0 + trial_delta)
        trial = sample(trial_similarity)
        _, _, d_next, _, _ = memo(trial, trial_similarity, flow.reduction)
        return trial.fingerprint() != prompts.fingerprint(), d_next

    delta = torch.zeros_like(z0)
    similarity = prompter.similarity(z0)
    prompts = sample(similarity)
    trajectory = Trajectory(config=flow)
    for t in range(steps + 1):
        # The last candidate takes no step, and with grad_at="zt" the step's gradient is taken at z_t
        # below: neither needs a gradient at z0.
        mask, logits, d, grad, evidence = memo(prompts, similarity, flow.reduction,
                                               gradient=flow.grad_at == "z0" and t < steps)
        if t == steps:
            trajectory.steps.append(Step(mask, logits, prompts, similarity.detach(), d, evidence=evidence))
            break
        if flow.grad_at == "zt":
            _, _, d, grad, _ = _gradient(prompter, z0 + delta, prompts, similarity, flow.reduction)
        delta, norms = flow_step(delta, grad, d, flow, generator, policy, probe)
        trajectory.steps.append(
            Step(mask, logits.detach(), prompts, similarity.detach(), d, grad.detach(), norms.drift, norms.noise,
                 evidence)
        )
        with torch.no_grad():
            similarity = prompter.similarity(z0 + delta)
        prompts = sample(similarity)
    return trajectory
