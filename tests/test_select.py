import numpy as np
import pytest
import torch

from prmagic_core.data import shapeworld
from prmagic_core.models.encoding import Encoded, Encoder
from prmagic_core.select import oracle, select


@pytest.fixture(scope="module")
def episode():
    return shapeworld.episodes(1, seed=11)[0]


def _wrong_masks(truth):
    shifted = np.roll(truth, 40, axis=1)
    corner = np.zeros_like(truth)
    corner[:20, :20] = True
    return shifted, corner


@pytest.mark.parametrize("name", ["masked-image", "crop-pool", "pooled"])
def test_selector_picks_the_candidate_that_matches_the_support(random_tiny, episode, name):
    # query == support image: the candidate equal to the support mask represents the same object exactly
    image, truth = episode.support_images[0], episode.support_masks[0]
    shifted, corner = _wrong_masks(truth)
    encoder = Encoder(random_tiny)
    query = encoder.encode(image)
    chosen = select(name, [shifted, truth, corner], encoder, query, [image], [truth])
    assert chosen.index == 1
    assert chosen.scores[1] == pytest.approx(1.0, abs=1e-5)


def test_ties_go_to_the_earliest_step_and_duplicates_are_encoded_once(random_tiny, episode):
    image, truth = episode.query_image, episode.query_mask
    shifted, _ = _wrong_masks(truth)
    encoder = Encoder(random_tiny)
    query = encoder.encode(image)
    before = encoder.passes
    chosen = select("masked-image", [shifted, truth, truth, shifted, truth], encoder, query,
                    episode.support_images, episode.support_masks)
    # two distinct candidates + the support's masked image
    assert encoder.passes - before == 3
    assert chosen.scores[1] == chosen.scores[2] == chosen.scores[4]
    assert chosen.index in (0, 1)
    again = select("masked-image", [truth, truth], encoder, query, episode.support_images, episode.support_masks)
    assert again.index == 0 and encoder.passes - before == 3


def test_pooled_selector_needs_no_encoder_pass(random_tiny, episode):
    encoder = Encoder(random_tiny)
    query = encoder.encode(episode.query_image)
    encoder.encode_many(episode.support_images)
    before = encoder.passes
    select("pooled", [episode.query_mask, ~episode.query_mask], encoder, query,
           episode.support_images, episode.support_masks)
    assert encoder.passes == before


def test_pooled_selector_on_a_constructed_embedding():
    # grid 4x4, two regions with orthogonal features; the support object carries feature A
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    z = torch.zeros(1, 8, 4, 4)
    z[0, :, :, :2] = a[:, None, None]
    z[0, :, :, 2:] = b[:, None, None]
    image = np.zeros((16, 16, 3), np.uint8)
    query = Encoded(image, z, (16, 16), (16, 16), 16)
    left, right = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    left[:, :8], right[:, 8:] = True, True

    class FixedEncoder:
        passes = 0

        def encode_many(self, images):
            return [query for _ in images]

    chosen = select("pooled", [right, left], FixedEncoder(), query, [image], [left])
    assert chosen.index == 1 and chosen.scores[1] == pytest.approx(1.0) and chosen.scores[0] == pytest.approx(0.0)


def test_oracle_and_unknown_selector(random_tiny, episode):
    truth = episode.query_mask
    shifted, corner = _wrong_masks(truth)
    best = oracle([corner, shifted, truth, truth], truth)
    assert best.index == 2 and best.scores[2] == 1.0
    with pytest.raises(ValueError, match="selector must be one of"):
        select("random", [truth], Encoder(random_tiny), Encoder(random_tiny).encode(episode.query_image),
               episode.support_images, episode.support_masks)


