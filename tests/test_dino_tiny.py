import json
import shlex

import numpy as np
import pytest
import torch

from prmagic_core.cli import main
from prmagic_core.data import shapeworld
from prmagic_core.models import dino_training
from prmagic_core.models.dino_quality import evaluate_dino_tiny
from prmagic_core.models.dino_tiny import build_dino_tiny, load_dino_tiny
from prmagic_core.models.dinov2 import patch_tokens
from prmagic_core.models.loading import CheckpointError

SMALL = dict(steps=4, scenes=12, batch=4, warmup=1, checkpoint_every=2)


@pytest.mark.parametrize("extra_terms", [{}, dict(context_weight=0.5, context_pairs=2), dict(patch_contrastive_weight=0.5),
                                         dict(shuffled_shape_weight=0.5, object_head_temperature=0.1)])
def test_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch, extra_terms):
    cfg = dino_training.DinoTrainConfig(**SMALL, **extra_terms)
    dino_training.train(cfg, tmp_path / "whole", progress=False)

    real_loss = dino_training.training_loss
    calls = {"n": 0}

    def dies_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(dino_training, "training_loss", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        dino_training.train(cfg, tmp_path / "resumed", progress=False)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(dino_training, "training_loss", real_loss)
    dino_training.train(cfg, tmp_path / "resumed", resume=True, progress=False)

    whole = torch.load(tmp_path / "whole" / "dino_tiny.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "dino_tiny.pt", weights_only=True)
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    # the saved backbone loads (weights_only) and gives 16x16 tokens of 64 channels
    model = load_dino_tiny(tmp_path / "whole" / "dino_tiny.pt")
    assert patch_tokens(model, np.zeros((200, 300, 3), np.uint8)).shape == (64, 16, 16)


def test_patch_labels_follow_the_scene():
    scene = shapeworld.training_scene(0, 3, size=128, fold=0)
    labels = dino_training.scene_labels(scene)
    assert labels.shape == (4, 16, 16)
    target = scene.objects[0]
    inside = labels[3] == 1
    assert inside.any()
    if target.name not in shapeworld.COMPOSITES:
        texture, shape = target.name.split("-")
        assert (labels[0][inside] == dino_training.SHAPE_LABELS.index(shape)).all()
        assert (labels[1][inside] == dino_training.TEXTURE_LABELS.index(texture)).all()
    assert (labels[:3][:, labels[3] == 0] == 0).all()  # background patches are background in every head


def test_contrastive_loss_prefers_same_class_together():
    instances = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])
    classes = [[0, 1], [0, 1]]
    apart = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    good = torch.stack([apart, apart])
    bad = torch.stack([apart, apart.flip(0)])

    def loss(tokens):
        pooled, labels, _ = dino_training.instance_features(tokens, instances, classes)
        return dino_training.instance_contrastive(pooled, labels, 0.1)

    assert loss(good) < loss(bad)


def test_factor_contrastive_wants_its_factor_grouped_and_ignores_instances_without_it():
    shape = torch.tensor([0, 0, 1, 1])
    by_shape = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    across_shape = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert (dino_training.factor_contrastive(by_shape, shape, 0.1)
            < dino_training.factor_contrastive(across_shape, shape, 0.1))
    # a composite has no texture (-100): whatever its feature, the texture term does not see it
    texture = torch.tensor([0, 0, 1, 1, -100])
    with_composite = torch.cat([by_shape, torch.tensor([[5.0, -3.0]])])
    other_composite = torch.cat([by_shape, torch.tensor([[-1.0, 7.0]])])
    assert torch.equal(dino_training.factor_contrastive(with_composite, texture, 0.1),
                       dino_training.factor_contrastive(other_composite, texture, 0.1))
    assert torch.equal(dino_training.factor_contrastive(with_composite, texture, 0.1),
                       dino_training.factor_contrastive(by_shape, shape, 0.1))


