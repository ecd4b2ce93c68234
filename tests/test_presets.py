"""The ``release`` preset against the authors' release, component by component (SPEC section 8).

Each test computes the release's rule independently, in a few lines written from reading
POSTECH-MinjaeLee/PR-MaGIC at e6e0705 (the file:line is cited; "persam:" is
``Personalize-SAM/pr_magic_for_persam.py``, "matcher:" is ``Matcher/matcher/Matcher_PR.py``),
with segment_anything's own ``SamPredictor`` where the release calls its predictor, and
asserts equality with this project's ``release`` preset on the shipped SAM-Tiny.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor

from prmagic_core.baselines.base import EmptySupportWarning
from prmagic_core.baselines.persam import PerSAMF, band_prompts, similarity_map
from prmagic_core.data.shapeworld import episodes
from prmagic_core.flow import FlowConfig
from prmagic_core.models.encoding import Encoder
from prmagic_core.models.loading import load_sam
from prmagic_core.models.tiny import build_sam_tiny
from prmagic_core.pipeline import prepare_episode, run_episode
from prmagic_core.presets import PRESETS, get_preset, parse_assignments

FIT_ITERS = 20


@pytest.fixture(scope="module")
def sam():
    return load_sam("tiny")


@pytest.fixture(scope="module")
def episode():
    return episodes(1, seed=3, size=192)[0]


@pytest.fixture(scope="module")
def encoder(sam):
    return Encoder(sam)


@pytest.fixture(scope="module")
def prompter(encoder, episode):
    return PerSAMF(train_iters=FIT_ITERS).prepare(encoder, episode.support_images, episode.support_masks,
                                                   episode.query_image)


def predictor_on(sam, image):
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    return predictor


# ---------------------------------------------------------------- the release's rules, transcribed

def release_target(sam, image, mask):
    """persam:398-407: the mask as a 0/255 RGB image through SAM's preprocessing, bilinear to the
    feature grid, channel 0 > 0; (max + mean) / 2 of those features (all of them if none), normalised."""
    predictor = predictor_on(sam, image)
    mask_rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    mask_in = torch.as_tensor(predictor.transform.apply_image(mask_rgb)).permute(2, 0, 1)[None].float()
    mask_pad = F.interpolate(sam.preprocess(mask_in), size=predictor.features.shape[-2:], mode="bilinear")[0, 0]
    feats = predictor.features[0].permute(1, 2, 0)
    chosen = feats[mask_pad > 0] if feats[mask_pad > 0].any() else feats.reshape(-1, feats.shape[-1])
    target = chosen.max(0).values / 2 + chosen.mean(0) / 2
    return target / (target.norm() + 1e-8)


def release_similarity(predictor, target, features):
    """persam:171-182: cosine map, x4 bilinear, then SAM's postprocess_masks to the image."""
    feat = features[0] / (features[0].norm(dim=0, keepdim=True) + 1e-8)
    c, h, w = feat.shape
    sim = (target @ feat.reshape(c, h * w)).reshape(1, 1, h, w)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    return predictor.model.postprocess_masks(sim, predictor.input_size, predictor.original_size).squeeze()