def test_encoder_cache_is_bounded_and_counts(random_tiny):
    encoder = Encoder(random_tiny, cache_size=2, batch_size=2)
    images = [np.full((32, 48, 3), v, np.uint8) for v in (10, 20, 30)]
    first = encoder.encode_many(images + [images[0].copy()])
    assert encoder.passes == 3
    assert first[0] is first[3]
    assert first[0].original_size == (32, 48) and first[0].input_size == (85, 128)
    encoder.encode(images[2])
    encoder.encode(images[0])
    assert encoder.passes == 3  # the two most recently used are cached
    encoder.encode(images[1])
    assert encoder.passes == 4  # evicted by the bound


def _one_by_one(name, encoder, image, mask):
    """The selector's representation by its definition, one uncached encoder pass per call."""
    from prmagic_core.select import _crop, _masked_image, _pool

    if name == "masked-image":
        return _pool(encoder.encode(_masked_image(image, mask)), None)
    crop, crop_mask = _crop(image, mask)
    return _pool(encoder.encode(crop), crop_mask)


@pytest.mark.parametrize("name", ["masked-image", "crop-pool"])
def test_batched_cached_selection_equals_the_simple_path(random_tiny, episode, name):
    truth = episode.query_mask
    shifted, corner = _wrong_masks(truth)
    candidates = [truth, shifted, truth, corner, shifted]
    fast = Encoder(random_tiny, batch_size=8)
    chosen = select(name, candidates, fast, fast.encode(episode.query_image), episode.support_images,
                    episode.support_masks)
    assert fast.passes == 1 + 3 + 1  # query, three distinct candidates, the support

    simple = Encoder(random_tiny, cache_size=0, batch_size=1)
    support = _one_by_one(name, simple, episode.support_images[0], episode.support_masks[0])
    scores = [float(torch.dot(_one_by_one(name, simple, episode.query_image, m), support)) for m in candidates]
    np.testing.assert_allclose(chosen.scores, scores, rtol=0, atol=1e-5)
    assert chosen.index == int(np.argmax(scores))


# ---------------------------------------------------------------- the family (rules over signals)

from prmagic_core.select import FAMILY, apply, choose, fork_ranks  # noqa: E402


def _signals(**columns):
    k = len(next(iter(columns.values())))
    base = {"masked-image": np.zeros(k), "iou_prediction": np.zeros(k), "stability": np.zeros(k),
            "margin": np.zeros(k), "step": np.arange(k)}
    return {**base, **{key.replace("_image", "-image"): np.asarray(v, float) for key, v in columns.items()}}


def test_fork_ranks_break_ties_by_order():
    ranks = fork_ranks(_signals(masked_image=[0.5, 0.9, 0.9], iou_prediction=[3, 2, 1]))
    np.testing.assert_allclose(ranks[0], [0.0, 1.0, 0.5])  # the tie 0.9 / 0.9: the earlier ranks higher
    np.testing.assert_allclose(ranks[1], [1.0, 0.5, 0.0])


def test_release_rule_adds_confidence_and_margin():
    s = _signals(masked_image=[0.90, 0.91, 0.80], iou_prediction=[0.9, 0.5, 0.9], margin=[0.5, 0.5, 0.9])
    assert apply("masked-image", s).index == 1
    chosen = apply("masked-image-iou-margin", s)
    np.testing.assert_allclose(chosen.scores, [0.9 + 0.225 + 0.05, 0.91 + 0.125 + 0.05, 0.8 + 0.225 + 0.09])
    assert chosen.index == 0
    assert apply("masked-image", s, alpha_s=1.0).index == 0


def test_guarded_falls_back_when_the_pick_loses_similarity_or_margin():
    better = _signals(masked_image=[0.90, 0.95], margin=[0.5, 0.6])
    assert (apply("guarded", better).index, apply("guarded", better).fallback) == (1, False)
    worse_margin = _signals(masked_image=[0.90, 0.99], margin=[0.5, 0.4])
    chosen = apply("guarded", worse_margin)
    assert (chosen.index, chosen.fallback) == (0, True)
    assert apply("masked-image-iou-margin", worse_margin).index == 1