def test_patch_contrast_pulls_a_patch_toward_its_class_in_the_other_image_and_ignores_background():
    # image 0: class 3 on patches 0-1, class 5 on 2-3; image 1: class 5 on 0-1, class 3 on 2-3; patch 4 background
    instances = torch.tensor([[1, 1, 2, 2, 0], [1, 1, 2, 2, 0]])
    classes = [[3, 5], [5, 3]]
    a, b = [1.0, 0.0], [0.0, 1.0]
    by_class = torch.tensor([[a, a, b, b, a], [b, b, a, a, a]])
    by_place = torch.tensor([[a, a, b, b, a], [a, a, b, b, a]])  # alike where the classes differ
    assert (dino_training.patch_contrastive(by_class, instances, classes, 0.1)
            < dino_training.patch_contrastive(by_place, instances, classes, 0.1))
    other_background = by_class.clone()
    other_background[:, 4] = torch.tensor([-3.0, 2.0])
    assert torch.equal(dino_training.patch_contrastive(other_background, instances, classes, 0.1),
                       dino_training.patch_contrastive(by_class, instances, classes, 0.1))


def test_patch_contrast_has_nothing_to_pull_when_no_class_is_in_two_images():
    instances = torch.tensor([[1, 1, 2, 0], [1, 1, 0, 0]])
    tokens = torch.randn(2, 4, 8, requires_grad=True)
    loss = dino_training.patch_contrastive(tokens, instances, [[3, 3], [5]], 0.1)
    assert loss.item() == 0.0  # the two class-3 objects share an image: not a positive pair
    loss.backward()
    assert tokens.grad is not None and not tokens.grad.any()


def test_a_shape_head_is_undecided_only_at_even_odds_over_the_object_shapes():
    shapes = dino_training.HEADS["shape"]
    even = torch.zeros(3, shapes)
    even[:, 0] = -1e4  # no weight on background
    lowest = float(dino_training.undecided_shape(even))
    assert lowest == pytest.approx(np.log(shapes - 1), abs=1e-4)
    named = even.clone()
    named[:, 2] = 5.0
    assert float(dino_training.undecided_shape(named)) > lowest + 1
    assert float(dino_training.undecided_shape(torch.zeros(3, shapes))) == pytest.approx(np.log(shapes), abs=1e-4)
    assert float(dino_training.undecided_shape(torch.zeros(0, shapes))) == 0


def test_no_shape_is_asked_of_shuffled_objects_only():
    torch.manual_seed(0)
    pool = dino_training.LabelledPool(8, seed=0, fold=0)
    model, heads = build_dino_tiny(), dino_training.make_heads(64)

    def loss(shuffle_fraction, weight):
        cfg = dino_training.DinoTrainConfig(shuffled_shape_weight=weight)
        batch = pool.batch(np.random.default_rng(0), 4, shuffle_fraction)
        with torch.no_grad():
            return float(dino_training.training_loss(model.eval(), heads, *batch, cfg))

    assert loss(0.0, 1.0) == pytest.approx(loss(0.0, 0.0), abs=1e-6)  # nothing shuffled: nothing asked
    assert loss(0.5, 1.0) > loss(0.5, 0.0) + 1  # the term is never below log(10), even odds over ten shapes


def test_object_factors_split_a_class_into_shape_and_texture():
    factors = [dino_training.object_factors(shapeworld.ALL_CLASSES.index(n)) for n in ("dots-circle", "stripes-star")]
    assert [(dino_training.SHAPE_LABELS[s], dino_training.TEXTURE_LABELS[t]) for s, t in factors] == [
        ("circle", "dots"), ("star", "stripes")]
    composite = next(iter(shapeworld.COMPOSITES))
    assert dino_training.object_factors(shapeworld.ALL_CLASSES.index(composite)) == (
        dino_training.SHAPE_LABELS.index(composite), -100)


