import numpy as np
import pytest

from prmagic_core.data import shapeworld
from prmagic_core.data.episode import Episode


def test_same_seed_gives_identical_arrays():
    a = shapeworld.episodes(3, seed=7, kind="part", shots=2)
    b = shapeworld.episodes(3, seed=7, kind="part", shots=2)
    for x, y in zip(a, b):
        assert x.class_name == y.class_name
        np.testing.assert_array_equal(x.query_image, y.query_image)
        np.testing.assert_array_equal(x.query_mask, y.query_mask)
        for s, t in zip(x.support_images, y.support_images):
            np.testing.assert_array_equal(s, t)


def test_other_seed_and_train_stream_differ():
    a = shapeworld.episodes(1, seed=0)[0].query_image
    b = shapeworld.episodes(1, seed=1)[0].query_image
    train = shapeworld.training_scenes(1, seed=0)[0].image
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, train)


def test_episode_is_a_prefix_property():
    few = shapeworld.episodes(2, seed=3)
    more = shapeworld.episodes(4, seed=3)
    np.testing.assert_array_equal(few[1].query_image, more[1].query_image)


def test_world_has_required_classes():
    assert len(shapeworld.OBJECT_CLASSES) >= 12
    assert len(shapeworld.COMPOSITES) >= 4
    assert len(shapeworld.PART_CLASSES) >= 8
    shapes = {c.split("-")[1] for c in shapeworld.OBJECT_CLASSES}
    textures = {c.split("-")[0] for c in shapeworld.OBJECT_CLASSES}
    assert len(shapes) >= 3 and len(textures) >= 3


@pytest.mark.parametrize("kind", ["object", "part"])
def test_masks_nonempty_inside_image_and_shapes(kind):
    for ep in shapeworld.episodes(12, seed=5, kind=kind, size=96):
        assert ep.kind == kind
        assert ep.query_image.shape == (96, 96, 3) and ep.query_image.dtype == np.uint8
        assert ep.query_mask.shape == (96, 96) and ep.query_mask.any()
        assert all(m.any() for m in ep.support_masks)
        # never the whole image: there is background and at least one distractor
        assert not ep.query_mask.all()


def test_part_masks_inside_their_object():
    scenes = shapeworld.training_scenes(20, seed=2)
    checked = 0
    for scene in scenes:
        for part in scene.parts:
            composite = part.name.split("/")[0]
            owners = [o for o in scene.objects if o.name == composite and (o.mask & part.mask).any()]
            assert owners, part.name
            assert not (part.mask & ~owners[0].mask).any()
            checked += 1
    assert checked > 0


def test_distractors_never_cover_the_target():
    for scene in shapeworld.training_scenes(30, seed=4):
        target = scene.objects[0]
        assert target.mask.any()
        assert len(scene.objects) >= 2


def test_colour_varies_inside_a_class():
    eps = [e for e in shapeworld.episodes(40, seed=0) if e.class_name in shapeworld.OBJECT_CLASSES]
    means = [e.query_image[e.query_mask].mean(axis=0) for e in eps[:10]]
    spread = np.std(np.stack(means), axis=0).max()
    assert spread > 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "positive integer"),
        (dict(n=2, size=100), "multiple of 16"),
        (dict(n=2, kind="scene"), "kind"),
        (dict(n=2, shots=0), "shots"),
    ],
)
def test_bad_generator_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapeworld.episodes(**kwargs)


def test_episode_rejects_bad_images_and_masks():
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[4:8, 4:8] = True
    with pytest.raises(ValueError, match="empty"):
        Episode((image,), (np.zeros((32, 32), bool),), image, mask, "x")
    with pytest.raises(ValueError, match="HxWx3"):
        Episode((image[..., 0],), (mask,), image, mask, "x")
    with pytest.raises(ValueError, match="uint8"):
        Episode((image.astype(np.float32),), (mask,), image, mask, "x")
    with pytest.raises(ValueError, match="shape"):
        Episode((image,), (mask[:16],), image, mask, "x")


def test_folds_partition_the_classes_like_coco20i():
    novel_by_fold = [set(shapeworld.novel_classes(k)) for k in range(shapeworld.FOLDS)]
    shape_texture = [n & set(shapeworld.OBJECT_CLASSES) for n in novel_by_fold]
    assert [len(n) for n in shape_texture] == [6] * 4
    assert set().union(*shape_texture) == set(shapeworld.OBJECT_CLASSES)  # each class novel in exactly one fold
    for fold, novel in enumerate(novel_by_fold):
        base = set(shapeworld.base_classes(fold))
        assert not base & novel and base | novel == set(shapeworld.ALL_CLASSES)
        # every shape and every texture stays among the base classes: only their combinations are new
        assert {c.split("-")[1] for c in base if "-" in c} == set(shapeworld.SHAPES)
        assert {c.split("-")[0] for c in base if "-" in c} == set(shapeworld.TEXTURES)
        parts = shapeworld.novel_classes(fold, "part")
        (composite,) = novel - set(shapeworld.OBJECT_CLASSES)
        assert len(parts) == 2 and all(p.startswith(composite + "/") for p in parts)
    assert sorted(sum((shapeworld.novel_classes(k, "part") for k in range(4)), ())) == sorted(shapeworld.PART_CLASSES)


@pytest.mark.parametrize("kind", ["object", "part"])
def test_fold_episodes_pose_only_novel_classes(kind):
    eps = shapeworld.episodes(16, seed=0, kind=kind, fold=2, size=64)
    assert {e.class_name for e in eps} <= set(shapeworld.novel_classes(2, kind))
    assert len({e.class_name for e in eps}) >= 2
    assert all("-f2-" in e.name for e in eps)
    unfolded = shapeworld.episodes(16, seed=0, kind=kind, size=64)
    assert {e.name for e in eps}.isdisjoint(e.name for e in unfolded)


def test_fold_training_scenes_hold_base_classes_only():
    novel_objects = set(shapeworld.novel_classes(1))
    novel_parts = set(shapeworld.novel_classes(1, "part"))
    seen = set()
    for scene in shapeworld.training_scenes(40, seed=0, size=64, fold=1):
        seen |= {o.name for o in scene.objects} | {p.name for p in scene.parts}
    assert not seen & (novel_objects | novel_parts)
    assert len(seen) > 15


@pytest.mark.parametrize("fold", [-1, 4, 1.5])
def test_bad_fold(fold):
    with pytest.raises(ValueError, match="fold"):
        shapeworld.episodes(1, fold=fold)


def test_textures_scale_with_the_image():
    """A 256-px render has the same number of stripes across an object as a 128-px one: the
    fraction of horizontally adjacent pixel pairs that differ halves when the size doubles."""
    def edge_rate(size):
        place = shapeworld._Placement("stripes-square", (size / 2, size / 2), 0.3 * size, 0.0)
        scene = shapeworld._render(np.random.default_rng(0), size, [place])
        step = np.abs(np.diff(scene.image.astype(float), axis=1)).sum(-1)
        mask = scene.objects[0].mask
        return (step[mask[:, 1:] & mask[:, :-1]] > 90).mean()

    assert 0.3 < edge_rate(256) / edge_rate(128) < 0.7