def test_rank_rules_and_their_fallback():
    # candidate 2 first on three criteria: consensus, rank-sum and median-rank agree on it
    s = _signals(masked_image=[0.1, 0.2, 0.3], iou_prediction=[0.1, 0.2, 0.3], margin=[0.1, 0.2, 0.3],
                 stability=[1.0, 0.5, 0.2])
    for name in ("rank-sum", "median-rank", "consensus"):
        assert apply(name, s).index == 2, name
    # candidate 1 wins the mean rank by one criterion only and loses to 0 on three: falls back
    s = _signals(masked_image=[0.0, 0.9, 0.5, 0.4, 0.3], iou_prediction=[0.9, 0.8, 0.1, 0.2, 0.3],
                 stability=[1.0, 0.9, 0.1, 0.2, 0.3], margin=[0.9, 0.8, 0.1, 0.2, 0.3])
    ranks = fork_ranks(s)
    assert int(np.argmax(ranks.mean(axis=0))) == 1 and int(np.sum(ranks[:, 1] >= ranks[:, 0])) == 1
    chosen = apply("rank-sum", s)
    assert (chosen.index, chosen.fallback) == (0, True)


def test_consensus_needs_three_votes_else_median_rank():
    s = _signals(masked_image=[0.1, 0.9, 0.2], iou_prediction=[0.1, 0.2, 0.9], margin=[0.9, 0.5, 0.1],
                 stability=[0.5, 0.9, 0.1])
    votes = np.bincount(np.argmax(fork_ranks(s), axis=1), minlength=3)
    assert votes.max() < 3
    assert apply("consensus", s).index == apply("median-rank", s).index


def test_own_rules_switch_only_past_delta():
    s = {"vote": np.array([0.90, 0.95, 0.92]), "step": np.arange(3)}
    assert apply("vote", s).index == 1
    chosen = apply("vote", s, delta=0.1)
    assert (chosen.index, chosen.fallback) == (0, True)


def test_references_and_bad_arguments():
    s = _signals(masked_image=[0.1, 0.2, 0.3])
    s["iou"] = np.array([0.2, 0.7, 0.4])
    assert apply("oracle", s).index == 1
    assert apply("fixed-step", s, step=2).index == 2 and apply("fixed-step", s, step=9).index == 2
    assert apply("random", s, seed=3).index == apply("random", s, seed=3).index
    assert {apply("random", s, seed=k).index for k in range(40)} == {0, 1, 2}
    with pytest.raises(ValueError, match="no constant"):
        apply("vote", {"vote": np.zeros(2)}, alpha_s=1.0)
    with pytest.raises(ValueError, match="needs the signal"):
        apply("vote", s)
    with pytest.raises(ValueError, match="selector must be one of"):
        apply("best", s)


def test_choose_on_a_live_trajectory_counts_the_passes_it_spends(random_tiny, episode):
    from prmagic_core.baselines import PerSAM
    from prmagic_core.flow import FlowConfig
    from prmagic_core.refine import refine

    encoder = Encoder(random_tiny)
    prompter = PerSAM().prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)
    trajectory = refine(prompter, steps=3, flow=FlowConfig(eta=0.5, gamma=0.5))
    assert all(s.evidence.iou_prediction is not None for s in trajectory.steps)
    for name in FAMILY:
        before = encoder.passes
        chosen = choose(name, trajectory, encoder, prompter.query, episode.support_images, episode.support_masks,
                        truth=episode.query_mask)
        assert 0 <= chosen.index < 4 and len(chosen.scores) == 4
        if name in ("masked-image", "crop-pool"):  # the first run of each re-encoding: nothing cached yet
            assert chosen.passes == encoder.passes - before > 0
            assert chosen.index == select(name, trajectory.candidates, encoder, prompter.query,
                                          episode.support_images, episode.support_masks).index
        if FAMILY[name].family == "ours":
            assert chosen.passes == 0 and encoder.passes == before
    with pytest.raises(ValueError, match="ground-truth"):
        choose("oracle", trajectory, encoder, prompter.query, episode.support_images, episode.support_masks)