def test_shuffled_tiles_carry_their_labels_and_lose_the_shape():
    tile = 16
    n, cell = dino_training.INPUT // tile, tile * dino_training.GRID // dino_training.INPUT
    ids = np.arange(n * n).reshape(n, n)
    image = np.repeat(np.repeat(ids, tile, 0), tile, 1)[..., None].repeat(3, -1).astype(np.uint8)
    labels = np.repeat(np.repeat(ids, cell, 0), cell, 1)[None].repeat(4, 0)
    moved_image, moved_labels = dino_training.shuffle_tiles(image, labels, tile, np.random.default_rng(0))
    assert (moved_image[::tile, ::tile, 0] == moved_labels[0, ::cell, ::cell]).all()  # each tile kept its labels
    assert not (moved_image == image).all() and sorted(moved_image[::tile, ::tile, 0].ravel()) == list(range(n * n))


def test_flat_objects_keep_their_silhouette_and_lose_their_texture():
    striped = np.zeros((8, 8, 3), dtype=np.uint8)
    striped[:, ::2] = 200  # background and object both striped
    owner = np.full((8, 8), -1, dtype=np.int8)
    owner[2:6, 2:6], owner[0:2, 0:3] = 0, 1
    flat = dino_training.paint_flat(striped, owner, np.random.default_rng(0))
    assert (flat[owner == -1] == striped[owner == -1]).all()
    for index in (0, 1):
        inside = flat[owner == index].astype(float)
        assert inside.std(0).max() < 12 < striped[owner == index].astype(float).std(0).max()  # only the pixel noise
    assert np.abs(flat[owner == 0].mean(0) - flat[owner == 1].mean(0)).sum() > 0  # a colour per object


def test_a_batch_holds_each_view_in_its_share():
    pool = dino_training.LabelledPool(4, 0, 0)
    assert pool.owners.shape == (4, dino_training.INPUT, dino_training.INPUT)
    _, labels, _, views = pool.batch(np.random.default_rng(0), 4, shuffle_fraction=0.5, tile=16, flat_fraction=0.25)
    assert views.tolist() == [dino_training.SHUFFLED, dino_training.SHUFFLED, dino_training.FLAT, dino_training.INTACT]


def _pixels(x: torch.Tensor) -> np.ndarray:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (dino_training.IMAGENET_MEAN, dino_training.IMAGENET_STD))
    return (x * std + mean).mul(255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)


def test_a_pasted_object_keeps_its_pixels_and_class_and_takes_the_host_scene_around_it():
    pool = dino_training.LabelledPool(6, 0, 0)
    rng = np.random.default_rng(3)
    sources, hosts = np.random.default_rng(3).choice(6, size=(2, 2), replace=False)
    x, coverage, classes = pool.pasted(rng, 2)
    images = _pixels(x)
    assert classes.tolist() == [pool.classes[s][0] for s in sources] * 2
    for i, (source, host) in enumerate(zip(sources, hosts)):
        target = pool.owners[source] == 0
        assert coverage[i].sum() == pytest.approx(coverage[i + 2].sum()) == pytest.approx(target.mean() * 256)
        own = pasted = False
        for turn in range(4):  # each view is turned and flipped on its own: undo whichever it was
            for flip in (False, True):
                a, b = np.rot90(images[i], -turn, (0, 1)), np.rot90(images[i + 2], -turn, (0, 1))
                if flip:
                    a, b = np.rot90(images[i][:, ::-1], -turn, (0, 1)), np.rot90(images[i + 2][:, ::-1], -turn, (0, 1))
                own |= np.array_equal(a, pool.images[source])
                pasted |= (np.array_equal(b[target], pool.images[source][target])
                           and np.array_equal(b[~target], pool.images[host][~target]))
        assert own and pasted


def test_too_few_scenes_for_the_context_pairs_is_one_clear_error(tmp_path):
    cfg = dino_training.DinoTrainConfig(**dict(SMALL, scenes=12), context_weight=0.5, context_pairs=7)
    with pytest.raises(ValueError, match="at least twice context_pairs"):
        dino_training.train(cfg, tmp_path, progress=False)


