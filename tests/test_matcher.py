import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prmagic_core.baselines import make_baseline
from prmagic_core.baselines.matcher import LAUNCHER_PRESETS, PRESETS, Matcher, MatcherPrompts
from prmagic_core.baselines.matcher.grid import StretchedFrame, TokenGrid
from prmagic_core.baselines.matcher.matching import KEEP_ALL_UP_TO, bidirectional_match
from prmagic_core.baselines.matcher.sampling import prompt_subsets
from prmagic_core.baselines.matcher.scoring import (
    Metrics,
    coverage,
    emd_score,
    merge_choice,
    passing_metric_filters,
    points_inside,
    purity,
)
from prmagic_core.baselines.matcher.steps import ReleasedStep, TransportStep
from prmagic_core.data import shapeworld
from prmagic_core.flow import FlowConfig
from prmagic_core.models.encoding import Encoded, Encoder
from prmagic_core.refine import refine


def unit_rows(n, c, seed=0):
    return F.normalize(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)), dim=1)


# ---------------------------------------------------------------- matching

def test_matching_recovers_a_known_permutation():
    support = unit_rows(30, 16)
    permutation = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    query = support[permutation]  # query cell j holds support cell permutation[j]
    foreground = np.zeros(30, dtype=bool)
    foreground[:12] = True
    matches = bidirectional_match(support, foreground, query)
    assert len(matches) == 12
    np.testing.assert_array_equal(permutation.numpy()[matches.query], matches.support)
    assert set(matches.support) == set(range(12))
    np.testing.assert_allclose(matches.similarity, 1.0, atol=1e-6)


def test_reverse_check_drops_a_planted_wrong_match():
    a, b, c = torch.eye(3)
    support = torch.stack([a, b, c])  # a and b are the object, c background
    query = F.normalize(torch.stack([a, 0.9 * c + 0.1 * b]), dim=1)  # b has no counterpart: forward sends it to cell 1
    foreground = np.array([True, True, False])
    matches = bidirectional_match(support, foreground, query)
    # forward pairs are (a -> 0) and (b -> 1); cell 1 goes back to c, in the background, and is dropped
    np.testing.assert_array_equal(matches.query, [0])
    np.testing.assert_array_equal(matches.support, [0])


def test_reverse_check_keeps_everything_when_nothing_would_survive():
    a, c = torch.eye(2)
    support = torch.stack([a, c])
    query = torch.stack([c])
    matches = bidirectional_match(support, np.array([True, False]), query)
    np.testing.assert_array_equal(matches.query, [0])  # its reverse match is c, but it is all there is