def release_point_selection(sim, num_extra, quantiles, row_col):
    """persam:105-144 (``row_col=True``: as released; False: the correction's (x, y) and row * W + col),
    drawing from torch's global generator as the release does."""
    rows, cols = sim.shape
    top = int(sim.view(-1).max(0)[1])
    points = [[top % cols, top // cols]]
    taken = {top}
    for q in quantiles:
        band = sim >= torch.quantile(sim, q)
        for idx in list(taken):
            band[idx // cols, idx % cols] = False
        candidates = torch.nonzero(band)
        if len(candidates) == 0:
            continue
        for r, c in candidates[torch.randperm(len(candidates))[:num_extra]].tolist():
            flat = c * cols + r if row_col else r * cols + c
            if flat not in taken:
                points.append([r, c] if row_col else [c, r])
                taken.add(flat)
    return np.array(points, dtype=np.float64)


def release_step(predictor, xy, weights):
    """persam:469-508 and 551-557: call 1 mixed by the weights (mask, box), call 2 with that box and
    the mixed low-res logits, call 3 with the SAME box and call 2's best logits. Returns call 3's
    mask, the selector's mask (call 1's), call 3's best IoU prediction and its mixed high-res logits."""
    labels = np.ones(len(xy))
    w = weights[:, None, None]
    high1, _, low1 = predictor.predict(xy, labels, multimask_output=True, return_logits=True)
    first_mask = (torch.as_tensor(high1) * w).sum(0) > 0
    ys, xs = np.nonzero(first_mask.numpy())
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])[None] if len(xs) else None
    mixed_low = (torch.as_tensor(low1) * w).sum(0)
    _, scores2, low2 = predictor.predict(xy, labels, box=box, mask_input=mixed_low[None].numpy(), multimask_output=True)
    best2 = int(np.argmax(scores2))
    high3, scores3, _ = predictor.predict(xy, labels, box=box, mask_input=low2[best2:best2 + 1],
                                          multimask_output=True, return_logits=True)
    best3 = int(np.argmax(scores3))
    return high3[best3] > 0, first_mask.numpy(), float(scores3[best3]), (torch.as_tensor(high3) * w).sum(0)


def release_masked_vector(sam, image, mask):
    """persam:188-209: pixels outside the mask set to 0 (an empty mask keeps the image), re-encoded,
    mean over positions, normalised."""
    masked = image.copy() if not mask.any() else np.where(mask[..., None], image, 0).astype(np.uint8)
    v = predictor_on(sam, masked).features.mean(dim=(2, 3))[0]
    return v / (v.norm() + 1e-8)


def release_margin(logit_high, mask):
    """persam:217-225: mean sigmoid inside - outside, 0 if either side is empty."""
    p = torch.sigmoid(logit_high)
    inside = torch.as_tensor(mask)
    return float(p[inside].mean() - p[~inside].mean()) if inside.any() and (~inside).any() else 0.0


def release_fit(predictor, xy, truth, iters):
    """persam:418-445: w = [1 - a - b, a, b], AdamW(1e-3, eps 1e-4), cosine schedule, dice + focal on the
    weighted high-res logits of the multimask outputs for ``xy``."""
    free = torch.nn.Parameter(torch.ones(2, 1) / 3)
    optimizer = torch.optim.AdamW([free], lr=1e-3, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    target = torch.as_tensor(truth, dtype=torch.float32).flatten()[None]
    for _ in range(iters):
        high, _, _ = predictor.predict(xy, np.ones(len(xy)), multimask_output=True, return_logits=True)
        weights = torch.cat((1 - free.sum(0).unsqueeze(0), free))
        logits = (torch.as_tensor(high).flatten(1) * weights).sum(0)[None]
        prob = logits.sigmoid()
        dice = 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = prob * target + (1 - prob) * (1 - target)
        focal = (0.25 * target + 0.75 * (1 - target)) * ce * (1 - p_t) ** 2
        loss = dice.sum() + focal.mean(1).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return torch.cat((1 - free.sum(0).unsqueeze(0), free)).detach().flatten()


# ---------------------------------------------------------------- PerSAM-F items

def test_item1_call3_reuses_call1_box(sam, prompter, episode):
    predictor = predictor_on(sam, episode.query_image)
    s = prompter.similarity(prompter.query.embedding)
    prompts = prompter.sample_prompts(s, torch.Generator().manual_seed(0))
    mask, _, _ = prompter.decode(prompter.query.embedding, prompts, s)
    expected, *_ = release_step(predictor, prompts.coords, prompter.mask_weights)
    np.testing.assert_array_equal(mask, expected)


def test_item2_similarity_is_upsampled_in_two_steps(episode):
    # On SAM-Tiny the low-res size is its input size (4 x 32 = 128), where both paths coincide; a SAM
    # with a 256-px input and 8-px patches has official SAM's ratio between them (low-res < input).
    torch.manual_seed(0)
    wide = build_sam_tiny({"img_size": 256, "patch_size": 8}).eval()
    prompter = PerSAMF(train_iters=2).prepare(Encoder(wide), episode.support_images, episode.support_masks,
                                              episode.query_image)
    z = prompter.query.embedding + 0.05 * torch.randn(prompter.query.embedding.shape,
                                                     generator=torch.Generator().manual_seed(1))
    expected = release_similarity(predictor_on(wide, episode.query_image), prompter.target.direction, z)
    torch.testing.assert_close(prompter.similarity(z), expected, atol=1e-5, rtol=0)
    direct = similarity_map(prompter.target, z, prompter.query, "direct")
    assert (direct - expected).abs().max() > 1e-3  # the test can tell the two paths apart


def test_item3_support_prototype_keeps_the_preprocessed_cells(sam, prompter, episode):
    expected = release_target(sam, episode.support_images[0], episode.support_masks[0])
    torch.testing.assert_close(prompter.target.direction, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["release", "release-v1", "corrected"])
@pytest.mark.parametrize("seed", [0, 1])
def test_item4_band_sampler(preset, seed):
    settings = get_preset(preset)
    sim = torch.rand(518, 518, generator=torch.Generator().manual_seed(10 + seed))  # the release's 518 px
    for points in (5, 3):
        torch.manual_seed(seed)
        expected = release_point_selection(sim, points // 2, settings.band_quantiles, settings.point_order == "row_col")
        got = band_prompts(sim, points, torch.Generator().manual_seed(seed), settings.band_quantiles,
                           settings.point_order == "row_col")
        np.testing.assert_array_equal(got.coords, expected)


def test_item5_weights_are_fitted_on_the_top1_and_band_points(sam, prompter, episode):
    support, mask = episode.support_images[0], episode.support_masks[0]
    predictor = predictor_on(sam, support)
    sim = release_similarity(predictor, release_target(sam, support, mask), predictor.features)
    torch.manual_seed(0)  # PerSAMF's fit_seed
    xy = release_point_selection(sim, 5 // 2, get_preset("release").band_quantiles, row_col=False)
    np.testing.assert_array_equal(prompter.fit_prompts.coords, xy)
    torch.testing.assert_close(prompter.mask_weights, release_fit(predictor, xy, mask, FIT_ITERS), atol=1e-5, rtol=0)


def test_item6_selector_scores_call1_mask_and_the_candidate_is_call3(sam, prompter, episode):
    predictor = predictor_on(sam, episode.query_image)
    s = prompter.similarity(prompter.query.embedding)
    prompts = prompter.sample_prompts(s, torch.Generator().manual_seed(2))
    mask, _, evidence = prompter.decode(prompter.query.embedding, prompts, s)
    candidate, scored, iou, _ = release_step(predictor, prompts.coords, prompter.mask_weights)
    np.testing.assert_array_equal(evidence.mask, scored)
    np.testing.assert_array_equal(mask, candidate)
    assert evidence.iou_prediction == pytest.approx(iou, abs=1e-6)


def test_item11_selector_score_has_iou_and_margin_terms(sam, encoder, episode):
    preset = get_preset("release").override(alpha_s=0.25, beta_s=0.10)  # the release's code defaults
    baseline = PerSAMF(train_iters=FIT_ITERS, settings=preset)
    result = run_episode(baseline, encoder, episode, steps=2, flow=FlowConfig(eta=1e-3), seed=4, preset=preset)
    predictor = predictor_on(sam, episode.query_image)
    weights = prepare_episode(baseline, encoder, episode).mask_weights
    support_vec = release_masked_vector(sam, episode.support_images[0], episode.support_masks[0])
    expected = []
    for step in result.trajectory.steps:  # persam:551-566
        _, curr_mask, sam_score, logit3_high = release_step(predictor, step.prompts.coords, weights)
        base = float(support_vec @ release_masked_vector(sam, episode.query_image, curr_mask))
        expected.append(base + 0.25 * sam_score + 0.10 * release_margin(logit3_high, curr_mask))
    np.testing.assert_allclose(result.selector_scores, expected, atol=1e-4)
    assert result.top1_index == int(np.argmax(expected))


def test_item12_empty_support_falls_back_to_all_features_with_a_warning_naming_the_episode(sam, encoder):
    base = episodes(1, seed=5, size=192)[0]
    mask = np.zeros_like(base.support_masks[0])
    mask[96, 96] = True  # one pixel: no cell of the preprocessed mask stays > 0
    tiny = type(base)((base.support_images[0],), (mask,), base.query_image, base.query_mask, base.class_name,
                      name="one-pixel-support")
    with pytest.warns(EmptySupportWarning, match="one-pixel-support.*support mask 0 is empty"):
        prompter = prepare_episode(PerSAMF(train_iters=2), encoder, tiny)
    expected = release_target(sam, tiny.support_images[0], mask)
    torch.testing.assert_close(prompter.target.direction, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the presets themselves

def test_release_v1_reproduces_the_row_col_quirk_and_corrected_does_not(prompter):
    sim = torch.rand(518, 518, generator=torch.Generator().manual_seed(20))
    for name, quirk in (("release-v1", True), ("corrected", False), ("release", False)):
        settings = get_preset(name)
        got = band_prompts(sim, 5, torch.Generator().manual_seed(0), settings.band_quantiles,
                           settings.point_order == "row_col")
        values = sim[got.coords[:, 1].astype(int), got.coords[:, 0].astype(int)]  # read as (x, y)
        transposed = sim[got.coords[1:, 0].astype(int), got.coords[1:, 1].astype(int)]
        in_band = (values[1:] >= torch.quantile(sim, settings.band_quantiles[1])).all()
        assert bool(in_band) != quirk  # v1's extra points, read as (x, y), leave the band
        assert bool((transposed >= torch.quantile(sim, settings.band_quantiles[1])).all()) == quirk
    assert get_preset("release-v1").band_quantiles == (0.99999, 0.9999)
    assert get_preset("corrected").band_quantiles == (0.99, 0.90)


def test_presets_are_named_resolvable_and_overridable():
    assert set(PRESETS) == {"release", "release-v1", "corrected", "principled"}
    assert get_preset(None).name == "release"
    changed = get_preset("release").override(**parse_assignments(["cascade_box=each", "alpha-s=0.5",
                                                                  "band_quantiles=0.9,0.8"]))
    assert (changed.name, changed.cascade_box, changed.alpha_s, changed.band_quantiles) == \
        ("release+", "each", 0.5, (0.9, 0.8))
    assert get_preset("release").override(resampling="fresh") is get_preset("release")
    with pytest.raises(ValueError, match="unknown preset 'releases'"):
        get_preset("releases")
    with pytest.raises(ValueError, match="cascade_box must be one of"):
        get_preset("release").override(cascade_box="last")
    with pytest.raises(ValueError, match="unknown preset setting 'boxes'"):
        get_preset("release").override(boxes="each")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_preset("principled").as_dict()["name"] == "principled"


# ---------------------------------------------------------------- Matcher items

DINOV2_L = "vit_large_patch14_dinov2.lvd142m"  # ViT-L/14, the architecture the release matches with


@pytest.fixture(scope="module")
def dinov2_large():
    """A randomly initialised DINOv2 ViT-L/14 at 70 px (5 x 5 tokens): no weights can be downloaded here."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(DINOV2_L, pretrained=False, img_size=70, num_classes=0).eval()


def release_tokens(model, image):
    """matcher:184-194 / 198-208: DINOv2's pre-final-norm patch tokens (CLS dropped) of the ImageNet-normalised
    image; the release's loader gives 518-px images, here the image is resized to the model's side."""
    x = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, model.patch_embed.img_size, mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
    return tokens[0, model.num_prefix_tokens:]  # (N, C)


@pytest.fixture(scope="module")
def dinov2_matcher(dinov2_large):
    from prmagic_core.baselines.matcher import Matcher
    from prmagic_core.baselines.matcher.features import VitFeatures

    matcher = Matcher("launcher-fss")
    matcher.features._features = VitFeatures(dinov2_large, "dinov2")  # as if loaded from a checkpoint
    return matcher


@pytest.mark.slow
def test_item7_step_is_added_to_the_normalised_tokens(dinov2_large, dinov2_matcher, episode):
    tiny = load_sam("tiny")
    prompter = dinov2_matcher.prepare(Encoder(tiny), episode.support_images, episode.support_masks,
                                      episode.query_image)
    step = 0.05 * torch.randn(prompter.z0.shape, generator=torch.Generator().manual_seed(0))
    # matcher:187-194 normalised tokens; 223-248 the step resized to 5 x 5, zero-padded 64 -> 1024; 273-275 added
    tar_feat = F.normalize(release_tokens(dinov2_large, episode.query_image), dim=1)
    grid = F.interpolate(step, size=(5, 5), mode="bilinear", align_corners=False).view(1, 64, -1).permute(0, 2, 1)[0]
    delta = torch.cat([grid, torch.zeros(25, 1024 - 64)], dim=1)
    torch.testing.assert_close(prompter.matching_features(prompter.z0 + step), tar_feat + delta, atol=1e-4, rtol=1e-4)


def release_high_res(sam, encoded, z, coords):
    """The release's generator call for one point subset, single-mask, keeping the graph: SAM's prompt
    encoder and decoder on ``z``, the logits brought to the image by SAM's postprocess_masks."""
    from segment_anything.utils.transforms import ResizeLongestSide

    points = ResizeLongestSide(sam.image_encoder.img_size).apply_coords(coords, encoded.original_size)
    sparse, dense = sam.prompt_encoder(points=(torch.as_tensor(points, dtype=torch.float32)[None],
                                               torch.ones(1, len(coords))), boxes=None, masks=None)
    low, _ = sam.mask_decoder(image_embeddings=z, image_pe=sam.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    return sam.postprocess_masks(low, encoded.input_size, encoded.original_size)[0, 0]


def test_item8_matcher_d_phi_sums_the_high_res_logits_of_all_merged_masks(sam, encoder, episode):
    from prmagic_core.baselines.matcher import Matcher
    from prmagic_core.flow import d_phi
    from prmagic_core.refine import _gradient

    prompter = Matcher("launcher-fss").prepare(encoder, episode.support_images, episode.support_masks,
                                               episode.query_image)
    s = prompter.similarity(prompter.z0)
    prompts = prompter.sample_prompts(s, torch.Generator().manual_seed(0))
    mask, merged, _ = prompter.decode(prompter.z0, prompts, s)
    z = prompter.z0.clone().requires_grad_(True)
    with torch.no_grad():
        per_subset = [(subset, release_high_res(sam, prompter.query, prompter.z0, prompts.coords[subset]))
                      for subset in prompts.subsets]
    # Each merged map is one subset's output (decoded in a batch, so equal to about 1e-6 relative).
    chosen = [next(subset for subset, logits in per_subset if torch.allclose(m, logits, rtol=1e-4, atol=1e-4))
              for m in merged]
    np.testing.assert_array_equal(mask, (merged > 0).any(0).numpy())
    # matcher:497-501: the gradient of the summed logits of all chosen masks
    expected_d = sum(release_high_res(sam, prompter.query, z, prompts.coords[c]).sum() for c in chosen)
    (expected_grad,) = torch.autograd.grad(expected_d, z)
    _, _, value, grad, _ = _gradient(prompter, prompter.z0, prompts, s, "sum")
    assert value == pytest.approx(float(expected_d.detach()), rel=1e-5)
    # the merged subsets are decoded in batches: float32 sums in another order, so compare as vectors
    assert float((grad - expected_grad).norm() / expected_grad.norm()) < 1e-5
    assert len(chosen) >= 1 and float(d_phi(merged)) == pytest.approx(value, rel=1e-5)


def test_item9_matcher_runs_with_the_launcher_settings():
    from prmagic_core.baselines import make_baseline, task_kind

    # scripts/launch_matcher_pr.py:26-33 (alpha, beta, exp, merging, centres) and 49-70 (the command line);
    # sample range (4,6), 30 iterations, single mask, score filter (pr_magic_for_matcher.py: 0.33 / 0.1)
    launcher = {"coco": (1.0, 0.0, 0.0, 9, 8), "fss": (0.8, 0.2, 1.0, 10, 8), "lvis": (1.0, 0.0, 0.0, 9, 8),
                "paco": (0.5, 0.5, 0.0, 5, 5), "pascal_part": (0.5, 0.5, 0.0, 5, 5), "dis5k": (0.8, 0.2, 1.0, 10, 5)}
    for benchmark, (alpha, beta, exp, merging, centres) in launcher.items():
        p = make_baseline("matcher", "object", benchmark=benchmark).preset
        assert (p.alpha, p.beta, p.exp, p.merge_count, p.centres) == (alpha, beta, exp, merging, centres)
        assert (p.subset_sizes, p.draws_per_size, p.multimask, p.box, p.merge) == ((4, 6), 30, False, False,
                                                                                   "score_filter")
        assert (p.max_distance, p.max_relative_distance, p.min_predicted_iou, p.min_stability) == (0.33, 0.1, 0, 0)
    # eta 1e-4 and 3 PerSAM-F points for part benchmarks and DIS5K (launch_persam_pr.py:26-33)
    assert [task_kind("object", b, get_preset("release")) for b in ("fss", "paco", "pascal_part", "dis5k")] == \
        ["object", "part", "part", "part"]
    assert make_baseline("persam_f", "object", benchmark="dis5k").points == 3
    assert task_kind("object", "dis5k", get_preset("principled")) == "object"


@pytest.mark.slow
def test_item10_matcher_selector_encodes_with_the_matching_encoder(dinov2_large, dinov2_matcher):
    two_shot = episodes(1, seed=6, shots=2, size=192)[0]
    result = run_episode(dinov2_matcher, Encoder(load_sam("tiny")), two_shot, steps=1, seed=0)

    def vector(image, mask):  # matcher:198-211, on the first shot only (matcher:129-140, 213-221)
        masked = image.copy() if not mask.any() else np.where(mask[..., None], image, 0).astype(np.uint8)
        return F.normalize(release_tokens(dinov2_large, masked).mean(0), dim=0)

    support = vector(two_shot.support_images[0], two_shot.support_masks[0])
    expected = [float(support @ vector(two_shot.query_image, m)) for m in result.candidates]
    np.testing.assert_allclose(result.selector_scores, expected, atol=1e-5)


def test_item12_matcher_empty_support_uses_the_centre_square_and_the_selector_the_first_shot(sam, encoder):
    from prmagic_core.baselines.matcher import Matcher
    from prmagic_core.baselines.matcher.grid import centre_cell

    # matcher:123-127: a 14-px centre square of the 518-px mask, pooled over 14-px patches (149-153)
    square = torch.zeros(1, 1, 518, 518)
    square[..., 259 - 7:259 + 7, 259 - 7:259 + 7] = 1
    np.testing.assert_array_equal(centre_cell((37, 37)), (F.avg_pool2d(square, 14) > 0).flatten().numpy())

    two_shot = episodes(1, seed=7, shots=2, size=192)[0]
    with pytest.warns(EmptySupportWarning, match="support mask 0 is empty.*centre"):
        prompter = Matcher("launcher-fss").prepare(encoder, two_shot.support_images[:1],
                                                   (np.zeros_like(two_shot.support_masks[0]),), two_shot.query_image)
    np.testing.assert_array_equal(prompter.foreground, centre_cell(prompter.query_tokens.frame.grid))

    # 5-shot Matcher's selector vector comes from the first shot (matcher:129-140); the release preset does so
    result = run_episode(PerSAMF(train_iters=2), encoder, two_shot, steps=1, seed=0)
    support = release_masked_vector(sam, two_shot.support_images[0], two_shot.support_masks[0])
    expected = [float(support @ release_masked_vector(sam, two_shot.query_image, e.mask))
                for e in result.trajectory.evidence]
    np.testing.assert_allclose(result.selector_scores, expected, atol=1e-5)


# ---------------------------------------------------------------- the paper's numbers and the command line

def test_paper_numbers_are_labelled_and_the_correction_gives_the_stated_gains():
    from prmagic_core.analysis import PAPER_BTO, PAPER_BTO_CORRECTED

    b, t, o = PAPER_BTO[("persam_f", "fss")]  # still unpacks as (B, T, O)
    assert (b, t, o) == (58.41, 67.19, 72.45)
    assert {v.preset for k, v in PAPER_BTO.items() if k[0] == "persam_f"} == {"release-v1"}
    for reported in [*PAPER_BTO.values(), *PAPER_BTO_CORRECTED.values()]:
        assert reported.metric == "episode_fb_miou" and reported.source
        assert get_preset(reported.preset)
    gains = {k[1]: round(v[1] - v[0], 2) for k, v in PAPER_BTO_CORRECTED.items() if k[2] == "bands"}
    assert gains == {"fss": 1.65, "pascal_part": 2.92}  # SPEC section 8: not the +8.8 of the first table


@pytest.mark.parametrize("preset", ["release", "release-v1", "corrected", "principled"])
def test_evaluate_names_its_preset_and_carries_the_resolved_settings(preset, capsys):
    import json

    from prmagic_core.cli import main

    code = main(["evaluate", "--baseline", "persam_f", "--episodes", "1", "--steps", "1", "--persam-f-iters", "2",
                 "--preset", preset, "--set", "alpha_s=0.5", "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["preset"] == f"{preset}+" and f"preset {preset}+" in err
    expected = {**get_preset(preset).as_dict(), "name": f"{preset}+", "alpha_s": 0.5}
    assert summary["settings"]["preset_settings"] == expected


def test_a_bad_preset_setting_is_one_clear_line(capsys):
    from prmagic_core.cli import main

    assert main(["evaluate", "--episodes", "1", "--set", "cascade_box=never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cascade_box must be one of" in err
