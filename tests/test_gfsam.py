"""GF-SAM: each step on a constructed case with a known answer, then the whole baseline."""
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prmagic_core.baselines import GFSAM, make_baseline
from prmagic_core.baselines.gfsam import GFSAMPrompts
from prmagic_core.baselines.gfsam.graph import (
    MAX_POINTS,
    REJECTED,
    SELECTED,
    UNDECIDED,
    classify_clusters,
    merge,
    point_graph,
    point_self_consistency,
    top_points,
    weak_components,
)
from prmagic_core.baselines.gfsam.priors import (
    fill_empty_support,
    filtered_cross_similarity,
    normalised_channels,
    positive_evidence,
    prior,
    shot_priors,
)
from prmagic_core.data import shapeworld
from prmagic_core.flow import FlowConfig
from prmagic_core.masks import iou
from prmagic_core.models.decoding import Prompts, decode, decode_each_point
from prmagic_core.models.encoding import Encoder
from prmagic_core.refine import refine

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples" / "shapeworld"


def unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=0)


# ---------------------------------------------------------------- the two-blob world
# An 8 x 8 grid, one pixel per cell, 4 channels: e0 the support's object, e1 something novel,
# e2 background, e3 a direction every feature shares (as DINOv2's features share a mean).
GRID = (8, 8)
OBJECT, NOVEL, BACKGROUND = unit(1, 0, 0, 1), unit(0.1, 0.7, 0, 1), unit(0, 0, 1, 1)


def blob(rows, cols):
    mask = np.zeros(GRID, dtype=bool)
    mask[rows, cols] = True
    return mask


BLOB_A = blob(slice(1, 4), slice(1, 4))  # 9 cells that match the support's object
BLOB_B = blob(slice(4, 8), slice(4, 8))  # 16 cells of a partly similar, novel object


def features_of(regions):
    out = BACKGROUND.repeat(GRID[0] * GRID[1], 1)
    for mask, feature in regions:
        out[torch.as_tensor(mask.ravel())] = feature
    return out


@pytest.fixture(scope="module")
def two_blobs():
    query = features_of([(BLOB_A, OBJECT), (BLOB_B, NOVEL)])
    support_mask = blob(slice(2, 5), slice(2, 5))
    support = features_of([(support_mask, OBJECT)])
    foreground = torch.as_tensor(support_mask.ravel(), dtype=torch.float32)
    valid = torch.ones(GRID[0] * GRID[1], dtype=torch.bool)
    priors = shot_priors(query, [(support, foreground, 1 - foreground)])
    return query, priors, valid


