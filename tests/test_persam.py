import numpy as np
import pytest
import torch

from prmagic_core.baselines.persam import (
    BAND_QUANTILES,
    PerSAM,
    PerSAMF,
    attention_bias,
    band_pixels,
    band_prompts,
    target_guidance,
)
from prmagic_core.data.shapeworld import episodes
from prmagic_core.models import decoding
from prmagic_core.models.encoding import Encoder


@pytest.fixture(scope="module")
def episode():
    return episodes(2, seed=0)[0]


@pytest.fixture(scope="module")
def encoder(random_tiny):
    return Encoder(random_tiny)


def prepare(baseline, encoder, episode):
    return baseline.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)


@pytest.fixture(scope="module")
def persam(encoder, episode):
    return prepare(PerSAM(), encoder, episode)


@pytest.fixture(scope="module")
def persam_f(encoder, episode):
    return prepare(PerSAMF(train_iters=300), encoder, episode)


def test_similarity_has_query_shape_and_prompts_sit_at_its_extremes(persam, episode):
    s = persam.similarity(persam.query.embedding)
    assert s.shape == episode.query_image.shape[:2]
    prompts = persam.sample_prompts(s, torch.Generator().manual_seed(0))
    (x_pos, y_pos), (x_neg, y_neg) = prompts.coords.astype(int)
    assert s[y_pos, x_pos] == s.max() and s[y_neg, x_neg] == s.min()
    np.testing.assert_array_equal(prompts.labels, [1, 0])


def test_top1_point_lands_in_the_cell_that_matches_the_prototype(persam, episode):
    torch.manual_seed(1)
    embedding = torch.randn_like(persam.query.embedding)
    row, col = 11, 20
    embedding[0, :, row, col] = persam.target.embedding
    prompts = persam.sample_prompts(persam.similarity(embedding), torch.Generator())
    x, y = prompts.coords[0]
    cell = persam.query.side // persam.query.grid[0]  # SAM-Tiny at 128 px: 4 px per cell, no resize
    assert (int(y) // cell, int(x) // cell) == (row, col)


def test_released_point_order_swaps_only_the_extra_points():
    s = torch.rand(300, 400, generator=torch.Generator().manual_seed(3))  # large enough for both bands
    right = band_prompts(s, 5, torch.Generator().manual_seed(0))
    released = band_prompts(s, 5, torch.Generator().manual_seed(0), released_point_order=True)
    assert len(right.coords) == 5
    np.testing.assert_array_equal(released.coords[0], right.coords[0])
    np.testing.assert_array_equal(released.coords[1:], right.coords[1:, ::-1])


def test_band_points_lie_in_their_bands():
    s = torch.rand(300, 400, generator=torch.Generator().manual_seed(4))
    upper, lower = BAND_QUANTILES
    q_upper, q_lower = torch.quantile(s.flatten(), upper), torch.quantile(s.flatten(), lower)
    prompts = band_prompts(s, 5, torch.Generator().manual_seed(0))
    values = s[prompts.coords[:, 1].astype(int), prompts.coords[:, 0].astype(int)]
    assert values[0] == s.max()
    assert (values[1:3] >= q_upper).all()
    assert ((values[3:] >= q_lower) & (values[3:] < q_upper)).all()
    assert len(band_pixels(s, lower, upper)) > 2  # band 2 really was sampled, not exhausted


def test_persam_f_prompts_are_seeded_by_the_generator(persam_f):
    s = persam_f.similarity(persam_f.query.embedding)
    a = persam_f.sample_prompts(s, torch.Generator().manual_seed(7))
    b = persam_f.sample_prompts(s, torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(a.coords, b.coords)
    assert (a.labels == 1).all()


def test_persam_f_fine_tuning_lowers_its_loss(persam_f):
    assert len(persam_f.loss_history) == 300
    assert persam_f.loss_history[-1] < persam_f.loss_history[0]
    assert persam_f.mask_weights.shape == (3,)
    assert float(persam_f.mask_weights.sum()) == pytest.approx(1.0)


def test_guidance_is_active_inside_and_fully_removed_after(persam, random_tiny):
    query, z = persam.query, persam.query.embedding
    s = persam.similarity(z)
    prompts = persam.sample_prompts(s, torch.Generator())
    transformer = random_tiny.mask_decoder.transformer

    def stock():
        return decoding.decode(random_tiny, z, query, prompts, multimask=False).logits

    before = stock()
    with target_guidance(transformer, attention_bias(s, query), persam.target.embedding):
        guided = stock()
    after = stock()
    assert not torch.allclose(guided, before)
    assert torch.equal(after, before)

    with pytest.raises(RuntimeError, match="boom"):
        with target_guidance(transformer, attention_bias(s, query), persam.target.embedding):
            raise RuntimeError("boom")
    assert torch.equal(stock(), before)
    modules = [transformer, *transformer.layers, transformer.final_attn_token_to_image]
    assert not any(m._forward_pre_hooks for m in modules)
    assert not any("forward" in vars(block.cross_attn_token_to_image) for block in transformer.layers)


@pytest.mark.parametrize("prompter_name", ["persam", "persam_f"])
def test_decode_is_differentiable_wrt_the_embedding(prompter_name, request, episode):
    prompter = request.getfixturevalue(prompter_name)
    s = prompter.similarity(prompter.query.embedding)
    prompts = prompter.sample_prompts(s, torch.Generator().manual_seed(0))
    z = prompter.query.embedding.clone().requires_grad_(True)
    mask, logits, confidence = prompter.decode(z, prompts, s)
    assert mask.shape == episode.query_image.shape[:2] and mask.dtype == bool
    assert isinstance(confidence, float) and np.isfinite(confidence)
    logits.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_empty_support_mask_is_refused_by_name(encoder, episode):
    masks = (np.zeros_like(episode.support_masks[0]),)
    with pytest.raises(ValueError, match="support mask 0 is empty"):
        PerSAM().prepare(encoder, episode.support_images, masks, episode.query_image)
