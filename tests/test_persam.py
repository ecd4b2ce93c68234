import numpy as np
import pytest
import torch

from prmagic_core.baselines.persam import (
    BAND_QUANTILES,
    PerSAM,
    PerSAMF,
    attention_bias,
    band_prompts,
    target_guidance,
    upper_quantiles,
)
from prmagic_core.baselines.base import EmptySupportWarning
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


def test_band_points_lie_in_their_nested_bands_and_never_repeat():
    s = torch.rand(300, 400, generator=torch.Generator().manual_seed(4))
    upper, lower = 0.9999, 0.999  # 12 and 120 pixels: both bands have enough to draw from
    q_upper, q_lower = torch.quantile(s.flatten(), upper), torch.quantile(s.flatten(), lower)
    prompts = band_prompts(s, 5, torch.Generator().manual_seed(0), quantiles=(upper, lower))
    assert len(prompts.coords) == 5
    values = s[prompts.coords[:, 1].astype(int), prompts.coords[:, 0].astype(int)]
    assert values[0] == s.max()
    assert (values[1:3] >= q_upper).all() and (values[3:] >= q_lower).all()
    assert len({tuple(c) for c in prompts.coords}) == 5  # the top-1 pixel and band-1 picks never come back


@pytest.mark.parametrize("quantiles", [BAND_QUANTILES, (0.99, 0.90), (0.5, 0.0, 1.0)])
def test_upper_quantiles_equal_torch_quantile_bit_for_bit(quantiles):
    generator = torch.Generator().manual_seed(8)
    for trial in range(60):
        n = 512 * 512 if trial == 0 else int(torch.randint(2, 300_000, (1,), generator=generator))
        values = torch.randn(n, generator=generator)
        if trial % 3 == 1:
            values = (values * 4).round() / 4  # ties at the ranks
        if trial % 3 == 2:
            values = values.exp() * 1e3  # wide gaps: interpolation weights matter
        expected = torch.quantile(values, torch.tensor(quantiles))
        assert torch.equal(upper_quantiles(values, quantiles), expected), (n, quantiles)


def test_upper_quantiles_follow_torch_quantile_on_nan():
    values = torch.arange(10.0)
    values[3] = float("nan")
    assert upper_quantiles(values, BAND_QUANTILES).isnan().all()


def test_a_band_of_the_top1_pixel_alone_gives_no_extra_point():
    s = torch.rand(20, 30, generator=torch.Generator().manual_seed(5))
    s[5, 7] = 2.0  # on 600 pixels both quantiles lie above the second largest value: the argmax alone
    prompts = band_prompts(s, 5, torch.Generator().manual_seed(0), quantiles=(0.99995, 0.9999))
    np.testing.assert_array_equal(prompts.coords, [[7, 5]])


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
    mask, logits, evidence = prompter.decode(z, prompts, s)
    assert mask.shape == episode.query_image.shape[:2] and mask.dtype == bool
    logits.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert evidence.mask.shape == mask.shape and 0 <= evidence.iou_prediction


def test_empty_support_mask_is_refused_by_name_under_principled(encoder, episode):
    masks = (np.zeros_like(episode.support_masks[0]),)
    with pytest.raises(ValueError, match="support mask 0 is empty"):
        PerSAM(settings="principled").prepare(encoder, episode.support_images, masks, episode.query_image)


def test_empty_support_mask_falls_back_to_all_features_under_release(encoder, episode):
    masks = (np.zeros_like(episode.support_masks[0]),)
    with pytest.warns(EmptySupportWarning, match="support mask 0 is empty.*all its features"):
        prompter = PerSAMF(train_iters=2).prepare(encoder, episode.support_images, masks, episode.query_image)
    features = encoder.encode(episode.support_images[0]).embedding[0].flatten(1).T
    expected = (features.max(0).values + features.mean(0)) / 2
    torch.testing.assert_close(prompter.target.embedding, expected)


def test_quantile_bands_at_512_px_hold_what_the_releases_hold_at_518():
    """The release evaluates at 518 x 518: its (nested) bands S >= q hold 518^2 (1 - q) pixels, about
    3 and 27. A 512-px ShapeWorld episode through SAM-Tiny (resized to its 128-px input) must come within 2x."""
    from prmagic_core.models.loading import load_sam

    episode = episodes(1, seed=0, size=512)[0]
    prompter = prepare(PerSAM(), Encoder(load_sam("tiny")), episode)
    similarity = prompter.similarity(prompter.query.embedding)
    assert similarity.shape == (512, 512)
    upper, lower = BAND_QUANTILES
    flat = similarity.detach().flatten().float()
    released = {"band 1": 518**2 * (1 - upper), "band 2": 518**2 * (1 - lower)}
    found = {band: int((flat >= torch.quantile(flat, q)).sum()) for band, q in (("band 1", upper), ("band 2", lower))}
    for band, pixels in found.items():
        assert released[band] / 2 <= pixels <= 2 * released[band], (band, pixels, released[band])