def test_the_pool_renders_its_scenes_at_each_scale_in_turn_and_reduces_them_to_the_input():
    pool = dino_training.LabelledPool(4, seed=3, fold=0, render_scales=(1, 2))
    size = dino_training.INPUT
    for index, scale in enumerate((1, 2, 1, 2)):
        scene = shapeworld.training_scene(3, index, size=scale * size, fold=0)
        expected = scene.image.reshape(size, scale, size, scale, 3).mean((1, 3)).round().astype(np.uint8)
        assert np.array_equal(pool.images[index], expected)
        assert np.array_equal(pool.labels[index], dino_training.scene_labels(scene))


@pytest.mark.parametrize("scales", [(), (0,), (1, 1.5)])
def test_render_scales_that_are_not_whole_multiples_are_one_clear_error(tmp_path, scales):
    with pytest.raises(ValueError, match="render_scales .* must be whole numbers"):
        dino_training.train(dino_training.DinoTrainConfig(**SMALL, render_scales=scales), tmp_path, progress=False)


@pytest.mark.parametrize("tile", [0, 4, 12])
def test_a_tile_that_does_not_cut_the_input_into_whole_patches_is_one_clear_error(tmp_path, tile):
    with pytest.raises(ValueError, match=f"tile \\({tile}\\) must divide"):
        dino_training.train(dino_training.DinoTrainConfig(**SMALL, tile=tile), tmp_path, progress=False)


def test_context_loss_is_lowest_when_an_object_looks_the_same_in_both_scenes(monkeypatch):
    coverage = torch.zeros(4, 256)
    coverage[:, :10] = 1.0
    classes = torch.tensor([1, 2, 1, 2])
    same, other = torch.randn(2, 64), torch.randn(2, 64)

    def loss_with(second_view: torch.Tensor) -> float:
        pooled = torch.cat([same, second_view])
        tokens = pooled[:, None, :].expand(4, 256, 64) + 0 * coverage[..., None]
        monkeypatch.setattr(dino_training, "prenorm_tokens", lambda model, x: tokens)
        return float(dino_training.context_loss(None, None, coverage, classes, 0.1))

    assert loss_with(same) < loss_with(other)


def test_wrong_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a DINO-Tiny checkpoint"):
        load_dino_tiny(path)


def test_quality_numbers_are_fractions_on_novel_classes():
    result = evaluate_dino_tiny(build_dino_tiny().eval(), episodes=8, fold=1, size=64)
    assert 0 <= result["novel_class_accuracy"] <= 1 and 0 <= result["patch_foreground_match"] <= 1
    assert result["novel_classes"] == list(shapeworld.novel_classes(1))
    # every wrong pick is one confusion between two of the fold's novel classes
    wrong = round((1 - result["novel_class_accuracy"]) * 8)
    assert sum(result["confusions"].values()) == wrong
    for pair in result["confusions"]:
        true, picked = pair.split(" -> ")
        assert true != picked and {true, picked} <= set(result["novel_classes"])
    assert set(result["class_accuracy"]) <= set(result["novel_classes"])
    assert all(0 <= a <= 1 for a in result["class_accuracy"].values())


def test_an_earlier_block_reads_what_a_network_cut_after_it_would_return():
    torch.manual_seed(0)
    model = build_dino_tiny().eval()
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    last = patch_tokens(model, image)
    assert torch.equal(patch_tokens(model, image, block=len(model.blocks) - 1), last)
    first = patch_tokens(model, image, block=0)
    assert not torch.allclose(first, last)
    model.blocks = model.blocks[:1]
    assert torch.allclose(patch_tokens(model, image), first, atol=1e-6)


def test_block_out_of_range_is_one_clear_error():
    model = build_dino_tiny().eval()
    with pytest.raises(ValueError, match="block 3 does not exist: this model has 3 blocks"):
        evaluate_dino_tiny(model, episodes=2, fold=0, size=64, block=3)
    assert evaluate_dino_tiny(model, episodes=4, fold=0, size=64, block=-3)["block"] == -3


