import numpy as np
import pytest
import torch

from prmagic_core.baselines import PerSAM, PerSAMF
from prmagic_core.data import shapeworld
from prmagic_core.flow import FlowConfig, d_phi
from prmagic_core.models import decoding
from prmagic_core.models.encoding import Encoder
from prmagic_core.refine import refine


@pytest.fixture(scope="module")
def episode():
    return shapeworld.episodes(1, seed=3)[0]


@pytest.fixture(scope="module")
def prompter(random_tiny, episode):
    return PerSAMF(train_iters=20).prepare(Encoder(random_tiny), episode.support_images, episode.support_masks,
                                           episode.query_image)


class Recording:
    """Wraps a prompter and records the embeddings it is given."""

    def __init__(self, inner):
        self.inner, self.query = inner, inner.query
        self.decode_uses_similarity = inner.decode_uses_similarity
        self.similarity_inputs, self.decode_inputs = [], []

    def similarity(self, embedding):
        self.similarity_inputs.append(embedding.detach().clone())
        return self.inner.similarity(embedding)

    def sample_prompts(self, similarity, generator):
        return self.inner.sample_prompts(similarity, generator)

    def decode(self, embedding, prompts, similarity):
        self.decode_inputs.append(embedding.detach().clone())
        return self.inner.decode(embedding, prompts, similarity)


def test_drift_only_step_moves_the_embedding_by_eta_times_gradient(prompter):
    rec = Recording(prompter)
    traj = refine(rec, steps=1, flow=FlowConfig(eta=1e-2, gamma=0.0, clip=None))
    z0 = prompter.query.embedding
    moved = rec.similarity_inputs[1]
    assert torch.equal(moved, z0 + 1e-2 * traj.steps[0].gradient)
    assert traj.steps[0].noise_norm == 0.0


def test_trajectory_shape_and_records(prompter):
    traj = refine(prompter, steps=3, flow=FlowConfig(eta=1e-2))
    assert len(traj.steps) == 4 and len(traj.candidates) == 4
    h, w = prompter.query.original_size
    for t, step in enumerate(traj.steps):
        assert step.mask.shape == (h, w) and step.mask.dtype == bool
        assert step.similarity.shape == (h, w)
        assert step.logits.shape == (128, 128)
        if t < 3:
            assert step.gradient.shape == prompter.query.embedding.shape
            assert step.drift_norm > 0 and step.noise_norm > 0 and np.isfinite(step.d_phi)
        else:  # the last candidate: no step after it, but its own d_phi (on z0)
            assert step.gradient is None and step.drift_norm is None and np.isfinite(step.d_phi)


def test_candidate_zero_is_the_baselines_own_mask(prompter):
    traj = refine(prompter, steps=2, flow=FlowConfig(eta=1e-2), generator=torch.Generator().manual_seed(4))
    z0 = prompter.query.embedding
    similarity = prompter.similarity(z0)
    mask, *_ = prompter.decode(z0, traj.steps[0].prompts, similarity)
    np.testing.assert_array_equal(traj.steps[0].mask, mask)
    assert torch.equal(similarity, traj.steps[0].similarity)


def test_no_flow_gives_identical_candidates(prompter):
    traj = refine(prompter, steps=4, flow=FlowConfig(eta=0.0, gamma=0.0))
    for step in traj.steps[1:]:
        np.testing.assert_array_equal(step.mask, traj.steps[0].mask)
        np.testing.assert_array_equal(step.prompts.coords, traj.steps[0].prompts.coords)


def test_resampling_only_moves_nothing_but_the_draw(prompter):
    # eta = gamma = 0: the embedding never moves, so every similarity map is z0's; with fixed
    # resampling the candidates are identical, with fresh ones only the prompt draws change
    for resampling in ("fixed", "fresh"):
        traj = refine(prompter, steps=3, flow=FlowConfig(eta=0.0, gamma=0.0), resampling=resampling)
        for step in traj.steps[1:]:
            assert torch.equal(step.similarity, traj.steps[0].similarity) and step.drift_norm in (0.0, None)
            if resampling == "fixed":
                np.testing.assert_array_equal(step.mask, traj.steps[0].mask)


def test_relative_step_moves_each_step_by_a_fraction_of_the_embeddings_norm(prompter):
    traj = refine(prompter, steps=2, flow=FlowConfig(gamma=0.0, step="relative", step_size=0.02, direction="random"))
    norm = float(prompter.query.embedding.norm())
    assert [s.drift_norm for s in traj.steps[:-1]] == pytest.approx([0.02 * norm] * 2, rel=1e-5)


@pytest.mark.parametrize("step, size", [("backtrack", 0.1), ("grow", 10.0)])
def test_looking_ahead_steps_only_take_moves_that_raise_d_phi(prompter, step, size):
    rec = Recording(prompter)
    traj = refine(rec, steps=4, flow=FlowConfig(gamma=0.0, step=step, step_size=size))
    pairs = list(zip(traj.steps[:-1], traj.steps[1:]))
    moved = [now.prompts.fingerprint() != after.prompts.fingerprint() for now, after in pairs]
    assert all(now.drift_norm > 0 and after.d_phi > now.d_phi for (now, after), m in zip(pairs, moved) if m)
    if step == "backtrack":  # a step it does not accept is not taken
        assert all(now.drift_norm == 0 for (now, _), m in zip(pairs, moved) if not m)
    assert len(rec.similarity_inputs) > 4 + 1  # trial steps were looked at (the rules: tests/test_flow.py)
    with pytest.raises(ValueError, match="resampling='fixed'"):
        refine(prompter, steps=1, flow=FlowConfig(gamma=0.0, step=step, step_size=size), resampling="fresh")