def test_prior_is_the_max_and_the_mask_average_of_the_cosines():
    query, support = torch.eye(3), torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    high, mean = prior(query, support, torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(high, torch.tensor([1.0, 0.4, 0.0]))
    torch.testing.assert_close(mean, torch.tensor([1.3, 0.4, 0.0]) / 1.5)


def test_channels_are_normalised_over_the_valid_cells_only():
    features = torch.tensor([[3.0, 1.0], [4.0, 0.0], [100.0, 100.0]])
    out = normalised_channels(features, torch.tensor([True, True, False]))
    torch.testing.assert_close(out[:2].norm(dim=0), torch.ones(2))
    torch.testing.assert_close(out[2], torch.tensor([20.0, 100.0]))


def test_filtered_map_keeps_the_object_and_some_of_the_lookalike(two_blobs):
    _, priors, valid = two_blobs
    point_map = filtered_cross_similarity(priors, valid).reshape(GRID)
    assert torch.all(point_map[torch.as_tensor(BLOB_A)] > 0.999)
    lookalike = point_map[torch.as_tensor(BLOB_B)]
    assert torch.all((lookalike > 0.15) & (lookalike < 0.3))  # more like the object than like the background
    assert torch.all(point_map[torch.as_tensor(~(BLOB_A | BLOB_B))] == 0)


def test_positive_region_is_the_object_alone(two_blobs):
    _, priors, valid = two_blobs
    positive, evidence = positive_evidence(priors, valid)
    np.testing.assert_array_equal(positive.reshape(GRID).numpy(), BLOB_A)
    assert evidence[torch.as_tensor(BLOB_A.ravel())].min() > evidence[torch.as_tensor(BLOB_B.ravel())].max()


def test_two_blobs_give_two_clusters_and_only_the_matching_one_survives(two_blobs):
    query, priors, valid = two_blobs
    point_map = filtered_cross_similarity(priors, valid)
    cells = top_points(point_map, GRID)
    # mass = 9 * 1 + 16 * 0.204 -> 12 points: all of blob A and three of blob B
    on_a = BLOB_A.ravel()[cells]
    assert len(cells) == int(point_map.sum()) == 12 and on_a.sum() == 9
    rows, cols = np.divmod(cells, GRID[1])
    assert list(zip(cols, rows)) == sorted(zip(cols, rows))  # read off column by column, as released
    points = np.stack([cols + 0.5, rows + 0.5], 1)
    masks = np.stack([BLOB_A if a else BLOB_B for a in on_a])  # what SAM would cut from each point

    clusters, labels = weak_components(point_graph(masks, points))
    assert clusters == 2 and len(set(labels[on_a])) == 1 and len(set(labels[~on_a])) == 1

    positive, evidence = positive_evidence(priors, valid)
    coverage = torch.as_tensor(masks.reshape(len(masks), -1), dtype=torch.float32)
    foreground, scores = classify_clusters(coverage, labels, clusters, positive, evidence)
    # blob A's first mask grows over the positive region; its copies add nothing new, so they are
    # not counted (as in the release); no mask of blob B is mostly positive
    assert foreground[on_a].sum() == 1 and not foreground[~on_a].any()

    unions = torch.stack([coverage[torch.as_tensor(labels == c)].amax(0) for c in range(clusters)])
    point_labels = point_self_consistency(query, unions, labels, cells, GRID, foreground)
    assert (point_labels == SELECTED).sum() == 1 and set(point_labels[~on_a]) == {UNDECIDED}
    merged = merge(point_labels, scores)
    np.testing.assert_array_equal(masks[merged].any(0), BLOB_A)


def test_mask_growth_rejects_what_only_adds_negative_cells():
    positive = torch.zeros(12, dtype=torch.bool)
    positive[:8] = True
    evidence = positive.float() * 2 - 1
    inner = torch.zeros(12)
    inner[:8] = 1
    outer = torch.zeros(12)
    outer[:12] = 1  # 8 positive + 4 negative: mostly positive on its own, only negative once inner is grown
    labels = np.array([0, 0])
    foreground, scores = classify_clusters(torch.stack([outer, inner]), labels, 1, positive, evidence)
    assert foreground.tolist() == [False, True]
    assert scores.tolist() == [-4.0, -4.0]  # the margin of the last mask examined (outer's new part)
    alone, _ = classify_clusters(outer[None], np.array([0]), 1, positive, evidence)
    assert alone.tolist() == [True]


def test_a_cluster_whose_points_mostly_prefer_a_neighbour_loses_them_all():
    # 2 x 3 grid: cluster X = top row with features e0, e1, e1; cluster Y = bottom row, all e1
    e0, e1 = torch.tensor([1.0, 0]), torch.tensor([0.0, 1])
    features = torch.stack([e0, e1, e1, e1, e1, e1])
    cells, labels = np.arange(6), np.array([0, 0, 0, 1, 1, 1])
    unions = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    # X's e1 points: own cluster 2/3, Y's 1 at distance 1 -> inconsistent; X's e0 point is consistent
    # but outvoted; Y's points: own 1 against 2/3 -> consistent
    point_labels = point_self_consistency(features, unions, labels, cells, (2, 3), np.ones(6, dtype=bool))
    assert point_labels.tolist() == [UNDECIDED] * 3 + [SELECTED] * 3
    not_foreground = point_self_consistency(features, unions, labels, cells, (2, 3), np.zeros(6, dtype=bool))
    assert not_foreground.tolist() == [REJECTED] * 3 + [UNDECIDED] * 3


def test_merge_falls_back_to_the_best_undecided_point():
    assert merge(np.array([SELECTED, UNDECIDED, SELECTED]), np.zeros(3)).tolist() == [0, 2]
    assert merge(np.array([REJECTED, UNDECIDED, UNDECIDED]), np.array([9.0, 1.0, 3.0])).tolist() == [2]
    assert merge(np.array([], dtype=int), np.array([])).tolist() == []


def test_number_of_points_follows_the_mass_of_the_map():
    grid = (20, 20)
    for mass_map, expected in ((torch.full((400,), 2.7 / 400), 2), (torch.full((400,), 0.3 / 400), 1),
                               (torch.zeros(400), 0), (torch.ones(400), MAX_POINTS)):
        assert len(top_points(mass_map, grid)) == expected


def test_an_all_empty_support_becomes_a_centre_square():
    empty = np.zeros((128, 96), dtype=bool)
    (filled,) = fill_empty_support([empty])
    rows, cols = np.nonzero(filled)
    assert filled.sum() == 4 and set(rows) == {63, 64} and set(cols) == {47, 48}
    kept = fill_empty_support([empty, np.ones((128, 96), dtype=bool)])
    assert not kept[0].any() and kept[1].all()


# ---------------------------------------------------------------- SAM-Tiny

def test_points_decoded_in_batches_equal_one_decode_per_point(random_tiny):
    episode = shapeworld.episodes(1, seed=3)[0]
    encoded = Encoder(random_tiny).encode(episode.query_image)
    points = np.array([[10.0, 20.0], [64.0, 64.0], [100.5, 7.25]])
    with torch.no_grad():
        batched = decode_each_point(random_tiny, encoded.embedding, encoded, points, batch=2)
        for i, point in enumerate(points):
            alone = decode(random_tiny, encoded.embedding, encoded, Prompts(point[None], [1]), multimask=False)
            torch.testing.assert_close(batched.logits[i], alone.logits[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.iou[i], alone.iou[0])


@pytest.fixture(scope="module")
def episodes():
    return shapeworld.episodes(2, seed=0)


@pytest.fixture(scope="module")
def tiny_prompters(random_tiny, episodes):
    episode = episodes[0]
    encoder = Encoder(random_tiny)
    # on SAM-Tiny's own features, whose relation to the embedding the tests below know
    return {variant: GFSAM(variant, matching="sam-tiny").prepare(encoder, episode.support_images,
                                                                 episode.support_masks, episode.query_image)
            for variant in ("released", "transport")}


def test_the_step_enters_the_compared_features(tiny_prompters):
    released, transport = tiny_prompters["released"], tiny_prompters["transport"]
    z = released.z0 + 0.05 * torch.randn(released.z0.shape, generator=torch.Generator().manual_seed(0))
    base = released.base_features.flatten(1).T
    torch.testing.assert_close(released.matching_features(z), base + (z - released.z0)[0].flatten(1).T)
    # on SAM features GF-SAM's features are z0 scaled per channel, so the fitted transport is that
    # scaling: the moved embedding, normalised with z0's channel norms. At z0 it is exact; the step is
    # carried within 1% of its norm, since the least squares (a pseudo-inverse) cannot see the few
    # directions the query's SAM features hardly span (0.6% of a random step on the random SAM-Tiny)
    norms = released.z0[0].flatten(1).norm(dim=1)
    torch.testing.assert_close(transport.matching_features(released.z0), released.z0[0].flatten(1).T / norms,
                               atol=1e-6, rtol=1e-5)
    step = (z - released.z0)[0].flatten(1).T / norms
    error = transport.matching_features(z) - z[0].flatten(1).T / norms
    assert error.norm() < 0.01 * step.norm()


def test_the_mask_is_the_union_of_the_merged_points_masks(tiny_prompters, episodes):
    prompter = tiny_prompters["released"]
    similarity = prompter.similarity(prompter.z0)
    assert similarity.shape == episodes[0].query_image.shape[:2]
    prompts = prompter.sample_prompts(similarity, torch.Generator())
    assert isinstance(prompts, GFSAMPrompts) and 1 <= len(prompts.coords) <= MAX_POINTS
    assert (prompts.labels == 1).all()
    mask, logits = prompter.decode(prompter.z0, prompts, similarity)
    with torch.no_grad():
        every = decode_each_point(prompter.sam, prompter.z0, prompter.query, prompts.coords).logits
    masks = (F.interpolate(every[:, None], mask.shape, mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
    decision = prompter.decide(masks, prompts)
    np.testing.assert_array_equal(mask, masks[decision.merged].any(0))
    assert logits.shape == (len(decision.merged), 128, 128)
    with pytest.raises(ValueError, match="not made by this prompter"):
        prompter.sample_prompts(similarity.clone(), torch.Generator())
    assert set(prompter.timings) == {"features", "priors", "decoding", "graph"}


def test_d_phi_is_differentiable_through_the_final_masks_decodes(tiny_prompters):
    prompter = tiny_prompters["transport"]
    similarity = prompter.similarity(prompter.z0)
    prompts = prompter.sample_prompts(similarity, torch.Generator())
    z = prompter.z0.clone().requires_grad_(True)
    mask, logits = prompter.decode(z, prompts, similarity)
    (grad,) = torch.autograd.grad(logits.sum(), z)
    assert grad.shape == z.shape and torch.count_nonzero(grad) > 0
    plain_mask, plain_logits = prompter.decode(prompter.z0, prompts, similarity)
    np.testing.assert_array_equal(mask, plain_mask)
    torch.testing.assert_close(logits.detach(), plain_logits, atol=1e-5, rtol=1e-4)


def test_refine_on_gfsam_is_deterministic_and_k_shot_works(random_tiny):
    encoder = Encoder(random_tiny)
    episode = shapeworld.episodes(1, seed=1, shots=2)[0]
    runs = []
    for _ in range(2):
        prompter = make_baseline("gfsam", variant="transport").prepare(
            encoder, episode.support_images, episode.support_masks, episode.query_image)
        runs.append(refine(prompter, steps=1, flow=FlowConfig(eta=1e-1), generator=torch.Generator().manual_seed(7)))
    first, second = runs
    assert len(first.candidates) == 2 and first.candidates[0].shape == episode.query_image.shape[:2]
    for a, b in zip(first.steps, second.steps):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.prompts.coords, b.prompts.coords)
    assert first.steps[0].d_phi == second.steps[0].d_phi and np.isfinite(first.steps[0].d_phi)


def test_an_empty_support_mask_uses_the_fallback_instead_of_failing(random_tiny, episodes):
    episode = episodes[1]
    empty = [np.zeros_like(m) for m in episode.support_masks]
    prompter = GFSAM().prepare(Encoder(random_tiny), episode.support_images, empty, episode.query_image)
    similarity = prompter.similarity(prompter.z0)
    assert torch.isfinite(similarity).all() and similarity.max() > 0


def test_trained_sam_tiny_gfsam_beats_the_whole_image_mask():
    from prmagic_core.models.loading import load_sam

    encoder, baseline = Encoder(load_sam("tiny")), GFSAM()
    ours, whole = [], []
    for episode in shapeworld.episodes(3, seed=0):
        prompter = baseline.prepare(encoder, episode.support_images, episode.support_masks, episode.query_image)
        similarity = prompter.similarity(prompter.z0)
        mask, _ = prompter.decode(prompter.z0, prompter.sample_prompts(similarity, torch.Generator()), similarity)
        ours.append(iou(mask, episode.query_mask))
        whole.append(iou(np.ones_like(mask), episode.query_mask))
    assert np.mean(ours) > 2 * np.mean(whole)


def test_official_sam_without_dinov2_is_an_error():
    from types import SimpleNamespace

    official = SimpleNamespace(sam=SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024)))
    with pytest.raises(ValueError, match="GF-SAM on official SAM matches with DINOv2"):
        GFSAM().features(official)
    with pytest.raises(ValueError, match="GF-SAM variant"):
        GFSAM("padded")


# ---------------------------------------------------------------- official architectures

@pytest.mark.slow
def test_random_vit_b_and_dinov2_round_trip_on_a_photo_episode(tmp_path, monkeypatch):
    import timm
    from segment_anything import sam_model_registry

    from prmagic_core.baselines.gfsam import graph
    from prmagic_core.data.folder import load_episodes
    from prmagic_core.models import dinov2
    from prmagic_core.models.loading import load_sam
    from prmagic_core.pipeline import run_episode

    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), tmp_path / "sam_vit_b.pth")
    # DINOv2's code path with the small ViT-S/14 at 126 px (9 x 9 tokens): ViT-L/14 at 518 is the same code
    small = "vit_small_patch14_dinov2.lvd142m"
    reference = timm.create_model(small, pretrained=False, img_size=126, num_classes=0)
    torch.save(dict(reference.state_dict(), mask_token=torch.zeros(1, reference.embed_dim)), tmp_path / "dino.pth")
    monkeypatch.setattr(dinov2, "load_dinov2", partial(dinov2.load_dinov2, architecture=small, img_size=126))
    monkeypatch.setattr(graph, "MAX_POINTS", 8)  # vit_b's decoder on 128 points is minutes on a CPU

    sam = load_sam("vit_b", tmp_path / "sam_vit_b.pth")
    episode = load_episodes(SAMPLES)[0]
    encoder = Encoder(sam, batch_size=2)
    baseline = make_baseline("gfsam", dinov2_checkpoint=tmp_path / "dino.pth")
    result = run_episode(baseline, encoder, episode, steps=1, flow=FlowConfig(eta=1e-3), selector="pooled")
    assert baseline.features(encoder).name == "dinov2"
    assert len(result.candidates) == 2 and all(len(s.prompts.coords) <= 8 for s in result.trajectory.steps)
    assert all(m.shape == episode.query_image.shape[:2] for m in result.candidates)
    assert result.trajectory.steps[0].gradient.shape == (1, 256, 64, 64)
    assert np.isfinite(result.trajectory.steps[0].d_phi)
    assert encoder.passes == 2


def test_evaluate_runs_gfsam_on_a_benchmark_and_names_its_matching_features(tmp_path):
    from test_evaluation import run_cli, write_fss

    root = write_fss(tmp_path / "fss")
    code, summary, _ = run_cli("evaluate", "--dataset", "fss", "--data-root", str(root), "--backend", "tiny",
                               "--baseline", "gfsam", "--episodes", "1", "--steps", "0", "--selector", "pooled",
                               "--json", "--device", "cpu")
    assert code == 0 and (summary["episodes"], summary["failed_episodes"]) == (1, 0)
    settings = summary["settings"]
    assert (settings["baseline"], settings["matching_encoder"], settings["matcher_variant"]) == \
        ("gfsam", "dino-tiny", "released")