def test_train_dino_tiny_command_writes_weights_and_a_card_naming_its_command(tmp_path):
    argv = ["train-dino-tiny", "--out-dir", str(tmp_path / "run 1"), "--steps", "2", "--scenes", "4", "--batch", "4",
            "--eval-episodes", "6", "--image-size", "128"]
    assert main(argv) == 0
    card = json.loads((tmp_path / "run 1" / "dino_tiny.json").read_text())
    assert shlex.split(card["command"]) == ["prmagic", *argv]
    assert card["steps"] == 2 and card["evaluation"]["episodes"] == 6
    assert 0 <= card["evaluation"]["novel_class_accuracy"] <= 1
    load_dino_tiny(tmp_path / "run 1" / "dino_tiny.pt")


def test_each_fold_loads_its_own_shipped_weights_and_a_missing_fold_names_itself(tmp_path, monkeypatch, capsys):
    from prmagic_core.models import dino_tiny

    monkeypatch.setattr(dino_tiny, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(2)
    trained_on_fold_2 = build_dino_tiny().eval()
    torch.save(trained_on_fold_2.state_dict(), dino_tiny.dino_tiny_files(2)[0])
    loaded = load_dino_tiny(fold=2)
    for key, value in trained_on_fold_2.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="no DINO-Tiny ships for fold 3; .*train-dino-tiny --fold 3"):
        load_dino_tiny(fold=3)
    with pytest.raises(ValueError, match="fold must be None or an integer in 0..3, got 4"):
        load_dino_tiny(fold=4)
    assert len({dino_tiny.dino_tiny_files(k) for k in range(4)}) == 4

    # evaluate-dino-tiny --fold 2 measures fold 2's network on fold 2's novel classes
    assert main(["evaluate-dino-tiny", "--fold", "2", "--episodes", "4", "--image-size", "64", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate_dino_tiny(trained_on_fold_2, episodes=4, fold=2, size=64)
    assert printed["novel_classes"] == list(shapeworld.novel_classes(2))
    assert (printed["novel_class_accuracy"], printed["patch_foreground_match"]) == (
        expected["novel_class_accuracy"], expected["patch_foreground_match"])


@pytest.mark.parametrize("fold", range(shapeworld.FOLDS))
def test_shipped_weights_of_a_fold_were_trained_and_measured_on_that_fold(fold):
    from prmagic_core.models.dino_tiny import dino_tiny_files

    weights, card_path = dino_tiny_files(fold)
    if not weights.is_file():
        pytest.skip(f"no DINO-Tiny ships for fold {fold}")
    card = json.loads(card_path.read_text())
    assert card["config"]["fold"] == card["evaluation"]["fold"] == fold
    assert card["evaluation"]["novel_classes"] == list(shapeworld.novel_classes(fold))
    assert f"--fold {fold}" in card["command"] or (fold == 0 and "--fold" not in card["command"])
    assert weights.stat().st_size <= 5 * 2**20
    assert patch_tokens(load_dino_tiny(fold=fold), np.zeros((64, 64, 3), np.uint8)).shape == (64, 16, 16)


def test_cosine_object_heads_read_only_the_angle_of_the_pooled_feature():
    torch.manual_seed(0)
    heads = dino_training.make_heads(64)
    pooled = torch.randn(5, 64)
    cosine = dino_training.object_logits(heads, "shape", pooled, 0.1)
    torch.testing.assert_close(dino_training.object_logits(heads, "shape", 7 * pooled, 0.1), cosine)
    assert cosine.abs().max() <= 1 / 0.1 + 1e-5
    row = heads["object_texture"].weight[3].detach()
    assert int(dino_training.object_logits(heads, "texture", row[None], 0.1).argmax()) == 3
    torch.testing.assert_close(dino_training.object_logits(heads, "shape", pooled), heads["object_shape"](pooled))