@pytest.mark.parametrize("grad_at", ["z0", "zt"])
def test_candidates_are_always_decoded_from_the_original_embedding(prompter, grad_at):
    rec = Recording(prompter)
    traj = refine(rec, steps=3, flow=FlowConfig(eta=0.5, gamma=0.5, grad_at=grad_at))
    z0 = prompter.query.embedding
    # refined embeddings reach the similarity ...
    assert any(not torch.equal(z, z0) for z in rec.similarity_inputs[1:])
    # ... and each candidate equals a fresh decode of its prompts on z0
    for step in traj.steps:
        mask, *_ = prompter.decode(z0, step.prompts, step.similarity)
        np.testing.assert_array_equal(step.mask, mask)
    if grad_at == "z0":
        assert all(torch.equal(z, z0) for z in rec.decode_inputs)
    else:
        assert any(not torch.equal(z, z0) for z in rec.decode_inputs)


def test_shared_memo_gives_the_same_trajectories_with_fewer_decodes(prompter):
    from prmagic_core.refine import DecodeMemo

    settings = [FlowConfig(eta=eta) for eta in (1.0, 1e-1, 1e-3)]
    alone = [refine(prompter, 3, cfg, torch.Generator().manual_seed(0)) for cfg in settings]
    memo = DecodeMemo(prompter)
    shared = [refine(prompter, 3, cfg, torch.Generator().manual_seed(0), memo=memo) for cfg in settings]
    for a, b in zip(alone, shared):
        for x, y in zip(a.steps, b.steps):
            np.testing.assert_array_equal(x.mask, y.mask)
            np.testing.assert_array_equal(x.prompts.coords, y.prompts.coords)
            assert (x.gradient is None and y.gradient is None) or torch.equal(x.gradient, y.gradient)
    distinct = {(s.prompts.coords.tobytes(), s.prompts.labels.tobytes()) for t in shared for s in t.steps}
    assert memo.calls == len(distinct) < sum(len(t.steps) for t in shared)
    with pytest.raises(ValueError, match="another prompter"):
        refine(Recording(prompter), 1, memo=memo)


def test_same_seed_same_trajectory_other_seed_other_noise(prompter):
    runs = [refine(prompter, 2, FlowConfig(eta=0.1), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0].steps[1].similarity, runs[1].steps[1].similarity)
    assert not torch.equal(runs[0].steps[1].similarity, runs[2].steps[1].similarity)


def test_gradient_of_d_phi_matches_finite_differences(random_tiny, prompter):
    z0 = prompter.query.embedding
    prompts = decoding.Prompts(np.array([[50.0, 60.0], [70.0, 40.0]]), np.array([1, 0]))

    def value(z):
        return d_phi(decoding.decode(random_tiny, z, prompter.query, prompts).best(), "sum")

    z = z0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(value(z), z)
    direction = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()
    h = 1e-2
    with torch.no_grad():
        numeric = (value(z0 + h * direction) - value(z0 - h * direction)) / (2 * h)
    analytic = float((grad * direction).sum())
    assert abs(numeric - analytic) <= 0.05 * abs(analytic) + 1e-2


def test_persam_runs_through_the_loop(random_tiny, episode):
    prompter = PerSAM().prepare(Encoder(random_tiny), episode.support_images, episode.support_masks,
                                episode.query_image)
    traj = refine(prompter, steps=2, flow=FlowConfig(eta=1e-2))
    assert len(traj.candidates) == 3
    assert list(traj.steps[0].prompts.labels) == [1, 0]


def test_bad_loop_arguments(prompter):
    with pytest.raises(ValueError, match="steps"):
        refine(prompter, steps=-1)
    with pytest.raises(ValueError, match="resampling"):
        refine(prompter, steps=1, resampling="sometimes")


def test_memo_key_covers_what_a_decode_depends_on():
    from prmagic_core.baselines.matcher.prompter import MatcherPrompts

    coords, labels = np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones(2)
    plain = decoding.Prompts(coords, labels)
    one = MatcherPrompts(coords, labels, subsets=(np.array([0, 1]),))
    other = MatcherPrompts(coords, labels, subsets=(np.array([0]),))
    boxed = MatcherPrompts(coords, labels, subsets=(np.array([0, 1]),), box=np.array([0.0, 0, 5, 5]))
    assert len({plain.fingerprint(), one.fingerprint(), other.fingerprint(), boxed.fingerprint()}) == 4
    assert one.fingerprint() == MatcherPrompts(coords, labels, subsets=(np.array([0, 1]),)).fingerprint()


def test_episode_timings_are_non_negative_and_split(random_tiny, episode):
    from prmagic_core.pipeline import run_episode

    result = run_episode(PerSAMF(train_iters=5), Encoder(random_tiny), episode, steps=1)
    assert set(result.seconds) >= {"prepare", "refine", "select"}
    assert all(v >= 0 for v in result.seconds.values())


def test_last_candidate_is_decoded_without_a_gradient_and_keeps_its_own_d_phi(prompter):
    from prmagic_core.refine import DecodeMemo, _gradient

    memo = DecodeMemo(prompter)
    last = refine(prompter, 2, FlowConfig(eta=1.0), torch.Generator().manual_seed(1), memo=memo).steps[-1]
    mask, logits, d, grad, _ = _gradient(prompter, prompter.query.embedding, last.prompts, last.similarity, "sum")
    np.testing.assert_array_equal(last.mask, mask)
    assert torch.equal(last.logits, logits) and last.d_phi == d and last.gradient is None
    calls = memo.calls
    assert torch.equal(memo(last.prompts, last.similarity, "sum")[3], grad)  # asked for, the gradient is computed
    assert memo.calls == calls + 1