def test_only_the_more_similar_half_is_kept_above_forty_pairs():
    n = KEEP_ALL_UP_TO + 10
    basis = torch.eye(2 * n)
    angle = torch.linspace(0, 1.2, n)[:, None]
    support = basis[:n]
    query = torch.cos(angle) * basis[:n] + torch.sin(angle) * basis[n:]  # cell i matches i, less well as i grows
    matches = bidirectional_match(support, np.ones(n, dtype=bool), query)
    assert len(matches) == n // 2
    np.testing.assert_array_equal(np.sort(matches.query), np.arange(n // 2))
    assert np.all(np.diff(matches.similarity) <= 0)


def test_matching_rejects_a_support_without_foreground():
    with pytest.raises(ValueError, match="no support foreground"):
        bidirectional_match(unit_rows(4, 8), np.zeros(4, dtype=bool), unit_rows(4, 8))


# ---------------------------------------------------------------- scoring

def test_emd_score_known_answers():
    e1, e2, e3 = torch.eye(3)
    support = torch.stack([e1, e2])
    query = torch.stack([e1, e2, -e1, e3])
    cost = ((1 - support @ query.T) / 2).double().numpy()
    assert emd_score(cost, np.array([True, True, False, False])) == pytest.approx(1.0)
    assert emd_score(cost, np.array([False, False, True, False])) == pytest.approx(1 - (1.0 + 0.5) / 2)
    # e1 -> e1 at cost 0, e2 -> e3 at cost 1/2, each carrying mass 1/2
    assert emd_score(cost, np.array([True, False, False, True])) == pytest.approx(0.75)
    assert emd_score(cost, np.zeros(4, dtype=bool)) == 0.0


def test_purity_and_coverage_known_answers():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:6] = True
    points = np.array([[2.5, 2.5], [5.9, 4.1], [3.0, 3.0], [8.0, 8.0]])  # (x, y): three inside
    hits = points_inside(mask, points)
    assert hits == 3
    assert purity(hits, inside_cells=6) == 0.5
    assert coverage(hits, len(points)) == 0.75
    assert purity(0, inside_cells=0) == 0.0


def test_filters_never_empty_the_pool_and_merge_follows_the_preset():
    fss, coco, part = PRESETS["fss"], PRESETS["coco"], PRESETS["part"]
    metrics = Metrics(emd=np.array([0.9, 0.8, 0.5, 0.85]), purity=np.array([0.5, 0.01, 0.2, 0.3]),
                      coverage=np.array([0.2, 0.6, 0.1, 0.4]))
    np.testing.assert_array_equal(passing_metric_filters(metrics, part), [1, 3])  # coverage >= 0.3
    np.testing.assert_array_equal(passing_metric_filters(metrics, coco), [0, 2, 3])  # purity >= 0.02
    low = dataclasses.replace(metrics, coverage=np.array([0.1, 0.2, 0.1, 0.05]))
    np.testing.assert_array_equal(passing_metric_filters(low, part), [1])  # threshold lowered to the best
    # fss: 0.8 emd + 0.2 purity * coverage; the top 10 above 0.7 of the best merge
    scores = metrics.score(fss)
    np.testing.assert_allclose(scores, [0.74, 0.6412, 0.404, 0.704])
    np.testing.assert_array_equal(merge_choice(scores, fss), [0, 3, 1])
    # score filter: distance 1 - score below 0.33 and, scaled, below 0.1
    np.testing.assert_array_equal(merge_choice(np.array([0.9, 0.88, 0.5, 0.6]), coco), [0, 1])
    np.testing.assert_array_equal(merge_choice(np.array([-1.0, -2.0]), fss), [0])  # the best always merges


def test_prompt_subsets_enumerate_draw_and_cap():
    rng = np.random.default_rng(0)
    subsets = prompt_subsets(8, (4, 6), 30, rng)
    assert len(subsets) == 70 + 56 + 28
    assert len({tuple(s) for s in subsets}) == len(subsets)
    capped = prompt_subsets(8, (4, 6), 30, rng, cap=5)
    assert [len(s) for s in capped] == [4] * 5 + [5] * 5 + [6] * 5
    drawn = prompt_subsets(20, (1, 3), 7, rng)
    assert [len(s) for s in drawn] == [1] * 7 + [2] * 7 + [3] * 7
    assert all(len(set(s)) == len(s) and max(s) < 20 for s in drawn)
    assert [len(s) for s in prompt_subsets(2, (4, 6), 30, rng)] == [2]  # sizes clipped to the points there are


# ---------------------------------------------------------------- PR-MaGIC steps

def test_released_step_resizes_and_zero_pads():
    step = torch.randn(1, 256, 64, 64)
    mapped = ReleasedStep(1024, (37, 37))(step)
    assert mapped.shape == (1024, 37, 37)
    assert torch.count_nonzero(mapped[256:]) == 0
    torch.testing.assert_close(mapped[:256], F.interpolate(step, (37, 37), mode="bilinear", align_corners=False)[0])
    with pytest.raises(ValueError, match="does not fit"):
        ReleasedStep(128, (37, 37))(step)


def square_encoded(embedding, image_side=518):
    """An Encoded of a square image whose SAM input has no padding."""
    image = np.zeros((image_side, image_side, 3), dtype=np.uint8)
    return Encoded(image, embedding, (1024, 1024), (image_side, image_side), 1024)


def test_transport_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(6)
    z0 = torch.randn(1, 16, 64, 64, generator=g)
    encoded = square_encoded(z0)
    frame = StretchedFrame(encoded, (37, 37))
    linear, offset = torch.randn(16, 48, generator=g), torch.randn(48, 1, 1, generator=g)
    tokens = TokenGrid(torch.einsum("chw,cd->dhw", frame.from_sam_grid(z0), linear) + offset, frame)
    transport = TransportStep.fit(z0, tokens)
    torch.testing.assert_close(transport.weights, linear, atol=1e-4, rtol=1e-4)
    step = 1e-2 * torch.randn(1, 16, 64, 64, generator=g)
    expected = torch.einsum("chw,cd->dhw", F.interpolate(step, (37, 37), mode="bilinear", align_corners=False)[0],
                            linear)
    torch.testing.assert_close(transport(step), expected, atol=1e-5, rtol=1e-4)


def test_on_sam_features_both_variants_carry_the_step_unchanged(tiny_prompters):
    step = 1e-2 * torch.randn_like(tiny_prompters["released"].z0)
    for prompter in tiny_prompters.values():
        torch.testing.assert_close(prompter.step_map(step), step[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- the prompter on SAM-Tiny

def test_on_sam_features_a_refined_embedding_is_matched_with_its_own_features(tiny_prompters):
    for prompter in tiny_prompters.values():
        z = prompter.z0 + 0.5 * torch.randn_like(prompter.z0)
        expected = F.normalize(z[0].flatten(1).T, dim=1)
        torch.testing.assert_close(prompter.matching_features(z), expected, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def two_episodes():
    return shapeworld.episodes(2, seed=0)


@pytest.fixture(scope="module")
def tiny_prompters(random_tiny, two_episodes):
    episode = two_episodes[0]
    encoder = Encoder(random_tiny)
    # principled: the raw step injection and the best candidate's low-res logits these tests read
    return {variant: Matcher("fss", variant, settings="principled", matching="sam-tiny").prepare(
                encoder, episode.support_images, episode.support_masks, episode.query_image)
            for variant in ("released", "transport")}


def test_prompts_come_from_the_matching_behind_the_similarity_map(tiny_prompters, two_episodes):
    prompter = tiny_prompters["released"]
    similarity = prompter.similarity(prompter.z0)
    assert similarity.shape == two_episodes[0].query_image.shape[:2]
    prompts = prompter.sample_prompts(similarity, torch.Generator().manual_seed(0))
    assert isinstance(prompts, MatcherPrompts)
    assert len(prompts.coords) == min(8, len(prompts.evidence.points))  # the fss preset's k-means centres
    assert all(len(s) <= 6 for s in prompts.subsets) and len(prompts.subsets) <= 3 * 8  # SAM-Tiny's cap
    mask, logits, _ = prompter.decode(prompter.z0, prompts, similarity)
    assert mask.shape == similarity.shape and mask.dtype == bool and logits.shape == (128, 128)
    with pytest.raises(ValueError, match="not made by this prompter"):
        prompter.sample_prompts(similarity.clone(), torch.Generator())
    assert set(prompter.timings) == {"features", "matching", "decoding", "scoring"}
    assert prompter.timings["matching"] > 0 and prompter.timings["decoding"] > 0


def test_logits_are_differentiable_when_the_embedding_requires_grad(tiny_prompters):
    prompter = tiny_prompters["transport"]
    similarity = prompter.similarity(prompter.z0)
    prompts = prompter.sample_prompts(similarity, torch.Generator().manual_seed(0))
    z = prompter.z0.clone().requires_grad_(True)
    mask, logits, _ = prompter.decode(z, prompts, similarity)
    (grad,) = torch.autograd.grad(logits.sum(), z)
    assert grad.shape == z.shape and torch.count_nonzero(grad) > 0
    plain_mask, plain_logits, _ = prompter.decode(prompter.z0, prompts, similarity)
    np.testing.assert_array_equal(mask, plain_mask)
    torch.testing.assert_close(logits.detach(), plain_logits)


def test_refine_is_deterministic_for_a_fixed_seed(random_tiny, two_episodes):
    encoder = Encoder(random_tiny)
    flow = FlowConfig(eta=1e-1, gamma=0.1)
    few_subsets = dataclasses.replace(PRESETS["fss"], tiny_subsets_per_size=3)  # the test's time is SAM decodes
    for episode in two_episodes:
        runs = []
        for _ in range(2):
            prompter = Matcher(few_subsets, "transport", matching="sam-tiny").prepare(encoder, episode.support_images,
                                                                 episode.support_masks, episode.query_image)
            runs.append(refine(prompter, steps=2, flow=flow, generator=torch.Generator().manual_seed(7)))
        first, second = runs
        assert len(first.candidates) == 3
        for a, b in zip(first.steps, second.steps):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_array_equal(a.prompts.coords, b.prompts.coords)
            torch.testing.assert_close(a.similarity, b.similarity)
            assert a.d_phi == b.d_phi


# ---------------------------------------------------------------- presets and construction

def test_presets_are_distinct_named_frozen_objects():
    assert set(PRESETS) == {"fss", "coco", "part"}
    assert all(name == preset.name for name, preset in PRESETS.items())
    values = [dataclasses.astuple(p)[1:] for p in PRESETS.values()]
    assert len(set(values)) == len(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["fss"].centres = 4
    assert PRESETS["fss"].centres == 8 and PRESETS["part"].merge_count == 5
    with pytest.raises(ValueError, match="subset_sizes"):
        dataclasses.replace(PRESETS["fss"], subset_sizes=(5, 4))


def test_make_baseline_picks_the_task_preset_and_checks_names():
    assert make_baseline("matcher", "object", settings="principled").preset is PRESETS["fss"]
    assert make_baseline("matcher", "part", settings="principled").preset is PRESETS["part"]
    assert make_baseline("matcher", "object", settings="principled", benchmark="dis5k").preset is PRESETS["part"]
    assert make_baseline("matcher", "object").preset is LAUNCHER_PRESETS["launcher-fss"]
    assert make_baseline("matcher", "object", benchmark="dis5k").preset is LAUNCHER_PRESETS["launcher-dis"]
    chosen = make_baseline("matcher", "object", variant="transport", matcher_preset="coco")
    assert chosen.preset is PRESETS["coco"] and chosen.variant == "transport"
    with pytest.raises(ValueError, match="variant"):
        make_baseline("matcher", variant="padded")
    with pytest.raises(ValueError, match="preset"):
        make_baseline("matcher", matcher_preset="pascal")


def test_official_sam_without_dinov2_is_an_error():
    official = SimpleNamespace(sam=SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024)))
    with pytest.raises(ValueError, match="DINOv2"):
        Matcher().features(official)


SMALL_DINOV2 = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="module")
def small_dinov2():
    """A random DINOv2 ViT-S/14 at 70 px (5 x 5 tokens): ViT-L/14's code path at test size."""
    import timm  # a dev dependency: the DINOv2 path is tested, not skipped
    torch.manual_seed(0)
    return timm.create_model(SMALL_DINOV2, pretrained=False, img_size=70, num_classes=0).eval()


def test_dinov2_loader_reads_an_official_style_checkpoint(tmp_path, small_dinov2):
    from prmagic_core.models.dinov2 import load_dinov2, patch_tokens
    from prmagic_core.models.loading import CheckpointError

    architecture, reference = SMALL_DINOV2, small_dinov2
    state = dict(reference.state_dict(), mask_token=torch.zeros(1, reference.embed_dim))  # as Meta publishes it
    torch.save(state, tmp_path / "dinov2.pth")
    model = load_dinov2(tmp_path / "dinov2.pth", architecture=architecture, img_size=70)
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    tokens = patch_tokens(model, image)
    assert tokens.shape == (reference.embed_dim, 5, 5)
    x = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, (70, 70), mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        blocks = reference.blocks(reference.norm_pre(reference._pos_embed(reference.patch_embed(x))))
    expected = blocks[0, reference.num_prefix_tokens:].T.reshape(-1, 5, 5)  # before the final norm, CLS dropped
    torch.testing.assert_close(tokens, expected)
    del state["blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_dinov2(tmp_path / "broken.pth", architecture=architecture, img_size=70)


def test_sam_filters_are_off_at_zero_and_never_empty_the_pool():
    from prmagic_core.baselines.matcher.scoring import passing_sam_filters

    iou, stability = np.array([-0.1, 0.9, 0.86]), np.array([0.95, 0.5, 0.92])
    np.testing.assert_array_equal(passing_sam_filters(iou, stability, PRESETS["fss"]), [0, 1, 2])
    # coco: predicted IoU above 0.85 and stability at least 0.9
    np.testing.assert_array_equal(passing_sam_filters(iou, stability, PRESETS["coco"]), [2])
    np.testing.assert_array_equal(passing_sam_filters(iou * 0, stability, PRESETS["coco"]), [0, 1, 2])


@pytest.mark.parametrize("variant", ["released", "transport"])
def test_dinov2_matching_on_sam_tiny_runs_through_the_loop(random_tiny, two_episodes, small_dinov2, monkeypatch,
                                                           variant):
    monkeypatch.setattr("prmagic_core.models.dinov2.load_dinov2", lambda checkpoint, device: small_dinov2)
    episode = two_episodes[1]
    few_subsets = dataclasses.replace(PRESETS["fss"], tiny_subsets_per_size=2)
    prompter = Matcher(few_subsets, variant, dinov2_checkpoint="dinov2.pth").prepare(
        Encoder(random_tiny), episode.support_images, episode.support_masks, episode.query_image)
    assert prompter.query_tokens.tokens.shape == (384, 5, 5)  # 70 px / 14 px patches, ViT-S width
    step = 1e-2 * torch.randn_like(prompter.z0)  # SAM-Tiny: 64 channels on 32 x 32
    mapped = prompter.step_map(step)
    assert mapped.shape == (384, 5, 5)
    if variant == "released":
        assert torch.count_nonzero(mapped[64:]) == 0
    trajectory = refine(prompter, steps=1, flow=FlowConfig(eta=1e-1), generator=torch.Generator().manual_seed(0))
    assert len(trajectory.candidates) == 2
    assert all(c.shape == episode.query_image.shape[:2] for c in trajectory.candidates)


# ---------------------------------------------------------------- the matching encoder seam

@pytest.fixture
def random_dino_tiny(monkeypatch):
    from prmagic_core.baselines.matcher import features
    from prmagic_core.models.dino_tiny import build_dino_tiny

    torch.manual_seed(0)
    model = build_dino_tiny().eval()
    monkeypatch.setattr(features, "_dino_tiny", lambda device, fold=0: model)
    return model


def test_on_sam_tiny_matcher_matches_with_dino_tiny_by_default(random_tiny, two_episodes, random_dino_tiny):
    episode = two_episodes[0]
    encoder = Encoder(random_tiny)
    few_subsets = dataclasses.replace(PRESETS["fss"], tiny_subsets_per_size=2)
    assert Matcher(few_subsets, matching="sam-tiny").features(encoder).name == "sam-tiny"
    matcher = Matcher(few_subsets)  # DINO-Tiny is the default on SAM-Tiny
    assert matcher.features(encoder).name == "dino-tiny"
    prompter = matcher.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)
    assert prompter.query_tokens.tokens.shape == (64, 16, 16)
    step = 1e-2 * torch.randn_like(prompter.z0)  # released: SAM channel c onto DINO-Tiny channel c, 32x32 -> 16x16
    expected = F.interpolate(step, (16, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(prompter.step_map(step), expected)
    trajectory = refine(prompter, steps=1, flow=FlowConfig(eta=1e-1), generator=torch.Generator().manual_seed(0))
    assert all(c.shape == episode.query_image.shape[:2] for c in trajectory.candidates)


def test_dino_tiny_matches_with_the_network_of_the_episodes_fold(random_tiny, monkeypatch, tmp_path):
    from prmagic_core.baselines import make_baseline
    from prmagic_core.baselines.matcher import features
    from prmagic_core.models import dino_tiny

    monkeypatch.setattr(dino_tiny, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(1)
    per_fold = {fold: dino_tiny.build_dino_tiny().eval() for fold in (0, 2)}
    for fold, model in per_fold.items():
        torch.save(model.state_dict(), dino_tiny.dino_tiny_files(fold)[0])
    features._dino_tiny.cache_clear()
    try:
        for name in ("matcher", "gfsam"):
            for fold, model in per_fold.items():
                used = make_baseline(name, matching_encoder="dino-tiny", dino_tiny_fold=fold).features(Encoder(random_tiny))
                for key, value in model.state_dict().items():
                    assert torch.equal(used.model.state_dict()[key], value), (name, fold, key)
    finally:
        features._dino_tiny.cache_clear()


def test_pooled_matching_features_are_token_means(random_tiny, two_episodes, random_dino_tiny):
    from prmagic_core.baselines.matcher import matching_encoder
    from prmagic_core.models.dinov2 import patch_tokens

    encoder = Encoder(random_tiny)
    images = [two_episodes[0].query_image, two_episodes[1].query_image]

    def pooled(name):
        encoded = matching_encoder(name, encoder).selector_encoder(encoder).encode_many(images)
        return torch.stack([e.embedding[0].mean(dim=(1, 2)) for e in encoded])

    torch.testing.assert_close(pooled("sam-tiny")[1], encoder.encode(images[1]).embedding[0].mean(dim=(1, 2)))
    dino_pooled = pooled("dino-tiny")
    assert dino_pooled.shape == (2, 64)
    torch.testing.assert_close(dino_pooled[0], patch_tokens(random_dino_tiny, images[0]).mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="matching encoder"):
        Matcher(matching="clip")
    with pytest.raises(ValueError, match="dinov2_checkpoint"):
        matching_encoder("dinov2", encoder)
